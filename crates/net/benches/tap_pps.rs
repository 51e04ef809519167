//! Packets per second and Gb/s through the net worker between two real TAPs.
//!
//! In a network namespace made for the run, two TAPs (`vbench0`, `vbench1`) are ports of
//! a bridge. Worker A transmits frames from its tx ring into `vbench0`; the bridge
//! floods them to `vbench1`, where worker B receives them into its rx ring. The bench
//! drives both workers directly from one thread (no guest, no worker threads), refilling
//! the rings as a driver would, and reports what B received. Needs root, `/dev/net/tun`
//! and `ip` (test-support's `Netns`); otherwise it prints why and exits.
//!
//! `cargo bench -p net --bench tap_pps [-- SECONDS]` (default 2 s per frame size).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{WRITE, rings};
use net::{NET_HDR_LEN, NetMetrics, NetWorker, Tap};
use rate_limiter::RateLimiter;
use test_support::netns::Netns;
use virtio_devices::device::DeviceWorker;
use virtio_devices::testing::{TestInterrupt, guest_memory};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = common::QSIZE;
const RX_BUF: u32 = 2048;

fn setup() -> Result<(Netns, Tap, Tap), String> {
    let ns = Netns::new("bench")?;
    let _ = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    let (a, b) = ns.run(|| -> Result<(Tap, Tap), String> {
        let a = Tap::open("vbench0").map_err(|e| e.to_string())?;
        let b = Tap::open("vbench1").map_err(|e| e.to_string())?;
        Ok((a, b))
    })?;
    ns.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
    for tap in ["vbench0", "vbench1"] {
        ns.exec(&["ip", "link", "set", tap, "master", "br0"])?;
    }
    for dev in ["br0", "vbench0", "vbench1"] {
        ns.exec(&["ip", "link", "set", dev, "up"])?;
    }
    Ok((ns, a, b))
}

fn run(a: &mut NetWorker<Tap>, b: &mut NetWorker<Tap>, frame_len: usize, secs: f64) {
    let mem = guest_memory(64 << 20);
    let irq = TestInterrupt::default();
    let mut a_tx = rings(&mem, 0x10_0000);
    let a_rx = rings(&mem, 0x11_0000);
    let mut b_rx = rings(&mem, 0x12_0000);
    let b_tx = rings(&mem, 0x13_0000);
    let mut a_q: Vec<Queue> = vec![a_rx.queue(), a_tx.queue()];
    let mut b_q: Vec<Queue> = vec![b_rx.queue(), b_tx.queue()];
    // A's rx queue is left unready: A only transmits.
    a_q[0] = Queue::new(QSIZE).unwrap();

    let mut frame = vec![0u8; NET_HDR_LEN + frame_len];
    frame[NET_HDR_LEN..NET_HDR_LEN + 6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    frame[NET_HDR_LEN + 6..NET_HDR_LEN + 12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]);
    frame[NET_HDR_LEN + 12..NET_HDR_LEN + 14].copy_from_slice(&[0x88, 0xb5]);
    for i in 0..u64::from(QSIZE) {
        let at = 0x100_0000 + i * 0x1_0000;
        mem.write_slice(&frame, GuestAddress(at)).unwrap();
        a_tx.add_chain(&[(at, frame.len() as u32, 0)]);
        b_rx.add_chain(&[(0x200_0000 + i * 0x1000, RX_BUF, WRITE)]);
    }
    let (mut a_seen, mut b_seen) = (0u16, 0u16);
    let rx0 = b.metrics().rx_packets_count.get();
    let tx0 = a.metrics().tx_packets_count.get();
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        {
            let mut qs: Vec<&mut Queue> = a_q.iter_mut().collect();
            a.process_queue(1, &mut qs, mem.as_ref(), &irq).unwrap();
        }
        let used = a_tx.used_idx();
        while a_seen != used {
            a_tx.publish(a_tx.used_elem(a_seen).0 as u16);
            a_seen = a_seen.wrapping_add(1);
        }
        {
            let mut qs: Vec<&mut Queue> = b_q.iter_mut().collect();
            b.process_extra(0, &mut qs, mem.as_ref(), &irq).unwrap();
            b.process_queue(0, &mut qs, mem.as_ref(), &irq).unwrap();
        }
        let used = b_rx.used_idx();
        while b_seen != used {
            b_rx.publish(b_rx.used_elem(b_seen).0 as u16);
            b_seen = b_seen.wrapping_add(1);
        }
    }
    let t = start.elapsed().as_secs_f64();
    let rx = b.metrics().rx_packets_count.get() - rx0;
    let tx = a.metrics().tx_packets_count.get() - tx0;
    println!(
        "frame {frame_len:>5} B: tx {:>8.0} pps, rx {:>8.0} pps, {:>6.3} Gb/s received \
         ({tx} sent, {rx} received in {t:.2} s)",
        tx as f64 / t,
        rx as f64 / t,
        rx as f64 * frame_len as f64 * 8.0 / t / 1e9,
    );
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2.0);
    let (ns, tap_a, tap_b) = match setup() {
        Ok(v) => v,
        Err(why) => {
            println!("tap_pps: skipped: {why}");
            return;
        }
    };
    let new = |tap| {
        NetWorker::new(
            tap,
            RateLimiter::unlimited(),
            RateLimiter::unlimited(),
            0,
            Arc::new(NetMetrics::default()),
        )
        .unwrap()
    };
    let mut a = new(tap_a);
    let mut b = new(tap_b);
    println!("tap_pps: TAP -> bridge -> TAP, one thread driving both workers");
    for len in [60, 1514] {
        run(&mut a, &mut b, len, secs);
    }
    drop((a, b));
    drop(ns);
}
