//! virtio-balloon's queues (inflate, deflate, stats, hinting, reporting; chosen by the
//! first byte) with guest memory, rings and page numbers from the fuzzer. A hinting run
//! (id 2) is under way, so the guest's command ids and hinted ranges reach every path.
#![no_main]
use libfuzzer_sys::fuzz_target;
use balloon::{Balloon, worker::BalloonWorker};
use virtio_devices::device::VirtioDevice;

fuzz_target!(|data: &[u8]| {
    let cfg = api::BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_hinting: true,
        free_page_reporting: true,
    };
    let Ok((mut device, handle)) = Balloon::new(&cfg, "fuzz-balloon") else {
        return;
    };
    let run = serde_json::json!({
        "target_pages": 0,
        "actual_pages": 0,
        "stats_interval_ms": 1000,
        "held_stats_head": null,
        "hinting": {
            "host_cmd": 2,
            "last_run_id": 2,
            "guest_cmd": null,
            "acknowledge_on_stop": data.get(1).is_some_and(|b| b & 2 != 0),
        },
    });
    if device.restore_state(Some(&run)).is_err() {
        return;
    }
    // Every optional queue accepted: stats is 2, hinting 3, reporting 4.
    let features =
        virtio_devices::device::features::VERSION_1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 5;
    let Ok(mut worker) = BalloonWorker::new(&handle, features) else {
        return;
    };
    vireo_fuzz::serve(&mut worker, 5, data);
});
