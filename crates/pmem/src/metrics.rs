//! The device's counters under the names of Firecracker's `pmem` metrics group.

virtio_devices::metrics_group!(
    /// What a pmem device did; shared by the device and its worker.
    PmemMetrics => PmemValues {
        /// Activations that failed.
        activate_fails,
        /// Writes of the driver to the configuration space (read-only: ignored).
        cfg_fails,
        /// Requests that could not be served (a chain that is not a flush request with
        /// room for its status, buffers outside guest memory), and failed queue events.
        event_fails,
        /// Queue notifications.
        queue_event_count,
        /// Times the rate limiter held the flushes back.
        rate_limiter_throttled_events,
        /// Rate limiter timer events.
        rate_limiter_event_count,
    }
);
