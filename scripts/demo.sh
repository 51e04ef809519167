#!/usr/bin/env bash
# Set up and run: build Vireo, build the Debian test guest, boot it.
#
#   scripts/demo.sh [extra vireo run options, e.g. --cpus 2 --memory 512M]
#
# The guest prints its init lines and VIREO-GUEST-OK, then reboots, which ends the VM
# (vireo exits 0). For a shell in the guest:
#   VIREO_CMDLINE="console=ttyS0 reboot=k vireo.shell" scripts/demo.sh
# On a host whose KVM is emulated, vireo says so and Linux stops early (TESTING.md);
# earlycon shows the kernel's lines up to that point.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if ! command -v as >/dev/null || ! command -v cc >/dev/null; then
    apt-get update -q && apt-get install -y -q binutils gcc
fi
command -v cargo >/dev/null || {
    echo "demo: cargo not found; install Rust 1.95+ (https://rustup.rs) first" >&2
    exit 1
}

cargo build --release -p vireo
guest=$(scripts/guest-image.sh)
exec target/release/vireo run \
    --kernel "$guest/bzImage" \
    --initrd "$guest/initrd.gz" \
    --cmdline "${VIREO_CMDLINE:-console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=-1}" \
    "$@"
