//! virtio-rng's request queue with guest memory, rings and chains from the fuzzer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use virtio_devices::rng::RngWorker;

fuzz_target!(|data: &[u8]| {
    vireo_fuzz::serve(&mut RngWorker::default(), 1, data);
});
