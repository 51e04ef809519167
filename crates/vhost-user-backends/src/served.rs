//! What a device must tell the vhost-user adapter to be served: the [`Served`] trait, and
//! its implementation for the entropy device ([`RngServed`]).
//!
//! A [`Served`] device is the register side of a virtio device (queue count and sizes,
//! features, configuration space) plus a way to make the [`DeviceWorker`] that serves its
//! queues. The worker is the very one the VMM runs on its own worker thread; here the
//! adapter in [`crate::adapter`] drives it from the vhost-user daemon's event loop.

use std::io;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_devices::device::{DeviceWorker, features};
use virtio_devices::rng::{self, RngWorker};

/// A device model that can be served behind a vhost-user socket.
pub trait Served: Send + Sync + 'static {
    /// The worker that serves the device's queues.
    type Worker: DeviceWorker;

    /// A short name for logs and thread names ("vhost-user-rng"...).
    fn name(&self) -> &str;

    /// Number of virtqueues.
    fn num_queues(&self) -> usize;

    /// The largest queue size the frontend may configure (a power of two).
    fn max_queue_size(&self) -> u16;

    /// Every virtio feature the device offers, [`features::COMMON`] included. The adapter
    /// adds `VHOST_USER_F_PROTOCOL_FEATURES` itself.
    fn features(&self) -> u64;

    /// The device's configuration space as the driver reads it (virtio 1.2, section 5.x
    /// "Device configuration layout"); empty for a device without one.
    fn config(&self) -> Vec<u8>;

    /// The driver wrote `data` at `offset` of the configuration space. Devices whose
    /// configuration is read-only ignore it (the default).
    fn write_config(&self, offset: u32, data: &[u8]) -> io::Result<()> {
        let _ = (offset, data);
        Ok(())
    }

    /// The vhost-user protocol features to offer. The default offers `CONFIG` when the
    /// device has a configuration space, `MQ` (so the frontend can ask the queue count),
    /// `REPLY_ACK` and `RESET_DEVICE`.
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let mut f = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE;
        if !self.config().is_empty() {
            f |= VhostUserProtocolFeatures::CONFIG;
        }
        f
    }

    /// A fresh worker, for a device the driver has just started with `acked_features`.
    /// Called when the first queue event arrives after the frontend set the device up,
    /// and again after every stop or reset.
    fn new_worker(&self, acked_features: u64) -> io::Result<Self::Worker>;

    /// The worker made by [`Served::new_worker`] is no longer serving (the frontend
    /// stopped a ring or reset the device, the worker failed, or the frontend left).
    /// Devices whose worker holds something worth keeping (an open disk, a TAP) take it
    /// back here for the next `new_worker`; the default drops the worker.
    fn recycle(&self, worker: Self::Worker) {
        drop(worker);
    }
}

/// The entropy device (virtio-rng): one queue, no configuration space.
#[derive(Debug, Default, Clone, Copy)]
pub struct RngServed;

impl Served for RngServed {
    type Worker = RngWorker;

    fn name(&self) -> &str {
        "vhost-user-rng"
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        rng::QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        features::COMMON
    }

    fn config(&self) -> Vec<u8> {
        Vec::new()
    }

    fn new_worker(&self, _acked_features: u64) -> io::Result<RngWorker> {
        Ok(RngWorker::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_offers_no_config_but_mq_and_reply_ack() {
        let p = RngServed.protocol_features();
        assert!(!p.contains(VhostUserProtocolFeatures::CONFIG));
        assert!(p.contains(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK));
        assert_eq!(RngServed.features(), features::COMMON);
        assert_eq!(RngServed.num_queues(), 1);
    }
}
