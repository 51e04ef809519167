#!/usr/bin/env bash
# Inner part of bench/nested-boot.sh (runs inside the nested test host, or directly on a
# host with a complete KVM): boot the Debian test guest to its /init and to VIREO-GUEST-OK
# with vireo (PVH vmlinux, bzImage) and with QEMU's microvm machine under KVM (the same
# kernels, initrd and command line), ROUNDS times each, and print the medians.
#   bench/lib/boot-race.sh VIREO GUEST_DIR [ROUNDS]
set -euo pipefail
vireo=$1 guest=$2 rounds=${3:-3}
cmdline="console=ttyS0 reboot=k panic=-1"

# Run a command, read its stdout line by line; print "<ms to init> <ms to OK>".
time_boot() {
    local start now init=- ok=- line
    start=${EPOCHREALTIME/./}
    while IFS= read -r line; do
        now=${EPOCHREALTIME/./}
        [[ $init == - && $line == *"VIREO-GUEST: init started"* ]] && init=$(((now - start) / 1000))
        if [[ $line == *VIREO-GUEST-OK* ]]; then ok=$(((now - start) / 1000)); break; fi
    done < <(timeout 120 "$@" 2>/dev/null </dev/null)
    # The VMM may still be shutting down the guest: its own time is not measured.
    pkill -f -- "$guest/initrd.gz" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "$init $ok"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }

declare -A runner=(
    [vireo-pvh]="$vireo run --kernel $guest/vmlinux --initrd $guest/initrd.gz --memory 256 --cmdline"
    [vireo-bzimage]="$vireo run --kernel $guest/bzImage --initrd $guest/initrd.gz --memory 256 --cmdline"
    [qemu-microvm-pvh]="qemu-system-x86_64 -M microvm,rtc=on -accel kvm -cpu host -m 256 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel $guest/vmlinux -initrd $guest/initrd.gz -append"
    [qemu-microvm-bzimage]="qemu-system-x86_64 -M microvm,rtc=on -accel kvm -cpu host -m 256 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel $guest/bzImage -initrd $guest/initrd.gz -append"
)
order=(vireo-pvh qemu-microvm-pvh vireo-bzimage qemu-microvm-bzimage)
declare -A inits oks
for ((r = 1; r <= rounds; r++)); do
    for name in "${order[@]}"; do
        read -r -a cmd <<<"${runner[$name]}"
        read -r init ok < <(time_boot "${cmd[@]}" "$cmdline")
        inits[$name]+="$init "
        oks[$name]+="$ok "
    done
done
printf '%-22s %14s %20s   (%s rounds, ms)\n' runner "to /init" "to VIREO-GUEST-OK" "$rounds"
for name in "${order[@]}"; do
    printf '%-22s %14s %20s   all: init [%s] ok [%s]\n' "$name" \
        "$(tr ' ' '\n' <<<"${inits[$name]}" | grep -v '^-\?$' | median)" \
        "$(tr ' ' '\n' <<<"${oks[$name]}" | grep -v '^-\?$' | median)" \
        "${inits[$name]% }" "${oks[$name]% }"
done
