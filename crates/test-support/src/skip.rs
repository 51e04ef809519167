//! The skip policy: what a test does when something it needs is missing.
//!
//! A test that returns early still counts as passed in cargo's report, so a missing
//! prerequisite must never be silent:
//!
//! - under `CI=true` (or `CI=1`: CI installs everything, so a missing prerequisite is a
//!   broken machine) [`missing`] panics with the reason: the test fails;
//! - elsewhere it prints `SKIP <test>: <why>` to stderr and, when `VIREO_SKIP_LOG` names
//!   a file, appends the line `<test>: <why>` to it (one `write` of the whole line, in
//!   append mode, so tests running in parallel do not interleave); the test then returns.
//!   `scripts/test.sh` sets `VIREO_SKIP_LOG` and lists the skips at its end.
//!
//! Tests call it through [`crate::require!`], with the checks below ([`root`],
//! [`tool`], [`file`]) or any `Result<_, String>` / condition of their own.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable naming the file skips are appended to.
pub const LOG_VAR: &str = "VIREO_SKIP_LOG";

/// Whether this is a CI run (`CI=true` or `CI=1`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Report that `test` cannot run because `why`: panics under CI (see the module docs),
/// otherwise prints and logs the skip and returns, and the caller returns.
pub fn missing(test: &str, why: &str) {
    #[cfg(test)]
    if tests::captured(test, why) {
        return;
    }
    report(
        test,
        why,
        in_ci(),
        std::env::var_os(LOG_VAR).map(PathBuf::from).as_deref(),
    );
}

fn report(test: &str, why: &str, ci: bool, log: Option<&Path>) {
    // One line per skip, whatever the reason's text.
    let why = why.replace(['\n', '\r'], " ");
    if ci {
        panic!("{test}: a prerequisite is missing and CI=true forbids skipping: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(path) = log {
        let line = format!("{test}: {why}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!(
                "SKIP {test}: (cannot append to {LOG_VAR}={}: {e})",
                path.display()
            );
        }
    }
}

/// The name libtest gave the running test (its thread's name, such as
/// `tests::requests::flush`), for reports from shared helpers that are not told it.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// `Ok` when running as root (`euid` 0).
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("needs root".into())
    }
}

/// Where `cmd` is on `PATH`, if it is.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

/// The path of `cmd` on `PATH`, or why not (naming the Debian `package` that has it).
pub fn tool(cmd: &str, package: &str) -> Result<PathBuf, String> {
    which(cmd).ok_or_else(|| format!("{cmd} is not installed (Debian package {package})"))
}

/// `Ok` if `path` exists.
pub fn file(path: impl AsRef<Path>) -> Result<(), String> {
    let path = path.as_ref();
    if path.exists() {
        Ok(())
    } else {
        Err(format!("no {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_appends_one_line_to_the_log() {
        let log = std::env::temp_dir().join(format!("test-support-skip-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        report("one", "no tool", false, Some(&log));
        report("two", "two\nlines", false, Some(&log));
        report("three", "no log", false, None);
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(text, "one: no tool\ntwo: two lines\n");
    }

    #[test]
    #[should_panic(expected = "ci_test: a prerequisite is missing")]
    fn under_ci_a_skip_fails_the_test() {
        report("ci_test", "no tool", true, None);
    }

    thread_local! {
        /// Skips `missing` was told of on this thread, when a test captures them.
        static CAPTURE: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
    }

    /// Whether this thread captures skips (and so `missing` neither panics nor logs).
    pub(super) fn captured(test: &str, why: &str) -> bool {
        CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(v) => {
                v.push(format!("{test}: {why}"));
                true
            }
            None => false,
        })
    }

    #[test]
    fn require_returns_early_or_yields_the_value() {
        fn run(ok: bool, flag: &mut u32) {
            let v: u32 = crate::require!("t", if ok { Ok(7) } else { Err("no") });
            crate::require!("t", v == 7, "v is {}", v);
            *flag = v;
        }
        CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let mut flag = 0;
        run(false, &mut flag);
        assert_eq!(flag, 0, "returned early");
        run(true, &mut flag);
        assert_eq!(flag, 7);
        let skips = CAPTURE.with(|c| c.borrow_mut().take()).unwrap();
        assert_eq!(skips, ["t: no"]);
    }

    #[test]
    fn checks_say_what_is_missing() {
        assert!(which("sh").is_some());
        let e = tool("no-such-tool-here", "nothing").unwrap_err();
        assert_eq!(
            e,
            "no-such-tool-here is not installed (Debian package nothing)"
        );
        assert_eq!(file("/no/such/file").unwrap_err(), "no /no/such/file");
        assert!(file("/").is_ok());
    }
}
