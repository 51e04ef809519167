#!/usr/bin/env bash
# Figures for issue 9: boot time of the Debian test guest to its /init and to
# VIREO-GUEST-OK under vireo (PVH vmlinux, bzImage), side by side in the same run with
# QEMU's microvm machine (-accel kvm) booting the same kernels and initrd; plus the
# nested test host's own start-up time. Where this host's KVM is complete the race runs
# directly; elsewhere inside the nested test host (the ratio is what matters there).
#   bench/nested-boot.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release -q -p vireo
guest=$(scripts/guest-image.sh)
probe=$(target/release/vireo probe-kvm 2>/dev/null)
echo "host: $probe"
if [[ $probe == *kvm=complete* ]]; then
    exec bench/lib/boot-race.sh "$PWD/target/release/vireo" "$guest" "$rounds"
fi
scripts/nested-host.sh --prepare >/dev/null
t0=${EPOCHREALTIME/./}
scripts/nested-host.sh --timeout 120 -- true
t1=${EPOCHREALTIME/./}
echo "nested host: boot, run \`true\`, power off: $(((t1 - t0) / 1000)) ms"
scripts/nested-host.sh --timeout 1200 -- bench/lib/boot-race.sh "$PWD/target/release/vireo" "$guest" "$rounds"
