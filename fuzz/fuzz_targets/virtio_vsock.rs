//! virtio-vsock's queues (rx, tx, event; chosen by the first byte) with guest memory,
//! rings and packets from the fuzzer, a real host socket behind them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vsock::VsockWorker;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("vireo-fuzz-vsock-{}.sock", std::process::id()));
    let Ok(mut worker) = VsockWorker::bind(3, &path) else {
        return;
    };
    vireo_fuzz::serve(&mut worker, 3, data);
});
