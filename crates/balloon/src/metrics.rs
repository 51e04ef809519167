//! The balloon's counters under the names of Firecracker's `balloon` metrics group.
//! (Page and byte totals since start are [`crate::BalloonCounters`].)

virtio_devices::metrics_group!(
    /// What the balloon did; shared by the device, its handle and its worker.
    BalloonMetrics => BalloonValues {
        /// Activations that failed.
        activate_fails,
        /// Inflate chains served.
        inflate_count,
        /// Statistics buffers parsed.
        stats_updates_count,
        /// Statistics buffers that could not be read.
        stats_update_fails,
        /// Deflate chains served.
        deflate_count,
        /// Queue events the worker could not serve.
        event_fails,
        /// Free page reporting chains served.
        free_page_report_count,
        /// Bytes given back by free page reporting.
        free_page_report_freed,
        /// Reported ranges that could not be given back.
        free_page_report_fails,
        /// Hinted ranges taken for the current run.
        free_page_hint_count,
        /// Bytes given back by free page hinting.
        free_page_hint_freed,
        /// Hinted ranges that could not be given back.
        free_page_hint_fails,
    }
);
