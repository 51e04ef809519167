//! Assembles and links the test guests in `guests/` with GNU `as` and `ld`.
//!
//! Each guest `guests/<name>.s` becomes `$OUT_DIR/<name>`: an ELF64
//! executable, or a raw binary for the bzImage guest, depending on the link
//! script it is linked with. `src/lib.rs` finds them through `OUT_DIR`.
//!
//! The tools can be overridden with `TEST_GUESTS_AS` / `TEST_GUESTS_LD`.

use std::env;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

/// Every guest: (name, link script). The source is `guests/<name>.s`.
/// Keep in sync with `ALL` in `src/lib.rs` (a unit test checks it).
const GUESTS: &[(&str, &str)] = &[
    ("hello64", "elf64.ld"),
    ("hello_pvh", "pvh.ld"),
    ("hello_bzimage", "bzimage.ld"),
    ("smp", "elf64.ld"),
    ("triple_fault", "elf64.ld"),
    ("ports", "elf64.ld"),
    ("count", "elf64.ld"),
    ("acpi_poweroff", "elf64.ld"),
    ("echo", "elf64.ld"),
    ("mmio_exec", "elf64.ld"),
    ("virtio_rng", "elf64.ld"),
    ("virtio_blk", "elf64.ld"),
    ("virtio_balloon", "elf64.ld"),
    ("kbd", "elf64.ld"),
    ("boot_timer", "elf64.ld"),
    ("idle", "elf64.ld"),
    ("vmgenid", "elf64.ld"),
    ("cpuid", "elf64.ld"),
    ("virtio_pmem", "elf64.ld"),
];

/// Files every guest depends on besides its own source and link script.
/// (`virtio.inc` is only included by the virtio guests; rebuilding all of them when it
/// changes is cheap.)
const SHARED: &[&str] = &["common.inc", "virtio.inc"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src_dir = manifest_dir.join("guests");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TEST_GUESTS_AS");
    println!("cargo:rerun-if-env-changed=TEST_GUESTS_LD");
    for f in SHARED {
        println!("cargo:rerun-if-changed=guests/{f}");
    }

    let as_tool = env::var("TEST_GUESTS_AS").unwrap_or_else(|_| "as".to_owned());
    let ld_tool = env::var("TEST_GUESTS_LD").unwrap_or_else(|_| "ld".to_owned());
    check_tool(&as_tool, "GNU assembler", "TEST_GUESTS_AS");
    check_tool(&ld_tool, "GNU linker", "TEST_GUESTS_LD");

    for (name, script) in GUESTS {
        let source = src_dir.join(format!("{name}.s"));
        let script = src_dir.join(script);
        println!("cargo:rerun-if-changed=guests/{name}.s");
        println!(
            "cargo:rerun-if-changed=guests/{}",
            script.file_name().unwrap().to_string_lossy()
        );

        let object = out_dir.join(format!("{name}.o"));
        let output = out_dir.join(name);

        // `--64`: x86-64 object (the sources switch to .code32/.code16 where
        // needed). `-I`: where `.include "common.inc"` looks.
        run(
            Command::new(&as_tool)
                .arg("--64")
                .arg("-I")
                .arg(&src_dir)
                .arg("-o")
                .arg(&object)
                .arg(&source),
            name,
        );
        // Static, non-PIE, no build-id; 4 KiB max page size keeps the file
        // small (segments at 2 MiB would otherwise be padded to 2 MiB in the
        // file). The link script sets addresses, program headers and format.
        run(
            Command::new(&ld_tool)
                .arg("-m")
                .arg("elf_x86_64")
                .arg("-static")
                .arg("-nostdlib")
                .arg("--build-id=none")
                .arg("-z")
                .arg("max-page-size=0x1000")
                .arg("-z")
                .arg("noexecstack")
                .arg("-T")
                .arg(&script)
                .arg("-o")
                .arg(&output)
                .arg(&object),
            name,
        );
    }

    // The list actually built, for the consistency test in src/lib.rs.
    let names: Vec<String> = GUESTS.iter().map(|(n, _)| format!("{n:?}")).collect();
    std::fs::write(
        out_dir.join("built_guests.rs"),
        format!("&[{}]\n", names.join(", ")),
    )
    .expect("write built_guests.rs");
}

/// Fails the build with a clear message if `tool` cannot be run.
fn check_tool(tool: &str, what: &str, var: &str) {
    match Command::new(tool).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "test-guests: `{tool} --version` failed ({}): the {what} is needed to build the \
             test guests. Install binutils (e.g. `apt-get install binutils`) or set {var}.\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!(
            "test-guests: cannot run `{tool}` ({e}): the {what} (GNU binutils) is needed to \
             build the test guests. Install binutils (e.g. `apt-get install binutils`) or set \
             {var} to its path."
        ),
    }
}

/// Runs a build step, failing the build with the tool's output on error.
fn run(cmd: &mut Command, guest: &str) {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("test-guests: cannot run `{shown}`: {e}"));
    if !out.status.success() {
        panic!(
            "test-guests: building guest `{guest}` failed ({}):\n  {shown}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Assembler warnings are easy to miss; pass them on.
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("cargo:warning={guest}: {line}");
    }
}
