//! The vsock device's counters, under the names of Firecracker's `vsock` metrics group.
//! "tx" is what the guest sends, "rx" what it receives.

virtio_devices::metrics_group!(
    /// What the vsock device did; shared by the device, its worker and the muxer.
    VsockMetrics => VsockValues {
        /// Activations that failed.
        activate_fails,
        /// Configuration-space writes refused (the space is read-only).
        cfg_fails,
        /// Events of the rx queue the worker could not serve.
        rx_queue_event_fails,
        /// Events of the tx queue the worker could not serve.
        tx_queue_event_fails,
        /// Events of the event queue the worker could not serve.
        ev_queue_event_fails,
        /// Host-side events the worker could not serve.
        muxer_event_fails,
        /// Connection events that failed (epoll could not follow a connection).
        conn_event_fails,
        /// Notifications of the rx queue.
        rx_queue_event_count,
        /// Notifications of the tx queue.
        tx_queue_event_count,
        /// Payload bytes delivered to the guest.
        rx_bytes_count,
        /// Payload bytes sent by the guest.
        tx_bytes_count,
        /// Packets delivered to the guest (headers only included).
        rx_packets_count,
        /// Packets sent by the guest.
        tx_packets_count,
        /// Connections opened (by either side).
        conns_added,
        /// Connections ended with a reset.
        conns_killed,
        /// Connections ended.
        conns_removed,
        /// Reserved (Firecracker's kill-queue resyncs; Vireo has no kill queue).
        killq_resync,
        /// Writes to a host socket that could not be completed.
        tx_flush_fails,
        /// Writes to a host socket that failed.
        tx_write_fails,
        /// Reads from a host socket that failed.
        rx_read_fails,
    }
);
