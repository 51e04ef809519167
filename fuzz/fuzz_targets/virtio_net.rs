//! virtio-net's rx and tx queues (chosen by the first byte) with guest memory, rings and
//! chains from the fuzzer; frames go to a socket pair instead of a TAP. Frames from the
//! host side are queued first, so rx has something to place.
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use net::{NetWorker, SocketBackend};
use rate_limiter::RateLimiter;

fuzz_target!(|data: &[u8]| {
    let Ok((backend, host)) = SocketBackend::pair() else {
        return;
    };
    // A frame for rx, cut from the input, behind a virtio-net header.
    let frame_len = data.len().min(1600);
    let _ = host.send(&data[..frame_len]);
    let features = u64::from(data.get(1).copied().unwrap_or(0)) << 12 // MRG_RXBUF (15) among them
        | virtio_devices::device::features::VERSION_1;
    let Ok(mut worker) = NetWorker::new(
        backend,
        RateLimiter::unlimited(),
        RateLimiter::unlimited(),
        features,
        Arc::default(),
    ) else {
        return;
    };
    vireo_fuzz::serve(&mut worker, 2, data);
});
