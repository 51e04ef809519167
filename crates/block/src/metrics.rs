//! The counters of one disk, under the names of Firecracker's `block` metrics group.

virtio_devices::metrics_group!(
    /// What one disk did; shared by the device and its worker.
    BlockMetrics => BlockValues {
        /// Activations that failed.
        activate_fails,
        /// Configuration-space writes refused (the space is read-only).
        cfg_fails,
        /// Queue events that found no request.
        no_avail_buffer,
        /// Events the worker could not serve (the queue broke).
        event_fails,
        /// Requests answered with an I/O error by the host.
        execute_fails,
        /// Requests refused as malformed, or writes to a read-only disk.
        invalid_reqs_count,
        /// Flush requests.
        flush_count,
        /// Queue notifications from the driver.
        queue_event_count,
        /// Rate limiter timer events.
        rate_limiter_event_count,
        /// Image swaps and limit changes while the VM exists (`PATCH /drives`).
        update_count,
        /// Such changes that failed.
        update_fails,
        /// Bytes read by the guest.
        read_bytes,
        /// Bytes written by the guest.
        write_bytes,
        /// Read requests served.
        read_count,
        /// Write requests served.
        write_count,
        /// Times the rate limiter held the queue back.
        rate_limiter_throttled_events,
        /// Times the io_uring was full and the queue waited for completions.
        io_engine_throttled_events,
        /// Requests left in the queue when serving stopped (limiter or full ring).
        remaining_reqs_count,
    }
    latency {
        /// Time of the reads, from start to completion.
        read_agg,
        /// Time of the writes.
        write_agg,
    }
);
