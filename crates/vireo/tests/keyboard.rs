//! `PUT /actions {"action_type": "SendCtrlAltDel"}` on real KVM (layer 2), with the `kbd`
//! guest (crates/test-guests/guests/kbd.s): it probes the i8042 (self-test, keyboard
//! reset), takes IRQ 1 through the IOAPIC, prints "kbd ready", then prints every scan
//! code its interrupt handler reads and resets once Delete is released. So the console
//! shows exactly what Vireo's i8042 delivered, and the process ends as a guest reset
//! does: exit code 0.

mod common;

use std::time::{Duration, Instant};

use common::http::{Vireo, bad, ok};
use test_guests::expected;

const CTRL_ALT_DEL: &str = r#"{"action_type": "SendCtrlAltDel"}"#;

fn serial_text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Wait for `done` on the console (20 s at most); a line starting "kbd:" is the guest
/// reporting a failed step.
fn wait_for_console(path: &str, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = serial_text(path);
        assert!(!text.contains("kbd:"), "the guest failed: {text:?}");
        if done(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; console: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn send_ctrl_alt_del_reaches_the_guest_keyboard_and_it_resets() {
    let mut vm = Vireo::start("kbd", &[]);
    let mut c = vm.client();
    let serial = vm.path("serial");

    // Before the start: Firecracker's refusal.
    bad(
        c.put("/actions", CTRL_ALT_DEL),
        "before starting the microVM",
    );

    common::http::boot_guest(&mut c, test_guests::KBD, &serial);
    wait_for_console(&serial, "\"kbd ready\"", |t| t == expected::KBD_READY);
    ok(c.put("/actions", CTRL_ALT_DEL));

    // The guest printed the scan codes and reset: vireo exits 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = vm.child.try_wait().expect("wait for vireo") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "vireo still running; console: {:?}",
            serial_text(&serial)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(serial_text(&serial), expected::KBD_CTRL_ALT_DEL);
    assert_eq!(status.code(), Some(0), "{status}");
}
