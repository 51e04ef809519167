#!/usr/bin/env bash
# Set up and run: build Vireo, build the Debian test guest, boot it.
#
#   scripts/demo.sh [extra vireo run options, e.g. --cpus 2 --memory 512M]
#
# The guest prints its init lines and VIREO-GUEST-OK, then reboots, which ends the VM
# (vireo exits 0). For a shell in the guest:
#   VIREO_CMDLINE="console=ttyS0 reboot=k vireo.shell" scripts/demo.sh
# Where this host's KVM is incomplete (`vireo probe-kvm` says kvm=incomplete: a nested KVM
# without the instructions Linux needs), the demo says so and runs the same command in
# the nested test host (scripts/nested-host.sh: an L1 Linux under QEMU's software CPU,
# whose KVM is complete), installing QEMU first if needed.
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
run=(target/release/vireo run
    --kernel "$guest/bzImage"
    --initrd "$guest/initrd.gz"
    --cmdline "${VIREO_CMDLINE:-console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=-1}"
    "$@")
probe=$(target/release/vireo probe-kvm 2>/dev/null || true)
if [[ $probe == *kvm=complete* ]]; then
    exec "${run[@]}"
fi
echo "demo: this host's KVM is incomplete ($probe): a Linux guest cannot boot on it directly." >&2
echo "demo: running the demo in the nested test host (scripts/nested-host.sh) instead." >&2
if ! command -v qemu-system-x86_64 >/dev/null; then
    scripts/install-qemu.sh
fi
exec scripts/nested-host.sh --timeout 600 -- "${run[@]}"
