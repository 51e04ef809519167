//! Layer 2: tiny guests, assembled by the project (crates/test-guests), booted by the real
//! `vireo` binary on real KVM. Each guest prints fixed lines on the serial port; the tests
//! compare them exactly and check how `vireo` ended.

mod common;

use std::time::Duration;

use common::{finish, run_guest, vireo};
use test_guests::expected;

#[test]
fn elf_64bit_entry_prints_and_resets() {
    let run = run_guest(test_guests::HELLO64, &[]);
    assert_eq!(run.stdout, expected::HELLO64, "stderr: {}", run.stderr);
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn pvh_entry_gets_start_info_and_cmdline() {
    let cmdline = "console=ttyS0 vireo.test=pvh";
    let run = run_guest(test_guests::HELLO_PVH, &["--cmdline", cmdline]);
    assert_eq!(
        run.stdout,
        expected::hello_pvh(cmdline),
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0));
}

#[test]
fn bzimage_64bit_entry_gets_the_zero_page() {
    let run = run_guest(test_guests::HELLO_BZIMAGE, &[]);
    assert_eq!(
        run.stdout,
        expected::HELLO_BZIMAGE,
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0));
}

#[test]
fn boot_cpu_wakes_the_second_vcpu_with_init_sipi() {
    let run = run_guest(test_guests::SMP, &["--cpus", "2"]);
    assert_eq!(run.stdout, expected::SMP, "stderr: {}", run.stderr);
    assert_eq!(run.code(), Some(0));
}

#[test]
fn acpi_s5_powers_off_cleanly() {
    let run = run_guest(test_guests::ACPI_POWEROFF, &[]);
    assert_eq!(
        run.stdout,
        expected::ACPI_POWEROFF,
        "stderr: {}",
        run.stderr
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
}

#[test]
fn triple_fault_stops_with_registers_logged() {
    let run = run_guest(test_guests::TRIPLE_FAULT, &[]);
    assert_eq!(run.stdout, expected::TRIPLE_FAULT);
    assert_eq!(run.code(), Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr.contains("guest triple fault on vcpu0"),
        "{}",
        run.stderr
    );
    for register in ["rip=0x", "rsp=0x", "rflags=0x", "cr3=0x9000", "efer=0x500"] {
        assert!(
            run.stderr.contains(register),
            "no {register} in:\n{}",
            run.stderr
        );
    }
}

#[test]
fn kvm_internal_error_stops_with_the_reason_and_registers() {
    let run = run_guest(test_guests::MMIO_EXEC, &[]);
    assert_eq!(run.stdout, "jumping into MMIO\n");
    assert_eq!(run.code(), Some(2), "stderr: {}", run.stderr);
    assert!(
        run.stderr
            .contains("vireo: vcpu0: KVM internal error 1: instruction emulation failed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("rip=0x00000000d0000000"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_ports_and_mmio_read_all_ones_and_are_logged_once() {
    let run = run_guest(test_guests::PORTS, &["--log-level", "info"]);
    assert_eq!(run.stdout, expected::PORTS, "stderr: {}", run.stderr);
    assert_eq!(run.code(), Some(0));
    for addr in ["port 0x1234", "port 0x5678", "MMIO address 0xd0000000"] {
        let times = run.stderr.matches(addr).count();
        assert_eq!(times, 1, "{addr} logged {times} times:\n{}", run.stderr);
    }
    // The ports Vireo answers itself are not "unhandled".
    for owned in [
        "port 0xcf8",
        "port 0xcfc",
        "port 0x80 ",
        "port 0x70",
        "port 0x71",
    ] {
        assert!(
            !run.stderr.contains(owned),
            "{owned} reported unhandled:\n{}",
            run.stderr
        );
    }
}

#[test]
fn serial_to_a_file() {
    let dir = std::env::temp_dir().join(format!("vireo-serial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("console.log");
    let serial = format!("file:{}", log.display());
    let run = run_guest(test_guests::HELLO64, &["--serial", &serial]);
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), expected::HELLO64);
    let run = run_guest(test_guests::HELLO64, &["--serial", "none"]);
    assert_eq!((run.code(), run.stdout.as_str()), (Some(0), ""));
}

#[test]
fn sigterm_and_sigint_stop_a_running_guest_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let kernel = test_guests::path(test_guests::COUNT);
        let child = vireo(&[
            "--log-level",
            "info",
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
        // The counting guest never stops by itself; let it print a little first.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let run = finish(child, Duration::from_secs(5));
        assert_eq!(run.code(), Some(0), "signal {signal}: {}", run.stderr);
        assert!(run.stdout.contains('.'), "the guest ran: {:?}", run.stdout);
        assert!(
            run.stderr.contains(&format!("stopped on signal {signal}")),
            "{}",
            run.stderr
        );
    }
}

/// The idle guest halts with interrupts off: its vCPU thread sleeps in KVM (state S, not
/// running) and SIGTERM still stops the VM at once, waking the halted vCPU.
#[test]
fn a_halted_guest_sleeps_in_kvm_and_stops_on_sigterm() {
    let kernel = test_guests::path(test_guests::IDLE);
    let child = vireo(&["run", "--kernel", kernel.to_str().unwrap()])
        .spawn()
        .unwrap();
    let vcpu0 = || {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .ok()?
            .filter_map(Result::ok)
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "vcpu0")
            })
            .map(|t| t.path().join("stat"))
    };
    // The state is the field after the parenthesised name.
    let state = |stat: &std::path::Path| {
        let text = std::fs::read_to_string(stat).unwrap_or_default();
        text.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
    };
    let start = std::time::Instant::now();
    let mut states = Vec::new();
    while states.len() < 20 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(25));
        if let Some(s) = vcpu0().as_deref().and_then(state) {
            states.push(s);
        }
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = finish(child, Duration::from_secs(5));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, test_guests::IDLE_OUTPUT, "{}", run.stderr);
    // The first samples may fall before the guest halted (while it prints).
    assert!(states.len() >= 20, "vcpu0 seen {} times", states.len());
    assert!(
        states[10..].iter().all(|&s| s == 'S'),
        "vcpu0 states: {states:?}"
    );
}

#[test]
fn threads_are_named_and_a_guest_above_4gib_boots() {
    // 5 GiB: RAM below the MMIO hole and again from 4 GiB; reserved lazily, so cheap.
    let run = run_guest(test_guests::HELLO64, &["--memory", "5G"]);
    assert_eq!(
        (run.stdout.as_str(), run.code()),
        (expected::HELLO64, Some(0)),
        "{}",
        run.stderr
    );

    let kernel = test_guests::path(test_guests::COUNT);
    let child = vireo(&["run", "--kernel", kernel.to_str().unwrap(), "--cpus", "2"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let run = finish(child, Duration::from_secs(5));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    for thread in ["fc_vcpu 0", "fc_vcpu 1", "event-loop"] {
        assert!(
            names.iter().any(|n| n == thread),
            "no {thread} thread in {names:?}"
        );
    }
}

/// `vireo probe-kvm` and the start-up notice of `vireo run` come from one capability
/// probe: a run warns exactly when probe-kvm says `kvm=incomplete`, naming the same
/// instructions; the speed figure is reported apart from the verdict.
#[test]
fn probe_kvm_and_the_start_up_notice_agree() {
    let probe = common::run(&["probe-kvm", "--iterations", "1000"]);
    assert_eq!(probe.code(), Some(0), "{}", probe.stderr);
    let line = probe.stdout.trim();
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key).and_then(|f| f.strip_prefix('=')))
            .map(str::to_string)
    };
    let verdict = field("kvm").expect("kvm=...");
    assert!(
        matches!(field("speed").as_deref(), Some("hardware" | "emulated")),
        "{line}"
    );
    assert!(field("ns_per_iteration").is_some(), "{line}");

    // The counting guest runs until stopped: long enough for the probe thread (50 ms in).
    let kernel = test_guests::path(test_guests::COUNT);
    let child = vireo(&["run", "--kernel", kernel.to_str().unwrap()])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = finish(child, Duration::from_secs(5));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let warnings = run.stderr.matches("KVM is incomplete").count();
    match verdict.as_str() {
        "complete" => {
            assert_eq!(warnings, 0, "{}", run.stderr);
            assert!(probe.stderr.is_empty(), "{}", probe.stderr);
        }
        "incomplete" => {
            assert_eq!(warnings, 1, "said once: {}", run.stderr);
            let missing = field("missing").expect("missing=...");
            for id in missing.split(',') {
                assert!(
                    run.stderr.contains(&format!("`{id}")),
                    "{id}: {}",
                    run.stderr
                );
                assert!(
                    probe.stderr.contains(&format!("`{id}")),
                    "{id}: {}",
                    probe.stderr
                );
            }
            assert!(
                run.stderr.contains("scripts/nested-host.sh"),
                "{}",
                run.stderr
            );
        }
        other => panic!("kvm={other}: {line}"),
    }
}

/// The numbers of `Guest-boot-time = US us MS ms, CPU_US CPU us CPU_MS CPU ms`.
fn boot_time_figures(line: &str) -> Vec<u64> {
    line.split("Guest-boot-time = ")
        .nth(1)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

#[test]
fn the_boot_timer_logs_the_guests_boot_time_in_firecrackers_words() {
    let run = run_guest(
        test_guests::BOOT_TIMER,
        &["--boot-timer", "--log-level", "info"],
    );
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, expected::BOOT_TIMER, "stderr: {}", run.stderr);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("Guest-boot-time = "))
        .unwrap_or_else(|| panic!("no boot time logged: {}", run.stderr));
    let figures = boot_time_figures(line);
    assert_eq!(figures.len(), 4, "{line}");
    let (us, ms, cpu_us, cpu_ms) = (figures[0], figures[1], figures[2], figures[3]);
    assert!(
        us > 0 && ms == us / 1000 && cpu_ms == cpu_us / 1000,
        "{line}"
    );

    // Without the device the write goes nowhere: the guest runs the same, no line.
    let run = run_guest(test_guests::BOOT_TIMER, &["--log-level", "info"]);
    assert_eq!(run.code(), Some(0), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, expected::BOOT_TIMER);
    assert!(!run.stderr.contains("Guest-boot-time"), "{}", run.stderr);
}

/// Kernel page sizes of a process's mappings of at least `min_kib`: (size KiB, page KiB).
fn large_mappings(pid: u32, min_kib: u64) -> Vec<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut found = Vec::new();
    let mut size = 0;
    for line in smaps.lines() {
        let kib = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("Size:") {
            size = kib(line);
        } else if line.starts_with("KernelPageSize:") && size >= min_kib {
            found.push((size, kib(line)));
        }
    }
    found
}

#[test]
fn guest_memory_from_2_mib_huge_pages() {
    let test = "guest_memory_from_2_mib_huge_pages";
    test_support::require!(test, test_support::skip::root());
    let pool = test_support::require!(test, test_support::host::HugePool::grow(32));

    let kernel = test_guests::path(test_guests::COUNT);
    let args = [
        "run",
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        "32M",
    ];
    let child = vireo(&[&args[..], &["--huge-pages"]].concat())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut mappings = Vec::new();
    while mappings.is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        mappings = large_mappings(child.id(), 32 << 10);
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let run = finish(child, Duration::from_secs(5));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains('.'), "the guest ran: {:?}", run.stdout);
    assert!(
        mappings.iter().any(|&(_, page)| page == 2048),
        "no 32 MiB mapping of 2 MiB pages: {mappings:?}"
    );

    // Not a whole number of huge pages, or more than the pool holds: refused, plainly.
    let run = run_guest(test_guests::HELLO64, &["--memory", "33M", "--huge-pages"]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("2 MiB huge pages"), "{}", run.stderr);
    drop(pool);
    let (free, _) = vmm::memory::huge_pool();
    let too_many = format!("{}M", (free + 64) * 2);
    let run = run_guest(
        test_guests::HELLO64,
        &["--memory", &too_many, "--huge-pages"],
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("nr_hugepages"), "{}", run.stderr);
}
