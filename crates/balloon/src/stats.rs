//! The guest's memory statistics (virtio 1.2, section 5.5.6.3): the tag/value records
//! the driver writes into the statistics buffer, and the [`BalloonStats`] the VMM's API
//! reports (with Firecracker's field names).
//!
//! Parsing is a pure function of the bytes the guest wrote: any length and any tag is
//! accepted; whole records with a known tag are kept, the rest is counted and dropped.

use std::time::SystemTime;

/// Size of one record: `le16 tag` then `le64 val`, packed.
pub const RECORD_SIZE: usize = 10;
/// Most records read from one buffer (Linux sends 16); the rest of a larger buffer is
/// ignored, so a guest cannot make the device read megabytes.
pub const MAX_RECORDS: usize = 64;

/// Tags of the statistics (`VIRTIO_BALLOON_S_*`); 10 and above are Linux extensions.
pub mod tag {
    /// Bytes swapped in.
    pub const SWAP_IN: u16 = 0;
    /// Bytes swapped out.
    pub const SWAP_OUT: u16 = 1;
    /// Major page faults.
    pub const MAJFLT: u16 = 2;
    /// Minor page faults.
    pub const MINFLT: u16 = 3;
    /// Free memory, bytes.
    pub const MEMFREE: u16 = 4;
    /// Total memory, bytes.
    pub const MEMTOT: u16 = 5;
    /// Available memory (estimate), bytes.
    pub const AVAIL: u16 = 6;
    /// Disk caches, bytes.
    pub const CACHES: u16 = 7;
    /// Successful hugetlb page allocations.
    pub const HTLB_PGALLOC: u16 = 8;
    /// Failed hugetlb page allocations.
    pub const HTLB_PGFAIL: u16 = 9;
    /// OOM killer invocations.
    pub const OOM_KILL: u16 = 10;
    /// Allocation stalls.
    pub const ALLOC_STALL: u16 = 11;
    /// Memory scanned by kswapd, bytes.
    pub const ASYNC_SCAN: u16 = 12;
    /// Memory scanned by direct reclaim, bytes.
    pub const DIRECT_SCAN: u16 = 13;
    /// Memory reclaimed by kswapd, bytes.
    pub const ASYNC_RECLAIM: u16 = 14;
    /// Memory reclaimed by direct reclaim, bytes.
    pub const DIRECT_RECLAIM: u16 = 15;
}

/// The last statistics the guest sent. A field is `None` when the guest did not report
/// it (older kernels, kernels without hugetlb).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes swapped in.
    pub swap_in: Option<u64>,
    /// Bytes swapped out.
    pub swap_out: Option<u64>,
    /// Major page faults.
    pub major_faults: Option<u64>,
    /// Minor page faults.
    pub minor_faults: Option<u64>,
    /// Free memory, bytes.
    pub free_memory: Option<u64>,
    /// Total memory, bytes.
    pub total_memory: Option<u64>,
    /// Available memory (estimate), bytes.
    pub available_memory: Option<u64>,
    /// Disk caches, bytes.
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations.
    pub hugetlb_failures: Option<u64>,
    /// OOM killer invocations.
    pub oom_kill: Option<u64>,
    /// Allocation stalls.
    pub alloc_stall: Option<u64>,
    /// Memory scanned by kswapd, bytes.
    pub async_scan: Option<u64>,
    /// Memory scanned by direct reclaim, bytes.
    pub direct_scan: Option<u64>,
    /// Memory reclaimed by kswapd, bytes.
    pub async_reclaim: Option<u64>,
    /// Memory reclaimed by direct reclaim, bytes.
    pub direct_reclaim: Option<u64>,
    /// When the device received them.
    pub received_at: SystemTime,
}

impl BalloonStats {
    /// No statistics, received at `at`.
    pub fn empty(at: SystemTime) -> Self {
        Self {
            swap_in: None,
            swap_out: None,
            major_faults: None,
            minor_faults: None,
            free_memory: None,
            total_memory: None,
            available_memory: None,
            disk_caches: None,
            hugetlb_allocations: None,
            hugetlb_failures: None,
            oom_kill: None,
            alloc_stall: None,
            async_scan: None,
            direct_scan: None,
            async_reclaim: None,
            direct_reclaim: None,
            received_at: at,
        }
    }

    /// Record `val` under `tag`; returns `false` for a tag this device does not know.
    pub fn set(&mut self, tag: u16, val: u64) -> bool {
        let field = match tag {
            tag::SWAP_IN => &mut self.swap_in,
            tag::SWAP_OUT => &mut self.swap_out,
            tag::MAJFLT => &mut self.major_faults,
            tag::MINFLT => &mut self.minor_faults,
            tag::MEMFREE => &mut self.free_memory,
            tag::MEMTOT => &mut self.total_memory,
            tag::AVAIL => &mut self.available_memory,
            tag::CACHES => &mut self.disk_caches,
            tag::HTLB_PGALLOC => &mut self.hugetlb_allocations,
            tag::HTLB_PGFAIL => &mut self.hugetlb_failures,
            tag::OOM_KILL => &mut self.oom_kill,
            tag::ALLOC_STALL => &mut self.alloc_stall,
            tag::ASYNC_SCAN => &mut self.async_scan,
            tag::DIRECT_SCAN => &mut self.direct_scan,
            tag::ASYNC_RECLAIM => &mut self.async_reclaim,
            tag::DIRECT_RECLAIM => &mut self.direct_reclaim,
            _ => return false,
        };
        *field = Some(val);
        true
    }
}

/// What [`parse`] made of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The statistics.
    pub stats: BalloonStats,
    /// Whole records read (known or not).
    pub records: usize,
    /// Records with a tag this device does not know, dropped.
    pub unknown_tags: usize,
    /// Bytes after the last whole record, dropped.
    pub trailing_bytes: usize,
}

/// Parse the records in `bytes` (at most [`MAX_RECORDS`]; the caller reads no more).
/// A tag given twice keeps its last value.
pub fn parse(bytes: &[u8], at: SystemTime) -> Parsed {
    let mut stats = BalloonStats::empty(at);
    let mut records = 0;
    let mut unknown_tags = 0;
    let mut chunks = bytes.chunks_exact(RECORD_SIZE);
    for rec in chunks.by_ref().take(MAX_RECORDS) {
        let (t, v) = rec.split_at(2);
        let (Ok(t), Ok(v)) = (<[u8; 2]>::try_from(t), <[u8; 8]>::try_from(v)) else {
            continue;
        };
        records += 1;
        if !stats.set(u16::from_le_bytes(t), u64::from_le_bytes(v)) {
            unknown_tags += 1;
        }
    }
    Parsed {
        stats,
        records,
        unknown_tags,
        trailing_bytes: bytes.len() - records * RECORD_SIZE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(t: u16, v: u64) -> Vec<u8> {
        let mut b = t.to_le_bytes().to_vec();
        b.extend_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn every_known_tag_lands_in_its_field() {
        let bytes: Vec<u8> = (0u16..16)
            .flat_map(|t| rec(t, 1000 + u64::from(t)))
            .collect();
        let p = parse(&bytes, SystemTime::UNIX_EPOCH);
        assert_eq!(p.records, 16);
        assert_eq!(p.unknown_tags, 0);
        assert_eq!(p.trailing_bytes, 0);
        let s = p.stats;
        let fields = [
            s.swap_in,
            s.swap_out,
            s.major_faults,
            s.minor_faults,
            s.free_memory,
            s.total_memory,
            s.available_memory,
            s.disk_caches,
            s.hugetlb_allocations,
            s.hugetlb_failures,
            s.oom_kill,
            s.alloc_stall,
            s.async_scan,
            s.direct_scan,
            s.async_reclaim,
            s.direct_reclaim,
        ];
        for (i, f) in fields.iter().enumerate() {
            assert_eq!(*f, Some(1000 + i as u64), "tag {i}");
        }
    }

    #[test]
    fn unknown_tags_odd_lengths_and_repeats() {
        let mut bytes = rec(tag::MEMFREE, 5);
        bytes.extend(rec(999, 1));
        bytes.extend(rec(tag::MEMFREE, 6));
        bytes.extend([1, 2, 3]);
        let p = parse(&bytes, SystemTime::UNIX_EPOCH);
        assert_eq!(p.records, 3);
        assert_eq!(p.unknown_tags, 1);
        assert_eq!(p.trailing_bytes, 3);
        assert_eq!(p.stats.free_memory, Some(6), "the last value wins");
        assert_eq!(p.stats.total_memory, None);

        let p = parse(&[7; 9], SystemTime::UNIX_EPOCH);
        assert_eq!((p.records, p.trailing_bytes), (0, 9));
        assert_eq!(p.stats, BalloonStats::empty(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn records_beyond_the_cap_are_dropped() {
        let bytes: Vec<u8> = (0..MAX_RECORDS + 5)
            .flat_map(|i| rec(tag::SWAP_IN, i as u64))
            .collect();
        let p = parse(&bytes, SystemTime::UNIX_EPOCH);
        assert_eq!(p.records, MAX_RECORDS);
        assert_eq!(p.stats.swap_in, Some(MAX_RECORDS as u64 - 1));
        assert_eq!(p.trailing_bytes, 5 * RECORD_SIZE);
    }
}
