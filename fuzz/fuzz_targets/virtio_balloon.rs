//! virtio-balloon's queues (inflate, deflate, stats, reporting; chosen by the first byte)
//! with guest memory, rings and page numbers from the fuzzer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use balloon::{Balloon, worker::BalloonWorker};

fuzz_target!(|data: &[u8]| {
    let cfg = api::BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_reporting: true,
    };
    let Ok((_device, handle)) = Balloon::new(&cfg, "fuzz-balloon") else {
        return;
    };
    // Every optional queue accepted: stats is 2, reporting 3.
    let features = virtio_devices::device::features::VERSION_1 | 1 << 1 | 1 << 2 | 1 << 5;
    let Ok(mut worker) = BalloonWorker::new(&handle, features) else {
        return;
    };
    vireo_fuzz::serve(&mut worker, 4, data);
});
