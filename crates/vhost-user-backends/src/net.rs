//! The network device (virtio-net) as a vhost-user backend: [`NetServed`].
//!
//! The TAP is opened (created if missing and permitted) once, when the backend is made,
//! so a bad name or missing permission is reported before any frontend connects. Each
//! time the frontend starts the queues, the TAP and the rate limiters are handed to a
//! fresh [`NetWorker`] (`net::device::start_worker`, as `vireo run --net` does on
//! `DRIVER_OK`); when the frontend stops a ring or resets the device, they come back,
//! so a guest reboot finds the same TAP. Features, queue sizes and the configuration
//! space (MAC, link up, one queue pair) are those of [`net::Net`]; the configuration
//! space is read-only.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use net::device::{self as netdev, IdleParts, NetError, NetMetrics};
use net::{NetWorker, Tap};
use rate_limiter::RateLimiter;

use crate::served::Served;

/// A TAP device served as a vhost-user-net backend (receive queue 0, transmit queue 1).
pub struct NetServed {
    tap_name: String,
    config: [u8; netdev::CONFIG_LEN],
    mtu: Option<u16>,
    metrics: Arc<NetMetrics>,
    /// The TAP and the limiters while no frontend runs the queues.
    idle: Mutex<Option<IdleParts<Tap>>>,
}

impl NetServed {
    /// Open the TAP of `config` and set up its rate limits. The guest's MAC is
    /// `config.mac`, or the one `vireo run` derives for a NIC of the same id (`net0`
    /// when none is given).
    pub fn new(config: &api::NetConfig) -> Result<Self, NetError> {
        let rx = RateLimiter::new(&config.rx_rate_limit).map_err(NetError::RateLimiter)?;
        let tx = RateLimiter::new(&config.tx_rate_limit).map_err(NetError::RateLimiter)?;
        let tap = Tap::open(&config.tap)?;
        let mac = config
            .mac
            .unwrap_or_else(|| net::device::local_mac(config.id.as_deref().unwrap_or("net0")));
        Ok(Self {
            tap_name: config.tap.clone(),
            config: netdev::config_space(mac, config.mtu),
            mtu: config.mtu,
            metrics: Arc::new(NetMetrics::default()),
            idle: Mutex::new(Some((tap, rx, tx))),
        })
    }

    /// The TAP's interface name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The device's counters (frames and bytes each way, drops, malformed chains).
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    fn idle(&self) -> MutexGuard<'_, Option<IdleParts<Tap>>> {
        // An Option cannot be left half-updated; a panic elsewhere does not poison it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Served for NetServed {
    type Worker = NetWorker<Tap>;

    fn name(&self) -> &str {
        "vhost-user-net"
    }

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> u16 {
        netdev::QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        netdev::offered_features(self.mtu)
    }

    fn config(&self) -> Vec<u8> {
        self.config.to_vec()
    }

    fn new_worker(&self, acked_features: u64) -> io::Result<NetWorker<Tap>> {
        let mut idle = self.idle();
        let Some(parts) = idle.take() else {
            return Err(io::Error::other(format!(
                "{}: the TAP is already in use by a running worker",
                self.tap_name
            )));
        };
        match netdev::start_worker(parts, acked_features, self.metrics.clone()) {
            Ok(worker) => Ok(worker),
            Err((parts, e)) => {
                *idle = Some(parts);
                Err(io::Error::other(format!("{}: {e}", self.tap_name)))
            }
        }
    }

    fn recycle(&self, worker: NetWorker<Tap>) {
        *self.idle() = Some(worker.into_parts());
        log::debug!(
            "vhost-user-net: {} frames sent, {} received so far",
            self.metrics.tx_packets_count.get(),
            self.metrics.rx_packets_count.get()
        );
    }
}
