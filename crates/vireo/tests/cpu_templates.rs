//! CPU templates through the API and `--config-file`, on real KVM (layer 2): the `cpuid`
//! guest (crates/test-guests/guests/cpuid.s) prints CPUID leaf 1 ECX/EDX, leaf 7.0
//! EBX/ECX/EDX and IA32_PAT as it sees them, and again for each byte it is sent.
//!
//! A custom template (`PUT /cpu-config`) sets CPUID bits the guest then sees, keeps the
//! host's where its bitmap says `x`, and clears and sets bits of an MSR's initial value;
//! the template comes back with a snapshot loaded in another process.
//!
//! CPUID bits a template clears are not checked here: this project's machines run
//! guests on a KVM that shows the guest the host's CPUID bits whatever the VMM set
//! (`KVM_GET_CPUID2` reads them back ORed in), so a cleared bit stays visible. The unit
//! tests of `vmm::arch::x86_64::cpu_template` check what Vireo gives KVM, and the
//! layer-4 test (`linux_guest.rs`, a real KVM in the nested host) that a Linux guest no
//! longer sees a flag a template hides. Malformed templates, aarch64
//! fields, leaves, MSRs and KVM capabilities the host lacks, static templates of the
//! other vendor or another CPU model, and a template after the start are refused with a
//! 400 that says why and changes nothing. `GET /vm/config` shows the template, and
//! `--config-file` takes it inline or as the path of a template file.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{Client, Vireo, bad, ok};
use common::{finish, vireo};
use test_guests::{CpuidReport, parse_cpuid_report};
use test_support::{require, skip};

/// Leaf 1 EDX: bit 30 (IA-64, which no x86-64 CPU has) set, the rest the host's.
const LEAF1_EDX: &str = "0bx1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// Leaf 7.0 EBX: the host's (a bitmap of `x` only, shorter than the register).
const LEAF7_EBX: &str = "0bxxxx_xxxx";
const IA64: u32 = 1 << 30;

/// The template the tests use: leaf 1 ECX all `x`, EDX and leaf 7.0 EBX as above, and
/// IA32_PAT's first entry write-combining (1) instead of write-back (6): bit 0 set, bits
/// 1 and 2 cleared.
fn template() -> String {
    format!(
        r#"{{
  "kvm_capabilities": ["!56"],
  "cpuid_modifiers": [
    {{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
      {{"register": "ecx", "bitmap": "0b{x32}"}},
      {{"register": "edx", "bitmap": "{LEAF1_EDX}"}}
    ]}},
    {{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [
      {{"register": "ebx", "bitmap": "{LEAF7_EBX}"}}
    ]}}
  ],
  "msr_modifiers": [{{"addr": "0x277", "bitmap": "0b0000_0001"}}]
}}"#,
        x32 = "x".repeat(32)
    )
}

/// What the template makes of the host's `base` report.
fn templated(base: &CpuidReport) -> CpuidReport {
    CpuidReport {
        leaf1_edx: base.leaf1_edx | IA64,
        pat: (base.pat & !0xff) | 1,
        ..*base
    }
}

fn wait_until<T>(what: &str, mut done: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The first report in the file `serial`, once it is whole.
fn report_in(serial: &str) -> CpuidReport {
    wait_until("the guest's report", || {
        let text = std::fs::read_to_string(serial).ok()?;
        parse_cpuid_report(&text).map(|(r, _)| r)
    })
}

/// Boot the cpuid guest through the API, its console in the file `serial`, with
/// `requests` (method, path, body) before InstanceStart.
fn boot_cpuid_guest(c: &mut Client, serial: &str, requests: &[(&str, &str, String)]) {
    let kernel = test_guests::path(test_guests::CPUID);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    for (method, path, body) in requests {
        ok(c.request(method, path, Some(body)));
    }
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
}

/// What the guest sees without a template, from a VM of its own (`name`).
fn host_report(name: &str) -> CpuidReport {
    let vm = Vireo::start(name, &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    boot_cpuid_guest(&mut c, &serial, &[]);
    report_in(&serial)
}

#[test]
fn a_custom_template_sets_clears_and_keeps_the_bits_the_guest_sees() {
    require!(
        "a_custom_template_sets_clears_and_keeps_the_bits_the_guest_sees",
        skip::file("/dev/kvm")
    );
    let base = host_report("cpuid-host-a");
    assert_eq!(base.leaf1_edx & IA64, 0, "no IA-64 bit: {base:?}");
    assert_eq!(base.pat & 0xff, 6, "PAT entry 0 is write-back at reset");

    let vm = Vireo::start("cpuid-template", &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    boot_cpuid_guest(&mut c, &serial, &[("PUT", "/cpu-config", template())]);
    let seen = report_in(&serial);
    assert_eq!(seen, templated(&base), "host {base:?}");

    // GET /vm/config shows the template as it was given (bitmaps written whole), and
    // no static one.
    let config = c.get("/vm/config").json();
    let shown = &config["cpu-config"];
    assert_eq!(shown["kvm_capabilities"], serde_json::json!(["!56"]));
    assert_eq!(
        shown["cpuid_modifiers"][0]["modifiers"][1]["bitmap"],
        LEAF1_EDX
    );
    assert_eq!(shown["cpuid_modifiers"][1]["leaf"], "0x7");
    assert_eq!(
        shown["cpuid_modifiers"][1]["modifiers"][0]["bitmap"],
        format!("0b{}", "x".repeat(32))
    );
    assert_eq!(shown["msr_modifiers"][0]["addr"], "0x277");
    assert_eq!(
        shown["msr_modifiers"][0]["bitmap"],
        format!("0b{}00000001", "x".repeat(56))
    );
    assert!(config["machine-config"].get("cpu_template").is_none());

    // Pre-boot only.
    bad(
        c.put("/cpu-config", "{}"),
        "not supported after starting the microVM",
    );
}

fn console(sock: &Path) -> UnixStream {
    let stream = wait_until("the console socket", || UnixStream::connect(sock).ok());
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

/// Read from the console until a whole report came.
fn read_report(stream: &mut UnixStream) -> CpuidReport {
    let mut text = String::new();
    let mut buf = [0u8; 256];
    loop {
        if let Some((r, _)) = parse_cpuid_report(&text) {
            return r;
        }
        let n = stream.read(&mut buf).expect("console output");
        assert!(n > 0, "console closed after {text:?}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn the_template_comes_back_with_a_snapshot() {
    require!(
        "the_template_comes_back_with_a_snapshot",
        skip::file("/dev/kvm")
    );
    let first = Vireo::start("cpuid-snap-a", &[]);
    let mut c = first.client();
    let sock = first.dir.join("console.sock");
    ok(c.put("/serial", &format!(r#"{{"socket": "{}"}}"#, sock.display())));
    let kernel = test_guests::path(test_guests::CPUID);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    ));
    ok(c.put("/cpu-config", &template()));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    let mut guest = console(&sock);
    let before = read_report(&mut guest);
    // A second look in the same VM: CPUID and RDMSR run again, same answers.
    guest.write_all(b"r").unwrap();
    assert_eq!(read_report(&mut guest), before);
    drop(guest);

    ok(c.patch("/vm", r#"{"state": "Paused"}"#));
    let state = first.path("state");
    let mem = first.path("mem");
    ok(c.put(
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{state}", "mem_file_path": "{mem}"}}"#),
    ));
    // The state file (the next process's) outlives this one.
    let keep = tempfile::tempdir().unwrap();
    let state_kept = keep.path().join("state");
    let mem_kept = keep.path().join("mem");
    std::fs::copy(&state, &state_kept).unwrap();
    std::fs::copy(&mem, &mem_kept).unwrap();
    drop(c);
    drop(first);

    let mut second = Vireo::start("cpuid-snap-b", &[]);
    let mut c = second.client();
    let sock = second.dir.join("console.sock");
    ok(c.put("/serial", &format!(r#"{{"socket": "{}"}}"#, sock.display())));
    ok(c.put(
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_type": "File", "backend_path": "{}"}}, "resume_vm": true}}"#,
            state_kept.display(),
            mem_kept.display()
        ),
    ));
    let mut guest = console(&sock);
    guest.write_all(b"r").unwrap();
    assert_eq!(read_report(&mut guest), before, "after the load");
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["cpu-config"]["cpuid_modifiers"][0]["modifiers"][1]["bitmap"], LEAF1_EDX,
        "{config}"
    );
    guest.write_all(b"q").unwrap();
    let status = wait_until("vireo to exit", || second.child.try_wait().unwrap());
    assert!(status.success(), "{status}");
}

#[test]
fn malformed_and_aarch64_templates_are_refused_and_change_nothing() {
    let vm = Vireo::start("cpuid-bad", &[]);
    let mut c = vm.client();
    ok(c.put(
        "/cpu-config",
        r#"{"kvm_capabilities": ["171"], "cpuid_modifiers": [], "msr_modifiers": []}"#,
    ));
    for (body, says) in [
        (
            r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b01z"}]}"#,
            "'z' is not 0, 1, x or _",
        ),
        (
            &format!(
                r#"{{"msr_modifiers": [{{"addr": "0x10a", "bitmap": "0b{}"}}]}}"#,
                "0".repeat(65)
            ),
            "more than 64 bits",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0b"}]}], "cpu_modifiers": []}"#,
            "unknown field `cpu_modifiers`",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "leaf1", "subleaf": "0", "flags": 0, "modifiers": []}]}"#,
            "invalid number 'leaf1'",
        ),
        (
            r#"{"kvm_capabilities": ["!x"]}"#,
            "invalid KVM capability '!x'",
        ),
        (
            r#"{"vcpu_features": [{"index": 0, "bitmap": "0b1100000"}]}"#,
            "CPU config error: vcpu_features is for aarch64 hosts",
        ),
        (
            r#"{"reg_modifiers": [{"addr": "0x603000000013c020", "bitmap": "0b1"}]}"#,
            "CPU config error: reg_modifiers is for aarch64 hosts",
        ),
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0", "flags": 8, "modifiers": []}]}"#,
            "flags 8 has bits KVM does not define",
        ),
    ] {
        bad(c.put("/cpu-config", body), says);
    }
    // The template from before each refusal is still the one set.
    let config = c.get("/vm/config").json();
    assert_eq!(
        config["cpu-config"]["kvm_capabilities"],
        serde_json::json!(["171"])
    );
    // Static templates by name: unknown or aarch64 ones refused, the deprecated field
    // answered with Deprecation, "None" dropping the custom template.
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "V1N1"}"#,
        ),
        "V1N1 is for aarch64 hosts",
    );
    bad(
        c.put(
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "T3"}"#,
        ),
        "unknown CPU template 'T3': C3, T2, T2S, T2CL, T2A or None.",
    );
    let r = c.put(
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "None"}"#,
    );
    assert!(r.head.contains("\r\nDeprecation: true"), "{}", r.head);
    ok(r);
    let config = c.get("/vm/config").json();
    assert!(config.get("cpu-config").is_none(), "{config}");
    assert!(config["machine-config"].get("cpu_template").is_none());
    ok(c.patch("/machine-config", r#"{"cpu_template": "T2S"}"#));
    assert_eq!(c.get("/machine-config").json()["cpu_template"], "T2S");
    // A PUT without cpu_template keeps it (Firecracker's rule).
    ok(c.put(
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    ));
    assert_eq!(c.get("/machine-config").json()["cpu_template"], "T2S");
}

/// Start the cpuid guest with `template` (a `PUT /cpu-config` body, or `None` with a
/// `machine` config) and expect InstanceStart to be refused saying `says`; then the
/// same process starts the guest once a good template replaces it.
fn refused_at_start(name: &str, cpu_config: Option<&str>, machine: &str, says: &str) {
    let vm = Vireo::start(name, &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");
    let kernel = test_guests::path(test_guests::CPUID);
    ok(c.put(
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
    ));
    ok(c.put("/machine-config", machine));
    ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
    if let Some(t) = cpu_config {
        ok(c.put("/cpu-config", t));
    }
    let r = c.put("/actions", r#"{"action_type": "InstanceStart"}"#);
    bad(r, says);
    assert_eq!(c.get("/").json()["state"], "Not started");
    // Nothing was started: a good template now boots.
    ok(c.put("/cpu-config", &template()));
    ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
    report_in(&serial);
}

const SMALL: &str = r#"{"vcpu_count": 1, "mem_size_mib": 32}"#;

#[test]
fn what_the_host_lacks_is_refused_at_instance_start() {
    require!(
        "what_the_host_lacks_is_refused_at_instance_start",
        skip::file("/dev/kvm")
    );
    refused_at_start(
        "cpuid-leaf",
        Some(
            r#"{"cpuid_modifiers": [{"leaf": "0x4fffff00", "subleaf": "0x3", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0b1"}]}]}"#,
        ),
        SMALL,
        "Start microvm error: the CPU template changes CPUID leaf 0x4fffff00 subleaf 0x3, \
         which this host's KVM does not offer",
    );
    refused_at_start(
        "cpuid-msr",
        Some(r#"{"msr_modifiers": [{"addr": "0xdead0000", "bitmap": "0b1"}]}"#),
        SMALL,
        "vCPU 0: the CPU template changes MSR 0xdead0000, which this host's KVM does not offer",
    );
    refused_at_start(
        "cpuid-cap",
        Some(r#"{"kvm_capabilities": ["4000000"]}"#),
        SMALL,
        "KVM lacks the capability 4000000, which the CPU template's kvm_capabilities requires",
    );
    // EFER with a reserved bit (62): KVM refuses the value.
    refused_at_start(
        "cpuid-msr-value",
        Some(&format!(
            r#"{{"msr_modifiers": [{{"addr": "0xc0000080", "bitmap": "0b1{}"}}]}}"#,
            "x".repeat(62)
        )),
        SMALL,
        "KVM refused 0x4000000000000000 for MSR 0xc0000080, the value the CPU template gives it",
    );
}

/// The host's vendor and CPU model, as /proc/cpuinfo names them.
fn host_cpu() -> (String, u32, u32, u32) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let num = |name: &str| field(name).parse::<u32>().unwrap_or(u32::MAX);
    (
        field("vendor_id"),
        num("cpu family"),
        num("model"),
        num("stepping"),
    )
}

/// Firecracker's rule: an Intel template on an AMD host and the reverse are refused, and
/// so is a template on a CPU model it was not made for.
#[test]
fn static_templates_need_their_vendor_and_cpu_model() {
    require!(
        "static_templates_need_their_vendor_and_cpu_model",
        skip::file("/dev/kvm")
    );
    let (vendor, family, model, stepping) = host_cpu();
    let intel = vendor == "GenuineIntel";
    require!(
        "static_templates_need_their_vendor_and_cpu_model",
        intel || vendor == "AuthenticAMD",
        "an Intel or AMD host (this one: {vendor})"
    );
    let machine =
        |t: &str| format!(r#"{{"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "{t}"}}"#);
    // The other vendor's template.
    let (other, wanted, host_name) = if intel {
        ("T2A", "AMD", "GenuineIntel")
    } else {
        ("T2", "Intel", "AuthenticAMD")
    };
    refused_at_start(
        "cpuid-vendor",
        None,
        &machine(other),
        &format!("CPU template {other} is for {wanted} CPUs; this host's CPU is {host_name}"),
    );
    // One of this vendor's, on a model it was made for or not.
    let (own, models): (&str, &[(u32, u32, u32)]) = if intel {
        ("T2S", &[(6, 0x55, 4), (6, 0x55, 7)])
    } else {
        ("T2A", &[(0x19, 0x01, 1)])
    };
    if models.contains(&(family, model, stepping)) {
        let vm = Vireo::start("cpuid-own", &[]);
        let mut c = vm.client();
        let serial = vm.path("serial");
        ok(c.put("/serial", &format!(r#"{{"serial_out_path": "{serial}"}}"#)));
        let kernel = test_guests::path(test_guests::CPUID);
        ok(c.put(
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
        ));
        ok(c.put("/machine-config", &machine(own)));
        ok(c.put("/actions", r#"{"action_type": "InstanceStart"}"#));
        let seen = report_in(&serial);
        assert_eq!(seen.leaf7_ebx & (1 << 16), 0, "AVX-512F hidden: {seen:?}");
    } else {
        refused_at_start(
            "cpuid-model",
            None,
            &machine(own),
            &format!(
                "CPU template {own} is for {}; this host's CPU (family {family:#x}, model \
                 {model:#x}, stepping {stepping}) is none of them",
                if intel {
                    "Skylake, Cascade Lake"
                } else {
                    "Milan"
                }
            ),
        );
    }
}

/// `--config-file` with the template inline, or (as Firecracker takes it) the path of a
/// template file; `GET /vm/config` gives it back inline.
#[test]
fn config_file_takes_the_template_inline_or_as_a_file() {
    require!(
        "config_file_takes_the_template_inline_or_as_a_file",
        skip::file("/dev/kvm")
    );
    let base = host_report("cpuid-host-b");
    let dir = tempfile::tempdir().unwrap();
    let template_file = dir.path().join("template.json");
    std::fs::write(&template_file, template()).unwrap();
    let inline: serde_json::Value = serde_json::from_str(&template()).unwrap();
    for (name, cpu_config) in [
        ("inline", inline),
        (
            "file",
            serde_json::Value::String(template_file.display().to_string()),
        ),
    ] {
        let serial = dir.path().join(format!("{name}.serial"));
        let config = serde_json::json!({
            "boot-source": {"kernel_image_path": test_guests::path(test_guests::CPUID)},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
            "serial": {"serial_out_path": serial},
            "cpu-config": cpu_config,
        });
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, config.to_string()).unwrap();
        let sock = dir.path().join(format!("{name}.sock"));
        let child = vireo(&[
            "--api-sock",
            sock.to_str().unwrap(),
            "--config-file",
            file.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
        let seen = report_in(serial.to_str().unwrap());
        assert_eq!(seen, templated(&base), "{name}");
        let mut c = Client::connect(&sock);
        let shown = c.get("/vm/config").json();
        assert_eq!(
            shown["cpu-config"]["cpuid_modifiers"][0]["modifiers"][1]["bitmap"], LEAF1_EDX,
            "{name}: {shown}"
        );
        // The document GET /vm/config gives boots the same VM.
        let again = dir.path().join(format!("{name}.again.json"));
        let mut doc = shown.clone();
        let serial_again = dir.path().join(format!("{name}.again.serial"));
        doc["serial"] = serde_json::json!({"serial_out_path": serial_again});
        std::fs::write(&again, doc.to_string()).unwrap();
        let mut child2 = vireo(&["--no-api", "--config-file", again.to_str().unwrap()])
            .spawn()
            .unwrap();
        assert_eq!(report_in(serial_again.to_str().unwrap()), seen, "{name}");
        let _ = child2.kill();
        let _ = child2.wait();
        drop(c);
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    // A template file that is not there: vireo says which, and does not start.
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": test_guests::path(test_guests::CPUID)},
        "cpu-config": "/nonexistent/template.json",
    });
    let file = dir.path().join("missing.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let run = finish(
        vireo(&["--no-api", "--config-file", file.to_str().unwrap()])
            .spawn()
            .unwrap(),
        Duration::from_secs(10),
    );
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cpu-config: cannot read /nonexistent/template.json"),
        "{}",
        run.stderr
    );
}
