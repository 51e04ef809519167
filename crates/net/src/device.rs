//! The register side of virtio-net: [`Net`] offers its features, answers configuration
//! space reads (MAC, link status) and, when the driver sets `DRIVER_OK`, hands its
//! backend to a [`NetWorker`] on a [`WorkerThread`]; a reset stops the thread and takes
//! the backend (the TAP) back so the driver can start again.
//!
//! Queue 0 receives (host to guest), queue 1 transmits. No control queue, no
//! multi-queue.

use std::sync::Arc;

use rate_limiter::RateLimiter;
use virtio_bindings::virtio_net;
use virtio_devices::device::{
    ActivateContext, ActivateError, VirtioDevice, device_type, features, read_config_bytes,
};
use virtio_devices::worker::WorkerThread;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::backend::NetBackend;
use crate::tap::{Tap, TapError};
use crate::worker::NetWorker;

/// Size of each of the two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The features Vireo's NIC offers: checksum and TSO offload both ways (what a TAP with
/// a virtio-net header carries), merged rx buffers, a MAC and a link status, plus the
/// transport's [`features::COMMON`]. UFO is not offered: the kernel no longer hands UFO
/// frames to a TAP reader.
pub const OFFERED_FEATURES: u64 = bit(virtio_net::VIRTIO_NET_F_CSUM)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_CSUM)
    | bit(virtio_net::VIRTIO_NET_F_MAC)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO4)
    | bit(virtio_net::VIRTIO_NET_F_GUEST_TSO6)
    | bit(virtio_net::VIRTIO_NET_F_HOST_TSO4)
    | bit(virtio_net::VIRTIO_NET_F_HOST_TSO6)
    | bit(virtio_net::VIRTIO_NET_F_MRG_RXBUF)
    | bit(virtio_net::VIRTIO_NET_F_STATUS)
    | features::COMMON;

/// Length of the configuration space: `mac[6]`, `status`, `max_virtqueue_pairs`, `mtu`.
pub const CONFIG_LEN: usize = 12;

/// Why a NIC could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP device could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A rate limit could not be set up.
    #[error("rate limiter: {0}")]
    RateLimiter(#[source] std::io::Error),
    /// A running NIC could not be changed.
    #[error("the device cannot be changed: {0}")]
    Unavailable(String),
}

virtio_devices::metrics_group!(
    /// Counters of one NIC, shared between the device and its worker, under the names
    /// of Firecracker's `net` metrics group.
    NetMetrics => NetValues {
        /// Activations that failed.
        activate_fails,
        /// Configuration-space writes refused (the space is read-only).
        cfg_fails,
        /// Times a received frame waited because the rx ring was empty.
        no_rx_avail_buffer,
        /// Transmit notifications that found no frame.
        no_tx_avail_buffer,
        /// Events the worker could not serve (a queue or the backend broke).
        event_fails,
        /// Notifications of the rx queue.
        rx_queue_event_count,
        /// Timer events of the rx rate limiter.
        rx_event_rate_limiter_count,
        /// Times the rx rate limiter held a frame back.
        rx_rate_limiter_throttled,
        /// Readiness events of the TAP (or other backend).
        rx_tap_event_count,
        /// Bytes delivered to the guest (frames only, no headers).
        rx_bytes_count,
        /// Frames delivered to the guest.
        rx_packets_count,
        /// Frames dropped on the way in (runt, too large for the guest's buffers) and
        /// rx chains answered empty because they were malformed.
        rx_fails,
        /// Frames read from the backend.
        rx_count,
        /// Reads from the backend that failed.
        tap_read_fails,
        /// Frames the backend refused with an error other than "try again".
        tap_write_fails,
        /// Bytes sent to the backend (frames only, no headers).
        tx_bytes_count,
        /// Transmit chains dropped because they were malformed.
        tx_malformed_frames,
        /// Frames that could not be sent (the backend refused them).
        tx_fails,
        /// Frames written to the backend.
        tx_count,
        /// Frames sent.
        tx_packets_count,
        /// Notifications of the tx queue.
        tx_queue_event_count,
        /// Timer events of the tx rate limiter.
        tx_rate_limiter_event_count,
        /// Times the tx rate limiter held a frame back.
        tx_rate_limiter_throttled,
        /// Frames whose source MAC is not the NIC's (counted, still sent).
        tx_spoofed_mac_count,
        /// Times transmission stopped with a frame waiting (limiter or a full backend).
        tx_remaining_reqs_count,
    }
    latency {
        /// Time of each write to the backend.
        tap_write_agg,
    }
);

/// A locally administered unicast MAC derived from `name` (FNV-1a), stable across runs.
pub fn local_mac(name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_le_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// The configuration space of a NIC with address `mac`: the MAC, link up, one queue
/// pair, and the MTU if one is offered (`VIRTIO_NET_F_MTU`), else 0.
pub fn config_space(mac: [u8; 6], mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut config = [0u8; CONFIG_LEN];
    config[..6].copy_from_slice(&mac);
    config[6..8].copy_from_slice(&(virtio_net::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config[8..10].copy_from_slice(&1u16.to_le_bytes());
    config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    config
}

/// The features a NIC offers: [`OFFERED_FEATURES`], and `VIRTIO_NET_F_MTU` with an MTU.
pub fn offered_features(mtu: Option<u16>) -> u64 {
    OFFERED_FEATURES | mtu.map_or(0, |_| bit(virtio_net::VIRTIO_NET_F_MTU))
}

/// What a NIC keeps while no worker runs: the backend and the rx and tx limiters (as
/// [`NetWorker::into_parts`] returns them).
pub type IdleParts<B> = (B, RateLimiter, RateLimiter);

/// A worker for a driver that accepted `acked_features`, from the device's idle parts:
/// the backend's offloads set, its fd watched by the worker's inner epoll. Everything
/// that can fail is done before the parts are handed over, so on failure they come
/// back untouched with the reason and the device can be started again later.
#[expect(
    clippy::result_large_err,
    reason = "the parts are handed back by value, on a path taken once per activation"
)]
pub fn start_worker<B: NetBackend>(
    parts: IdleParts<B>,
    acked_features: u64,
    metrics: Arc<NetMetrics>,
) -> Result<NetWorker<B>, (IdleParts<B>, ActivateError)> {
    let (mut backend, rx, tx) = parts;
    let prepared = backend
        .set_offload(acked_features)
        .map_err(|e| ActivateError::Backend(e.to_string()))
        .and_then(|()| Epoll::new().map_err(ActivateError::Worker))
        .and_then(|epoll| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    backend.raw_fd(),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .map(|()| epoll)
                .map_err(ActivateError::Worker)
        });
    match prepared {
        Ok(epoll) => Ok(NetWorker::from_parts(
            backend,
            epoll,
            rx,
            tx,
            acked_features,
            metrics,
        )),
        Err(e) => Err(((backend, rx, tx), e)),
    }
}

/// The virtio-net device.
pub struct Net<B: NetBackend = Tap> {
    id: String,
    config: [u8; CONFIG_LEN],
    /// The backend and limiters while the device is not running.
    idle: Option<(B, RateLimiter, RateLimiter)>,
    worker: Option<WorkerThread<NetWorker<B>>>,
    metrics: Arc<NetMetrics>,
    /// The metadata service this NIC answers, if it allows MMDS requests.
    mmds: Option<MmdsLink>,
    /// The MTU offered to the guest, if any.
    mtu: Option<u16>,
}

/// What a NIC needs to answer the metadata service: its address and the VM's service.
/// Each start of the device gets a fresh stack (a driver reset drops the guest's
/// connections anyway).
#[derive(Debug, Clone)]
pub struct MmdsLink {
    /// The service's address.
    pub ip: std::net::Ipv4Addr,
    /// The VM's service.
    pub service: mmds::Service,
}

impl Net<Tap> {
    /// A NIC on the TAP `cfg.tap` (created if missing and permitted), with `cfg`'s MAC
    /// (or one derived from `name`) and rate limits; `name` names its worker thread.
    pub fn new(cfg: &api::NetConfig, name: &str) -> Result<Self, NetError> {
        let rx = RateLimiter::new(&cfg.rx_rate_limit).map_err(NetError::RateLimiter)?;
        let tx = RateLimiter::new(&cfg.tx_rate_limit).map_err(NetError::RateLimiter)?;
        let tap = Tap::open(&cfg.tap)?;
        let mac = cfg.mac.unwrap_or_else(|| local_mac(name));
        let mut net = Self::with_backend(tap, mac, rx, tx, name);
        net.set_mtu(cfg.mtu);
        Ok(net)
    }
}

impl<B: NetBackend> Net<B> {
    /// A NIC on any backend, with the given MAC and receive/transmit limiters.
    pub fn with_backend(
        backend: B,
        mac: [u8; 6],
        rx_limiter: RateLimiter,
        tx_limiter: RateLimiter,
        name: &str,
    ) -> Self {
        Self {
            id: name.to_string(),
            config: config_space(mac, None),
            idle: Some((backend, rx_limiter, tx_limiter)),
            worker: None,
            metrics: Arc::new(NetMetrics::default()),
            mmds: None,
            mtu: None,
        }
    }

    /// Offer `mtu` to the guest (`VIRTIO_NET_F_MTU`; before the driver reads features).
    pub fn set_mtu(&mut self, mtu: Option<u16>) {
        self.mtu = mtu;
        self.config = config_space(self.mac(), mtu);
    }

    /// Answer the metadata service at `link.ip` (from the next start of the device).
    pub fn set_mmds(&mut self, link: MmdsLink) {
        self.mmds = Some(link);
    }

    /// The metadata service this NIC answers, if any.
    pub fn mmds(&self) -> Option<&MmdsLink> {
        self.mmds.as_ref()
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The backend, while the device is not running.
    pub fn backend(&self) -> Option<&B> {
        self.idle.as_ref().map(|(b, _, _)| b)
    }

    /// Replace the receive and/or transmit limits (`None` leaves one as it is; `None`
    /// rates inside a limit are unlimited): both or neither. On a running device the
    /// change is made on the worker thread, where a frame held back by an old limit is
    /// looked at again at once; a device not running keeps them for its next start.
    pub fn set_rate_limits(
        &mut self,
        rx: Option<&api::RateLimit>,
        tx: Option<&api::RateLimit>,
    ) -> Result<(), NetError> {
        let (rx, tx) = (rx.copied(), tx.copied());
        let result = if let Some(thread) = &self.worker {
            thread
                .run(move |worker, _| worker.set_rate_limits(rx.as_ref(), tx.as_ref()))
                .ok_or_else(|| self.gone())?
        } else if let Some((_, rx_limiter, tx_limiter)) = &mut self.idle {
            crate::worker::update_limiters(rx_limiter, rx.as_ref(), tx_limiter, tx.as_ref())
        } else {
            return Err(self.gone());
        };
        result.map_err(NetError::RateLimiter)
    }

    /// The receive and transmit limits in force; `None` if the device lost its worker.
    pub fn rate_limits(&self) -> Option<(api::RateLimit, api::RateLimit)> {
        match (&self.worker, &self.idle) {
            (Some(thread), _) => thread.run(|worker, _| worker.rate_limits()),
            (None, Some((_, rx, tx))) => Some((rx.limit(), tx.limit())),
            (None, None) => None,
        }
    }

    fn start(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        for i in [RX_QUEUE, TX_QUEUE] {
            if !ctx.queues.get(i).is_some_and(|q| {
                use virtio_queue::QueueT;
                q.ready()
            }) {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        let Some(parts) = self.idle.take() else {
            return Err(ActivateError::Backend(format!(
                "{}: the backend was lost when its worker failed",
                self.id
            )));
        };
        let mut worker = match start_worker(parts, ctx.acked_features, self.metrics.clone()) {
            Ok(worker) => worker,
            Err((parts, e)) => {
                self.idle = Some(parts);
                return Err(e);
            }
        };
        worker.set_mac(self.mac());
        if let Some(link) = &self.mmds
            && let Err(e) = worker.set_mmds(link.service.stack(link.ip))
        {
            self.idle = Some(worker.into_parts());
            return Err(ActivateError::Worker(e));
        }
        let thread = WorkerThread::spawn(&self.id, worker, ctx).map_err(ActivateError::Worker)?;
        self.worker = Some(thread);
        Ok(())
    }

    fn gone(&self) -> NetError {
        NetError::Unavailable(format!(
            "{}: the worker thread has ended or lost the backend",
            self.id
        ))
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        offered_features(self.mtu)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC and status are read-only without `CTRL_MAC_ADDR`, which is not offered.
        log::debug!(
            "{}: configuration write at {offset} ({} bytes) ignored",
            self.id,
            data.len()
        );
        self.metrics.cfg_fails.inc();
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.start(ctx)
            .inspect_err(|_| self.metrics.activate_fails.inc())
    }

    fn pause(&mut self) {
        if let Some(w) = &self.worker {
            w.pause();
        }
    }

    fn resume(&mut self) {
        if let Some(w) = &self.worker {
            w.resume();
        }
    }

    fn snapshot_queues(
        &mut self,
    ) -> Result<Option<Vec<virtio_devices::device::QueueSnapshot>>, String> {
        self.worker.as_ref().map(|w| w.snapshot()).transpose()
    }

    fn reset(&mut self) -> bool {
        if let Some(thread) = self.worker.take() {
            match thread.stop() {
                Some((worker, _queues)) => self.idle = Some(worker.into_parts()),
                None => {
                    log::error!("{}: worker thread panicked; the backend is lost", self.id);
                    return false;
                }
            }
        }
        self.idle.is_some()
    }

    fn name(&self) -> &str {
        "virtio-net"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SocketBackend;

    fn net() -> Net<SocketBackend> {
        let (b, _peer) = SocketBackend::pair().unwrap();
        Net::with_backend(
            b,
            [0x02, 1, 2, 3, 4, 5],
            RateLimiter::unlimited(),
            RateLimiter::unlimited(),
            "net-test",
        )
    }

    #[test]
    fn config_space_has_mac_status_and_pairs() {
        let n = net();
        let mut mac = [0u8; 6];
        n.read_config(0, &mut mac);
        assert_eq!(mac, [0x02, 1, 2, 3, 4, 5]);
        let mut status = [0u8; 2];
        n.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1, "link up");
        let mut pairs = [0u8; 2];
        n.read_config(8, &mut pairs);
        assert_eq!(u16::from_le_bytes(pairs), 1);
        let mut mtu = [0xffu8; 2];
        n.read_config(10, &mut mtu);
        assert_eq!(mtu, [0, 0], "no MTU offered");
        let mut word = [0u8; 4];
        n.read_config(4, &mut word);
        assert_eq!(word, [4, 5, 1, 0], "unaligned reads span fields");
        let mut past = [0xffu8; 4];
        n.read_config(CONFIG_LEN as u64, &mut past);
        assert_eq!(past, [0; 4]);
        n.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);
    }

    #[test]
    fn an_mtu_is_offered_with_its_feature() {
        let mut n = net();
        assert_eq!(n.features() & bit(virtio_net::VIRTIO_NET_F_MTU), 0);
        n.set_mtu(Some(9000));
        assert_ne!(n.features() & bit(virtio_net::VIRTIO_NET_F_MTU), 0);
        let mut mtu = [0u8; 2];
        n.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 9000);
        assert_eq!(n.mac(), [0x02, 1, 2, 3, 4, 5], "the MAC stays");
    }

    #[test]
    fn features_and_identity() {
        let n = net();
        assert_eq!(n.device_type(), device_type::NET);
        assert_eq!(n.queue_max_sizes(), &[256, 256]);
        let f = n.features();
        assert_eq!(f & features::COMMON, features::COMMON);
        for b in [
            virtio_net::VIRTIO_NET_F_MAC,
            virtio_net::VIRTIO_NET_F_STATUS,
            virtio_net::VIRTIO_NET_F_MRG_RXBUF,
            virtio_net::VIRTIO_NET_F_CSUM,
            virtio_net::VIRTIO_NET_F_GUEST_TSO4,
        ] {
            assert_ne!(f & bit(b), 0, "feature bit {b}");
        }
        for b in [
            virtio_net::VIRTIO_NET_F_MQ,
            virtio_net::VIRTIO_NET_F_CTRL_VQ,
            virtio_net::VIRTIO_NET_F_GUEST_UFO,
            virtio_net::VIRTIO_NET_F_HOST_UFO,
        ] {
            assert_eq!(f & bit(b), 0, "feature bit {b} is not offered");
        }
        assert_eq!(n.name(), "virtio-net");
    }

    #[test]
    fn local_macs_are_stable_unicast_and_local() {
        let a = local_mac("net0");
        assert_eq!(a, local_mac("net0"));
        assert_ne!(a, local_mac("net1"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn new_refuses_bad_tap_names_and_zero_rates() {
        let mut cfg = api::NetConfig {
            id: None,
            tap: "bad/name".into(),
            mac: None,
            rx_rate_limit: Default::default(),
            tx_rate_limit: Default::default(),
            mtu: None,
        };
        assert!(matches!(
            Net::new(&cfg, "n"),
            Err(NetError::Tap(TapError::InvalidName(_)))
        ));
        cfg.tx_rate_limit.ops_per_sec = Some(0);
        assert!(matches!(Net::new(&cfg, "n"), Err(NetError::RateLimiter(_))));
    }
}
