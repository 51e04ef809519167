//! `vireo uffd-handler --socket PATH --mem-file FILE`: a page-fault handler for a snapshot
//! loaded with the `Uffd` memory backend (Vireo's or Firecracker's: the protocol is
//! Firecracker's, see `vmm::snapshot::uffd`).
//!
//! It listens on PATH (the socket appears there only once it listens: it is bound under
//! another name and renamed), takes one connection (and removes PATH), and receives with
//! it the VMM's userfaultfd and the JSON list of guest memory regions. Then it serves every missing
//! page from FILE (mapped read-only, privately) with `UFFDIO_COPY`, one page (4 KiB, or
//! 2 MiB for a huge-page guest) per fault. A page that lies in a hole of the sparse
//! memory file (found with `SEEK_DATA`/`SEEK_HOLE` at the start) is mapped to the zero
//! page instead (`UFFDIO_ZEROPAGE`; a zero-filled copy for huge pages), costing no
//! memory until the guest writes it. `UFFD_EVENT_REMOVE` (a balloon gave the pages back)
//! marks the range: a later fault there gets zeros, not the file's old content. While a
//! remove event waits to be read, the kernel refuses copies (`EAGAIN`): the faults are
//! kept and tried again after the events are read.
//!
//! It ends when the VMM closes the connection (the VM has ended, or its load failed),
//! and prints what it did as one JSON line on stdout:
//! `{"faults": N, "copied_pages": N, "zero_pages": N, "remove_events": N,
//! "removed_bytes": N}`.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use serde::Serialize;
use vmm::snapshot::uffd::{Event, FillError, Uffd, UffdRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// What the handler did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Stats {
    /// Page faults read.
    pub faults: u64,
    /// Pages filled from the memory file.
    pub copied_pages: u64,
    /// Pages filled with zeros (holes, removed ranges).
    pub zero_pages: u64,
    /// `UFFD_EVENT_REMOVE` events.
    pub remove_events: u64,
    /// Bytes they covered.
    pub removed_bytes: u64,
}

/// The memory file, mapped read-only and privately.
struct MemFile {
    ptr: *const u8,
    len: u64,
    /// The `[start, end)` byte ranges that hold data (the rest are holes), sorted.
    data: Vec<(u64, u64)>,
}

impl MemFile {
    fn open(path: &Path) -> Result<MemFile, String> {
        let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        let size = usize::try_from(len).map_err(|_| format!("{}: too large", path.display()))?;
        let ptr = if size == 0 {
            std::ptr::null()
        } else {
            // SAFETY: a new read-only private mapping of the whole file; nothing else
            // refers to that address range. Checked for failure below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(format!(
                    "cannot map {}: {}",
                    path.display(),
                    io::Error::last_os_error()
                ));
            }
            p as *const u8
        };
        Ok(MemFile {
            ptr,
            len,
            data: data_ranges(&file, len),
        })
    }

    /// Whether `[off, off+len)` holds any data.
    fn has_data(&self, off: u64, len: u64) -> bool {
        let end = off + len;
        // The first range ending after `off`.
        let i = self.data.partition_point(|&(_, e)| e <= off);
        self.data.get(i).is_some_and(|&(s, _)| s < end)
    }
}

/// The data ranges of a file, from `SEEK_DATA`/`SEEK_HOLE` (the whole file if the file
/// system cannot say).
fn data_ranges(file: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut at = 0i64;
    while (at as u64) < len {
        // SAFETY: lseek on an open descriptor; only the returned offsets are used.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // No data after `at`.
            }
            return vec![(0, len)];
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end <= start {
            return vec![(0, len)];
        }
        ranges.push((start as u64, end as u64));
        at = end;
    }
    ranges
}

/// One region as served.
struct Region {
    map: UffdRegion,
    page: u64,
    /// One bit per page: removed (a balloon gave it back), so zeros from now on.
    removed: Vec<u64>,
}

impl Region {
    fn contains(&self, addr: u64) -> bool {
        (self.map.base_host_virt_addr..self.map.base_host_virt_addr + self.map.size).contains(&addr)
    }
}

/// Bind `socket` atomically: under a temporary name, listening, then renamed.
fn listen(socket: &Path) -> Result<UnixListener, String> {
    let tmp = socket.with_file_name(format!(
        ".{}.{}",
        socket
            .file_name()
            .map_or("uffd".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("cannot listen on {}: {e}", tmp.display()))?;
    if socket.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{} exists", socket.display()));
    }
    std::fs::rename(&tmp, socket).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot move the socket to {}: {e}", socket.display())
    })?;
    Ok(listener)
}

/// Receive the regions and the userfaultfd (one message; a body split over several reads
/// is put together).
fn receive(stream: &UnixStream) -> Result<(Vec<UffdRegion>, Uffd), String> {
    let mut body = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let (n, file) = stream
            .recv_with_fd(&mut buf[..])
            .map_err(|e| format!("cannot receive from the VMM: {e}"))?;
        if fd.is_none() {
            fd = file.map(OwnedFd::from);
        }
        if n == 0 {
            return Err(format!(
                "the VMM closed the connection after {} bytes{}",
                body.len(),
                if fd.is_some() {
                    ""
                } else {
                    " and no userfaultfd"
                }
            ));
        }
        body.extend_from_slice(&buf[..n]);
        if let Ok(regions) = serde_json::from_slice::<Vec<UffdRegion>>(&body) {
            let fd = fd.ok_or("the VMM sent the regions without a userfaultfd")?;
            // Events are read until none is left: the descriptor must not block (Vireo's
            // and Firecracker's are made so; another VMM's may not be).
            let raw = fd.as_raw_fd();
            // SAFETY: fcntl on a descriptor this function owns; no memory is passed.
            let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
            // SAFETY: as above.
            let set = unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) };
            if flags < 0 || set < 0 {
                return Err(format!(
                    "the userfaultfd: fcntl: {}",
                    io::Error::last_os_error()
                ));
            }
            return Ok((regions, Uffd::from_fd(fd)));
        }
    }
}

fn check(regions: &[UffdRegion], file: &MemFile) -> Result<Vec<Region>, String> {
    if regions.is_empty() {
        return Err("the VMM sent no region".into());
    }
    regions
        .iter()
        .map(|r| {
            let page = r.page_bytes();
            if !page.is_power_of_two()
                || page < 4096
                || r.base_host_virt_addr % page != 0
                || r.size % page != 0
            {
                return Err(format!(
                    "a region with page size {page} is not aligned: {r:?}"
                ));
            }
            if r.offset
                .checked_add(r.size)
                .is_none_or(|end| end > file.len)
            {
                return Err(format!(
                    "the memory file ({} bytes) is shorter than a region: {r:?}",
                    file.len
                ));
            }
            Ok(Region {
                map: *r,
                page,
                removed: vec![0; (r.size / page).div_ceil(64) as usize],
            })
        })
        .collect()
}

/// Serve the userfaultfd sent on `stream` until the VMM closes it.
struct Server {
    uffd: Uffd,
    regions: Vec<Region>,
    file: MemFile,
    zeros: Vec<u8>,
    stats: Stats,
}

enum Served {
    Done,
    Again,
    VmGone,
}

impl Server {
    fn remove(&mut self, start: u64, end: u64) {
        self.stats.remove_events += 1;
        self.stats.removed_bytes += end.saturating_sub(start);
        for r in &mut self.regions {
            let base = r.map.base_host_virt_addr;
            let (lo, hi) = (start.max(base), end.min(base + r.map.size));
            if lo >= hi {
                continue;
            }
            // Whole pages only: a partly removed page keeps its bit clear (it was not
            // dropped whole, so it is present and will not fault).
            let first = (lo - base).div_ceil(r.page);
            let last = (hi - base) / r.page;
            for p in first..last {
                r.removed[(p / 64) as usize] |= 1 << (p % 64);
            }
        }
    }

    fn fault(&mut self, addr: u64) -> Result<Served, String> {
        let Some(i) = self.regions.iter().position(|r| r.contains(addr)) else {
            return Err(format!("a fault at {addr:#x}, outside every region"));
        };
        let r = &self.regions[i];
        let page = addr & !(r.page - 1);
        let index = (page - r.map.base_host_virt_addr) / r.page;
        let removed = r.removed[(index / 64) as usize] & (1 << (index % 64)) != 0;
        let off = r.map.offset + (page - r.map.base_host_virt_addr);
        let size = r.page;
        let zero = removed || !self.file.has_data(off, size);
        let result = if zero && size == 4096 {
            self.uffd.zeropage(page, size)
        } else if zero {
            if self.zeros.len() < size as usize {
                self.zeros = vec![0; size as usize];
            }
            // SAFETY: `zeros` holds at least `size` bytes.
            unsafe { self.uffd.copy(page, self.zeros.as_ptr(), size) }
        } else {
            // SAFETY: `off + size` is within the file (checked for every region), which
            // is mapped whole and readable for the server's life.
            unsafe { self.uffd.copy(page, self.file.ptr.add(off as usize), size) }
        };
        match result {
            Ok(()) => {
                if zero {
                    self.stats.zero_pages += 1;
                } else {
                    self.stats.copied_pages += 1;
                }
                Ok(Served::Done)
            }
            // Filled meanwhile (two vCPUs on one page): wake whoever still waits.
            Err(FillError::Exists) => {
                let _ = self.uffd.wake(page, size);
                Ok(Served::Done)
            }
            Err(FillError::Again) => Ok(Served::Again),
            Err(FillError::Gone) => Ok(Served::VmGone),
            Err(FillError::Other(e)) => Err(format!(
                "cannot fill the page at {page:#x}: {}",
                io::Error::from_raw_os_error(e)
            )),
        }
    }

    /// Read and handle every waiting event; `false` once the VMM's memory is gone.
    fn handle_events(&mut self) -> Result<bool, String> {
        let mut deferred: Vec<u64> = Vec::new();
        loop {
            let mut faults = std::mem::take(&mut deferred);
            while let Some(event) = self
                .uffd
                .read_event()
                .map_err(|e| format!("cannot read the userfaultfd: {e}"))?
            {
                match event {
                    // Removes first: a fault read with them must see them.
                    Event::Remove { start, end } => self.remove(start, end),
                    Event::Pagefault { addr, .. } => {
                        self.stats.faults += 1;
                        faults.push(addr);
                    }
                    Event::Other(e) => log::warn!("uffd-handler: event {e:#x} ignored"),
                }
            }
            for addr in faults {
                match self.fault(addr)? {
                    Served::Done => {}
                    Served::Again => deferred.push(addr),
                    Served::VmGone => return Ok(false),
                }
            }
            if deferred.is_empty() {
                return Ok(true);
            }
        }
    }

    fn run(&mut self, stream: &mut UnixStream) -> Result<(), String> {
        let mut fds = [
            libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stream.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            if fds[0].revents & libc::POLLIN != 0 && !self.handle_events()? {
                return Ok(());
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                return Ok(());
            }
            let s = fds[1].revents;
            if s & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                return Ok(()); // The VMM is gone.
            }
            if s & libc::POLLIN != 0 {
                // Nothing more is said on the socket; whatever comes is dropped.
                let mut sink = [0u8; 256];
                if matches!(stream.read(&mut sink), Ok(0)) {
                    return Ok(());
                }
            }
        }
    }
}

/// Listen on `socket`, serve one VMM from `mem_file` until it goes.
pub fn run(socket: &Path, mem_file: &Path) -> Result<Stats, String> {
    let file = MemFile::open(mem_file)?;
    let listener = listen(socket)?;
    let accepted = listener.accept();
    let _ = std::fs::remove_file(socket);
    let (stream, _) = accepted.map_err(|e| format!("accept: {e}"))?;
    serve(stream, file)
}

/// Serve the VMM on `stream` from `file` until it goes.
fn serve(mut stream: UnixStream, file: MemFile) -> Result<Stats, String> {
    let (regions, uffd) = receive(&stream)?;
    let regions = check(&regions, &file)?;
    let mut server = Server {
        uffd,
        regions,
        file,
        zeros: Vec::new(),
        stats: Stats::default(),
    };
    let result = server.run(&mut stream);
    let stats = server.stats;
    result.map(|()| stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vmm::snapshot::uffd::FEATURE_EVENT_REMOVE;

    /// The handler's side against memory of this process registered like a VMM's: pages
    /// come from the file, holes are zeros, and pages a `madvise(MADV_DONTNEED)` removed
    /// come back as zeros, not as the file's content.
    #[test]
    fn pages_come_from_the_file_holes_and_removed_pages_are_zeros() {
        let test = "pages_come_from_the_file_holes_and_removed_pages_are_zeros";
        let uffd = test_support::require!(test, Uffd::create(FEATURE_EVENT_REMOVE));
        const PAGE: usize = 4096;
        const LEN: usize = 16 * PAGE;
        let path = std::env::temp_dir().join(format!("vireo-uffdh-rm-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(LEN as u64).unwrap();
        for page in 0..4u8 {
            file.write_all_at(&[page + 1; PAGE], u64::from(page) * PAGE as u64)
                .unwrap();
        }
        drop(file);
        // SAFETY: a new anonymous private mapping, unmapped at the end of the test.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        let base = mem as u64;
        uffd.register_missing(base, LEN as u64).unwrap();
        let (vmm_end, handler_end) = UnixStream::pair().unwrap();
        let file_path = path.clone();
        let handler = std::thread::spawn(move || {
            serve(handler_end, MemFile::open(&file_path).unwrap()).unwrap()
        });
        let regions = format!(
            r#"[{{"base_host_virt_addr": {base}, "size": {LEN}, "offset": 0, "page_size": 4096, "page_size_kib": 4096}}]"#
        );
        vmm_end
            .send_with_fd(regions.as_bytes(), uffd.as_raw_fd())
            .unwrap();
        // SAFETY: every read and write is inside the mapping; the handler fills the
        // pages these accesses fault on.
        let byte = |page: usize| unsafe {
            std::ptr::read_volatile((mem as *const u8).add(page * PAGE + 7))
        };
        assert_eq!(byte(0), 1);
        assert_eq!(byte(1), 2);
        assert_eq!(byte(9), 0, "a hole");
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile((mem as *mut u8).add(7), 0x55) };
        assert_eq!(byte(0), 0x55);
        // SAFETY: the first two pages of the mapping.
        let advised = unsafe { libc::madvise(mem, 2 * PAGE, libc::MADV_DONTNEED) };
        assert_eq!(advised, 0);
        assert_eq!(
            byte(0),
            0,
            "removed: zeros, not the file's 1 or the old 0x55"
        );
        assert_eq!(byte(1), 0);
        assert_eq!(byte(2), 3, "not removed: from the file");
        drop(vmm_end);
        let stats = handler.join().unwrap();
        assert_eq!(stats.remove_events, 1);
        assert_eq!(stats.removed_bytes, 2 * PAGE as u64);
        assert_eq!(stats.copied_pages, 3, "pages 0, 1, 2: {stats:?}");
        assert_eq!(stats.zero_pages, 3, "page 9, then 0 and 1 again: {stats:?}");
        assert_eq!(stats.faults, 6);
        // SAFETY: the mapping made above; nothing refers to it any more.
        unsafe { libc::munmap(mem, LEN) };
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn holes_of_a_sparse_file_are_found() {
        let path = std::env::temp_dir().join(format!("vireo-uffdh-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[1; 4096], 8 << 20).unwrap();
        drop(file);
        let m = MemFile::open(&path).unwrap();
        assert_eq!(m.len, 64 << 20);
        assert!(m.has_data(8 << 20, 4096));
        assert!(m.has_data((8 << 20) - 4096, 8192), "overlapping the data");
        // Far from the written page: holes (the temporary directory's file system has
        // them: tmpfs, ext4, xfs, btrfs).
        assert!(!m.has_data(0, 4096), "{:?}", m.data);
        assert!(!m.has_data(32 << 20, 2 << 20), "{:?}", m.data);
        std::fs::remove_file(&path).unwrap();
    }
}
