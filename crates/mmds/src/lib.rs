//! The microVM metadata service (MMDS), as Firecracker offers it: a JSON document per
//! VM that the host writes through the API and the guest reads over HTTP at a
//! link-local address (169.254.169.254 by default) through one of its NICs, with
//! version 2's session tokens.
//!
//! - [`store`]: the document ([`Mmds`]): put, JSON Merge Patch, reads by JSON pointer
//!   in JSON or IMDS text form, a size limit.
//! - [`token`]: version 2's session tokens, bounded in number.
//! - [`http`]: the guest's requests parsed and answered.
//! - [`pdu`], [`tcp`], [`stack`]: the frames, a minimal TCP endpoint and the per-NIC
//!   [`MmdsStack`] that takes the service's frames out of the guest's transmit path
//!   and puts its answers into the receive path.
//!
//! Everything here parses guest-controlled bytes: malformed input is counted and
//! dropped or answered with an error, never a panic, and what a guest can make the
//! service hold (connections, buffered bytes, tokens) is bounded.

pub mod http;
pub mod pdu;
pub mod stack;
pub mod store;
pub mod tcp;
pub mod token;

pub use stack::{DEFAULT_IPV4, MMDS_MAC, MmdsStack};
pub use store::{Mmds, StoreError};

/// The service's store as the API and every NIC's stack share it.
pub type SharedMmds = std::sync::Arc<std::sync::Mutex<Mmds>>;

/// One VM's metadata service: the store and the counters of its `mmds` metrics group,
/// shared by the API, every NIC that answers it, and the metrics writer.
#[derive(Debug, Clone, Default)]
pub struct Service {
    /// The store.
    pub store: SharedMmds,
    /// The counters.
    pub metrics: std::sync::Arc<MmdsMetrics>,
}

impl Service {
    /// A service whose document may be at most `size_limit` bytes of JSON.
    pub fn new(size_limit: usize) -> Self {
        Self {
            store: std::sync::Arc::new(std::sync::Mutex::new(Mmds::new(size_limit))),
            metrics: std::sync::Arc::default(),
        }
    }

    /// The store, locked (a panic elsewhere while it was held leaves it usable: every
    /// change to it is made whole or not at all).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Mmds> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stack answering at `ip` from this service, for one NIC.
    pub fn stack(&self, ip: std::net::Ipv4Addr) -> MmdsStack {
        MmdsStack::new(ip, self.store.clone(), self.metrics.clone())
    }
}

virtio_devices::metrics_group!(
    /// The metadata service's counters (Firecracker's `mmds` group).
    MmdsMetrics => MmdsValues {
        /// Frames the service took from the guest.
        rx_accepted,
        /// Frames it took that were malformed (or requests it could not parse).
        rx_accepted_err,
        /// Frames it took and dropped as unusual (not TCP, fragments, stray segments).
        rx_accepted_unusual,
        /// Invalid Ethernet frames.
        rx_bad_eth,
        /// `GET`s with a token that is not valid.
        rx_invalid_token,
        /// `GET`s without a token.
        rx_no_token,
        /// Frames received.
        rx_count,
        /// Bytes sent to the guest.
        tx_bytes,
        /// Sends to the guest.
        tx_count,
        /// Frames that could not be sent.
        tx_errors,
        /// Frames sent to the guest.
        tx_frames,
        /// Connections opened.
        connections_created,
        /// Connections closed.
        connections_destroyed,
    }
);

#[cfg(test)]
mod stack_tests;
