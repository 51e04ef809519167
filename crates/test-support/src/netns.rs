//! A network namespace made for one test (or bench) and deleted, with every interface in
//! it, on drop: TAPs and bridges the test creates stay out of the host's network.
//!
//! [`Netns::new`] checks the prerequisites first (root, `/dev/net/tun`, `ip` from
//! iproute2) and says which one is missing, for [`crate::require!`]:
//!
//! ```no_run
//! # fn main() {
//! use test_support::{netns::Netns, require};
//! let ns = require!("my_tap_test", Netns::new("tap"));
//! ns.add_tap("vtap0", "10.77.0.1/24").unwrap();
//! let sock = ns.run(|| test_support::netns::packet_socket("vtap0"));
//! # }
//! ```
//!
//! A file descriptor keeps the namespace it was opened in: a TAP or socket opened inside
//! [`Netns::run`] can be used from any thread afterwards. A process started with
//! [`Netns::command`] runs inside.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::skip;

/// IEEE 802 local experimental ethertype: nothing else on a test link uses it.
pub const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A network namespace `vireo-<tag>-<pid>-<n>`, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Make a namespace with its loopback up; `Err` says why not (not root, no
    /// `/dev/net/tun`, no `ip`, or `ip netns add` failed).
    pub fn new(tag: &str) -> Result<Self, String> {
        skip::root().map_err(|e| format!("{e} (a network namespace and a TAP)"))?;
        skip::file(TUN_PATH)?;
        skip::tool("ip", "iproute2")?;
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("vireo-{tag}-{}-{n}", std::process::id());
        // A namespace left by an earlier process of the same pid.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec NAME`, `/run/netns/NAME`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`, to add arguments to and run.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Run `args` inside the namespace; `Err` with its status and stderr if it fails.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let (program, rest) = args.split_first().expect("a command to run");
        let mut cmd = self.command(program);
        cmd.args(rest);
        run_checked(cmd, args)
    }

    /// Create the TAP `dev` (persistent, `vnet_hdr`) with `host_cidr` as its address on
    /// the host side, and bring it up.
    pub fn add_tap(&self, dev: &str, host_cidr: &str) -> Result<(), String> {
        self.exec(&["ip", "tuntap", "add", "dev", dev, "mode", "tap", "vnet_hdr"])?;
        self.exec(&["ip", "addr", "add", host_cidr, "dev", dev])?;
        self.exec(&["ip", "link", "set", dev, "up"])
    }

    /// Run `f` on a thread that joined the namespace (sockets and TAPs it opens live
    /// there, whichever thread uses them later); panics if the thread cannot join it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("join network namespace {name}: {e}"));
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The TUN/TAP clone device.
const TUN_PATH: &str = "/dev/net/tun";

/// Move the calling thread into the namespace `name` (for a thread of its own that
/// serves the test from inside, such as a server; [`Netns::run`] for a short job).
pub fn enter(name: &str) -> io::Result<()> {
    let ns = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on a namespace fd we own; CLONE_NEWNET moves only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking raw `AF_PACKET` socket bound to interface `ifname` (of the calling
/// thread's namespace), all protocols: it sees every frame on a TAP's host side and
/// sends frames into it.
pub fn packet_socket(ifname: &str) -> io::Result<File> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2) with constant arguments; no memory is passed.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let name = CString::new(ifname)?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sockaddr_ll` is plain integers and arrays; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: the pointer and length describe `sll`, alive for the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// An Ethernet frame from `src` to `dst` with [`ETHERTYPE`] and `payload`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend(dst);
    f.extend(src);
    f.extend(ETHERTYPE);
    f.extend(payload);
    f
}

fn ip(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let mut shown = vec!["ip"];
    shown.extend(args);
    run_checked(cmd, &shown)
}

fn run_checked(mut cmd: Command, shown: &[&str]) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {shown:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_holds_a_tap_and_goes_away_on_drop() {
        let ns = crate::require!("netns::tests", Netns::new("selftest"));
        let name = ns.name().to_string();
        assert!(std::path::Path::new(&format!("/run/netns/{name}")).exists());
        ns.add_tap("vtstap0", "10.78.0.1/24").unwrap();
        let sock = ns.run(|| packet_socket("vtstap0"));
        assert!(sock.is_ok(), "{sock:?}");
        assert!(ns.exec(&["ip", "link", "show", "vtstap0"]).is_ok());
        let e = ns.exec(&["ip", "link", "show", "nosuchdev0"]).unwrap_err();
        assert!(e.contains("nosuchdev0"), "{e}");
        // Not in the host's namespace.
        assert!(packet_socket("vtstap0").is_err());
        drop(sock);
        drop(ns);
        assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }

    #[test]
    fn frames_have_the_test_ethertype() {
        let f = ethernet([1; 6], [2; 6], b"x");
        assert_eq!(f, [&[1u8; 6][..], &[2; 6], &ETHERTYPE, b"x"].concat());
    }
}
