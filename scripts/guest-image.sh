#!/usr/bin/env bash
# Build the Linux test guest used by Vireo's Layer 3 and Layer 4 tests
# (see TESTING.md): a stock Debian cloud kernel plus a tiny busybox initramfs.
#
# Everything comes from Debian packages; nothing is installed into the host
# system except the small tools this script needs (cpio, lz4, ...), and only
# when they are missing.
#
# Outputs, in ${VIREO_GUEST_DIR:-$HOME/.cache/vireo/guest}:
#   bzImage    the kernel as Debian ships it (/boot/vmlinuz-*)
#   vmlinux    the uncompressed ELF kernel extracted from bzImage (for PVH boot)
#   initrd.gz  gzip'd newc cpio: static busybox, the virtio (and pmem) modules, /init
#   manifest   key=value lines: packages, versions, compression, PVH note,
#              sha256 of every output
#
# Usage: scripts/guest-image.sh            build if needed, print the guest dir
#        VIREO_GUEST_REBUILD=1 scripts/guest-image.sh   force a rebuild
# Progress goes to stderr; stdout gets exactly one line, the guest dir, so
#   GUEST_DIR=$(scripts/guest-image.sh)
# works. A second run with complete outputs does nothing but check them.
#
# The guest's /init (see write_init below) understands, on the kernel command
# line:
#   (nothing)       load modules, print VIREO-GUEST-OK, `reboot -f` (with the
#                   VMM's `reboot=k` Linux resets through the i8042 -> VMM exits)
#   vireo.poweroff  same, but end with `poweroff -f`
#   vireo.shell     interactive shell on the console instead of ending the VM
# and runs /vireo/test.sh, if present, before the marker (a test can append a
# second gzip'd cpio carrying that file: `cat initrd.gz extra.cpio.gz`).
set -euo pipefail

GUEST_DIR=${VIREO_GUEST_DIR:-${HOME:-/root}/.cache/vireo/guest}
KERNEL_META=linux-image-cloud-amd64
BUSYBOX_PKG=busybox-static
OUTPUTS=(bzImage vmlinux initrd.gz)

# Virtio modules to put in the initramfs, in a load order that works
# (Debian's package has no modules.dep, so dependencies come first by hand);
# virtio_pmem needs the NVDIMM core (libnvdimm, nd_virtio) and nd_pmem (with its
# nd_btt) to give /dev/pmemN.
MODULES=(
    virtio_ring virtio virtio_mmio
    virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
    virtio_blk
    failover net_failover virtio_net
    virtio-rng
    vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
    virtio_balloon
    libnvdimm nd_btt nd_pmem nd_virtio virtio_pmem
)

# The recipe id is the hash of this script and its library: any change to it (to /init, the
# module list, ...) makes the cached guest stale and triggers a rebuild.
LIB=$(dirname "${BASH_SOURCE[0]}")/lib/debian-initramfs.sh
# shellcheck source=lib/debian-initramfs.sh
source "$LIB"
RECIPE=$(cat "${BASH_SOURCE[0]}" "$LIB" | sha256sum | cut -d' ' -f1)

log() { echo "guest-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------------------
# Step 0: is the cached guest already complete?
# Complete = manifest written by this recipe, every output present and its
# sha256 matching the manifest (the manifest is written last, so an
# interrupted build never looks complete).
# --------------------------------------------------------------------------
manifest_get() { sed -n "s/^$1=//p" "$GUEST_DIR/manifest" 2>/dev/null | head -n1; }

guest_complete() {
    [[ -f $GUEST_DIR/manifest ]] || return 1
    [[ $(manifest_get recipe) == "$RECIPE" ]] || { log "cached guest was built by another version of this script"; return 1; }
    local f want have
    for f in "${OUTPUTS[@]}"; do
        [[ -s $GUEST_DIR/$f ]] || return 1
        want=$(manifest_get "sha256_${f//./_}")
        have=$(sha256sum "$GUEST_DIR/$f" | cut -d' ' -f1)
        [[ -n $want && $want == "$have" ]] || { log "$f does not match the manifest"; return 1; }
    done
}

# --------------------------------------------------------------------------
# Host tools: install the Debian package of each missing command, if any.
# --------------------------------------------------------------------------
ensure_guest_tools() {
    ensure_tools apt-get=apt dpkg-deb=dpkg readelf=binutils cpio=cpio gzip=gzip xz=xz-utils \
        zstd=zstd lz4=lz4 bzip2=bzip2 sha256sum=coreutils flock=util-linux grep=grep
}

# --------------------------------------------------------------------------
# Step 1: download and unpack the packages (no installation: apt-get download
# + dpkg-deb -x into the work dir).
# --------------------------------------------------------------------------
# (resolve_kernel_pkg and download_and_unpack: scripts/lib/debian-initramfs.sh)

# --------------------------------------------------------------------------
# Step 2: vmlinux from bzImage, like the kernel's scripts/extract-vmlinux.
# The bzImage holds the ELF vmlinux (stripped, relocations appended)
# compressed behind the real-mode setup code. Find every offset where a known
# compression magic occurs, try to decompress from each (earliest first), and
# keep the first output that is a complete ELF.
# --------------------------------------------------------------------------
# format  magic bytes (grep -P escapes)   decompressor reading stdin
COMPRESSORS=(
    "gzip   \\x1f\\x8b\\x08               gzip -dc"
    "xz     \\xfd7zXZ\\x00                xz -dc --single-stream"
    "zstd   \\x28\\xb5\\x2f\\xfd          zstd -dc"
    "lz4    \\x02\\x21\\x4c\\x18          lz4 -dc"
    "bzip2  BZh[1-9]\\x31\\x41\\x59       bzip2 -dc"
    "lzma   \\x5d\\x00\\x00\\x00          xz -dc --format=lzma"
)
MAX_TRIES_PER_FORMAT=16

# A plausible vmlinux: readelf accepts the header, and every program
# segment lies inside the file (a truncated decompression fails this).
is_complete_elf() {
    local f=$1
    readelf -h "$f" >/dev/null 2>&1 || return 1
    local size off filesz end=0
    size=$(stat -c %s "$f")
    # LOAD lines: Type Offset VirtAddr PhysAddr FileSiz ... (hex, 0x-prefixed)
    while read -r off filesz; do
        ((off + filesz > end)) && end=$((off + filesz))
    done < <(readelf -lW "$f" 2>/dev/null | awk '$1 == "LOAD" { print $2, $5 }')
    ((end > 0 && end <= size))
}

extract_vmlinux() { # <bzImage> <out vmlinux>
    local img=$1 out=$2 line fmt magic cmd off tmp=$WORK/vmlinux.try
    local -a candidates=()
    for line in "${COMPRESSORS[@]}"; do
        read -r fmt magic cmd <<<"$line"
        while read -r off; do
            candidates+=("$off $fmt $cmd")
        done < <(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -n "$MAX_TRIES_PER_FORMAT")
    done
    ((${#candidates[@]})) || die "no compression magic found in $img"
    # Earliest offset first: the payload sits right after the setup code,
    # matches further on are mostly inside the compressed data itself.
    while read -r off fmt cmd; do
        # Decompressors complain about the trailing bytes after the payload
        # (non-zero exit) but have written the whole payload by then, so the
        # exit status is ignored and the result is judged by is_complete_elf.
        tail -c "+$((off + 1))" "$img" | $cmd 2>/dev/null | head -c 1G >"$tmp" || true
        if is_complete_elf "$tmp"; then
            mv "$tmp" "$out"
            COMPRESSION=$fmt
            PAYLOAD_OFFSET=$off
            log "vmlinux: $fmt payload at byte $off of bzImage, $(stat -c %s "$out") bytes of ELF"
            return 0
        fi
    done < <(printf '%s\n' "${candidates[@]}" | sort -n -k1,1)
    die "no candidate offset in $img decompressed to an ELF"
}

# The PVH entry point is the ELF note of owner "Xen", type 0x12
# (XEN_ELFNOTE_PHYS32_ENTRY). readelf prints it as an unknown type (or by
# name in newer binutils), followed by its data: the 32-bit physical entry.
check_pvh_note() { # <vmlinux>
    PVH_NOTE=no PVH_ENTRY=
    local data b0 b1 b2 b3 _
    # With -W the data is on the note's own line, without it on the next one.
    data=$(readelf -nW "$1" | awk '
        $1 == "Xen" { found = /\(0x00000012\)/ || /PHYS32_ENTRY/ }
        $1 != "Xen" && !/description data:/ { found = 0 }
        found && /description data:/ { sub(/.*description data: */, ""); print; exit }')
    if [[ -n $data ]]; then
        PVH_NOTE=yes
        # little-endian bytes -> 0x... (first four: the 32-bit address)
        read -r b0 b1 b2 b3 _ <<<"$data"
        PVH_ENTRY="0x$b3$b2$b1$b0"
    fi
}

# --------------------------------------------------------------------------
# Step 3: the initramfs.
# --------------------------------------------------------------------------
# Copy the wanted modules, flat, into <root>/lib/modules as plain .ko
# (busybox insmod cannot read .ko.xz/.ko.zst, so those are decompressed here),
# skipping those built into the kernel. Writes lib/modules/order (the load
# order: the whole MODULES list) and lib/modules/builtin (those of it that are
# built into the kernel, which /init then does not try to load).
copy_modules() { # <unpacked kernel pkg> <initramfs root> <kernel release>
    local kroot=$1 root=$2 kver=$3 m
    local moddir=$kroot/lib/modules/$kver
    local dest=$root/lib/modules
    mkdir -p "$dest"
    : >"$dest/order"
    : >"$dest/builtin"
    MODS_IN=() MODS_BUILTIN=() MODS_MISSING=()
    for m in "${MODULES[@]}"; do
        echo "$m" >>"$dest/order"
        if module_builtin "$moddir" "$m"; then
            log "module $m: built into the kernel"
            echo "$m" >>"$dest/builtin"
            MODS_BUILTIN+=("$m")
        elif extract_module "$moddir" "$m" "$dest/$m.ko"; then
            MODS_IN+=("$m")
        else
            log "module $m: NOT in the kernel package, skipped"
            MODS_MISSING+=("$m")
        fi
    done
    log "modules: ${#MODS_IN[@]} copied, ${#MODS_BUILTIN[@]} built in, ${#MODS_MISSING[@]} missing"
}

# The guest's /init, run by busybox sh. Every line it prints starts with
# "VIREO-GUEST" so tests can key on it; the final verdict is the line
# "VIREO-GUEST-OK" alone.
write_init() { # <path>
    cat >"$1" <<'EOF'
#!/bin/sh
# Vireo test guest init (generated by scripts/guest-image.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# If the initramfs /dev/console was missing, stdio is not connected yet.
[ -t 1 ] || exec </dev/console >/dev/console 2>&1
echo "VIREO-GUEST: init started"
read -r cmdline </proc/cmdline
echo "VIREO-GUEST: cmdline: $cmdline"
has_arg() { case " $cmdline " in *" $1 "*) return 0 ;; esac; return 1; }

# Modules, in the order the build wrote; every outcome gets its own line.
loaded=0 failed=0
builtin=" $(tr '\n' ' ' </lib/modules/builtin) "
for m in $(cat /lib/modules/order); do
    if [ "${builtin#* "$m" }" != "$builtin" ]; then
        echo "VIREO-GUEST: module $m built-in"
    elif [ ! -f "/lib/modules/$m.ko" ]; then
        echo "VIREO-GUEST: module $m missing"; failed=$((failed + 1))
    elif err=$(insmod "/lib/modules/$m.ko" 2>&1); then
        echo "VIREO-GUEST: module $m loaded"; loaded=$((loaded + 1))
    else
        echo "VIREO-GUEST: module $m failed: $err"; failed=$((failed + 1))
    fi
done
echo "VIREO-GUEST: modules loaded=$loaded failed=$failed"
echo "VIREO-GUEST: uname -r: $(uname -r)"
echo "VIREO-GUEST: virtio devices: $(ls /sys/bus/virtio/devices 2>/dev/null | tr '\n' ' ')"

# Ctrl+Alt+Del: the kernel's default (kernel.ctrl-alt-del = 1) restarts at once, without
# a sync; init sets it to 0, as sysvinit and systemd do, which makes it a SIGINT to the
# process in /proc/sys/kernel/cad_pid. Init's own trap would only run once the foreground
# shell ends, so a watcher takes it: started by start-stop-daemon (not `&`, whose SIGINT
# would be ignored for good), it says so (and waits a second: console output drains
# asynchronously, a restart would cut it), syncs and ends the VM as the verdict below
# does. This is the graceful shutdown vireod's `shutdown` asks for.
if has_arg vireo.poweroff; then halt="poweroff -f"; else halt="reboot -f"; fi
if start-stop-daemon -S -b -m -p /run/cad.pid -x /bin/sh -- -c \
    "trap 'echo \"VIREO-GUEST: ctrl-alt-del: $halt\" >/dev/console; sync; sleep 1; $halt' INT
     while :; do sleep 3600 & wait \$!; done" &&
    cat /run/cad.pid >/proc/sys/kernel/cad_pid &&
    echo 0 >/proc/sys/kernel/ctrl-alt-del; then
    echo "VIREO-GUEST: ctrl-alt-del watcher $(cat /run/cad.pid)"
else
    echo "VIREO-GUEST: ctrl-alt-del watcher failed"
fi

if has_arg vireo.shell; then
    echo "VIREO-GUEST: shell"
    # setsid + cttyhack give the shell the console as controlling tty (job control, ^C).
    setsid cttyhack sh
    echo "VIREO-GUEST: shell exited"
fi

# Hook for tests: a second cpio appended to initrd.gz may carry /vireo/test.sh.
if [ -f /vireo/test.sh ]; then
    echo "VIREO-GUEST: test start"
    sh /vireo/test.sh
    echo "VIREO-GUEST: test exit=$?"
fi

echo "VIREO-GUEST-OK"
sync
if has_arg vireo.poweroff; then
    echo "VIREO-GUEST: poweroff"
    poweroff -f
else
    echo "VIREO-GUEST: reboot"
    reboot -f
fi
# Not reached; if it is, do not let init exit (that would be a kernel panic).
while :; do sleep 3600; done
EOF
    chmod 755 "$1"
}

build_initramfs() { # <unpacked busybox pkg> <unpacked kernel pkg> <kernel release> <out initrd.gz>
    local bbroot=$1 kroot=$2 kver=$3 out=$4 root=$WORK/initramfs
    install_busybox "$bbroot" "$root"
    mkdir -p "$root/vireo"
    copy_modules "$kroot" "$root" "$kver"
    write_init "$root/init"
    pack_initramfs "$root" "$out"
}

# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
mkdir -p "$GUEST_DIR"
if [[ ${VIREO_GUEST_REBUILD:-0} != 1 ]] && guest_complete; then
    log "guest is up to date in $GUEST_DIR ($(manifest_get kernel_package) $(manifest_get kernel_version))"
    echo "$GUEST_DIR"
    exit 0
fi

# One build at a time per guest dir (tests may call this in parallel).
exec 9>"$GUEST_DIR/.lock"
flock 9
if [[ ${VIREO_GUEST_REBUILD:-0} != 1 ]] && guest_complete 2>/dev/null; then
    log "guest was built by a concurrent run"
    echo "$GUEST_DIR"
    exit 0
fi

START=$SECONDS
log "building the guest in $GUEST_DIR"
ensure_guest_tools
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vireo-guest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/out"

KERNEL_PKG=$(resolve_kernel_pkg "$KERNEL_META")
log "$KERNEL_META -> $KERNEL_PKG"
download_and_unpack "$KERNEL_PKG" "$WORK/kernel"
KERNEL_VERSION=$DEB_VERSION
download_and_unpack "$BUSYBOX_PKG" "$WORK/busybox"
BUSYBOX_VERSION=$DEB_VERSION

# Kernel release = the name of its modules dir (e.g. 6.1.0-56-cloud-amd64).
KREL=$(find "$WORK/kernel/lib/modules" -mindepth 1 -maxdepth 1 -printf '%f\n' | head -n1)
[[ -n $KREL && -f $WORK/kernel/boot/vmlinuz-$KREL ]] || die "no /boot/vmlinuz-$KREL in $KERNEL_PKG"
log "kernel release $KREL, package version $KERNEL_VERSION"

cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/out/bzImage"
CONFIG_COMPRESSION=$(sed -n 's/^CONFIG_KERNEL_\([A-Z0-9]*\)=y$/\1/p' "$WORK/kernel/boot/config-$KREL" | tr '[:upper:]' '[:lower:]')
log "kernel config says the payload is ${CONFIG_COMPRESSION:-unknown}-compressed"

extract_vmlinux "$WORK/out/bzImage" "$WORK/out/vmlinux"
[[ -z $CONFIG_COMPRESSION || $CONFIG_COMPRESSION == "$COMPRESSION" ]] ||
    log "warning: found $COMPRESSION but the config says $CONFIG_COMPRESSION"
check_pvh_note "$WORK/out/vmlinux"
if [[ $PVH_NOTE == yes ]]; then
    log "vmlinux has the Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY), entry $PVH_ENTRY"
else
    log "vmlinux has NO Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY): it cannot be booted as PVH"
fi

build_initramfs "$WORK/busybox" "$WORK/kernel" "$KREL" "$WORK/out/initrd.gz"

# Install: the old manifest goes first and the new one last, so a build that
# dies half-way never leaves a guest dir that looks complete.
rm -f "$GUEST_DIR/manifest"
{
    echo "# Vireo test guest, built by scripts/guest-image.sh"
    echo "recipe=$RECIPE"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel_meta_package=$KERNEL_META"
    echo "kernel_package=$KERNEL_PKG"
    echo "kernel_version=$KERNEL_VERSION"
    echo "kernel_release=$KREL"
    echo "busybox_package=$BUSYBOX_PKG"
    echo "busybox_version=$BUSYBOX_VERSION"
    echo "compression=$COMPRESSION"
    echo "payload_offset=$PAYLOAD_OFFSET"
    echo "pvh_note=$PVH_NOTE"
    echo "pvh_entry=$PVH_ENTRY"
    echo "modules=${MODS_IN[*]}"
    echo "modules_builtin=${MODS_BUILTIN[*]}"
    echo "modules_missing=${MODS_MISSING[*]}"
    for f in "${OUTPUTS[@]}"; do
        echo "sha256_${f//./_}=$(sha256sum "$WORK/out/$f" | cut -d' ' -f1)"
    done
} >"$WORK/out/manifest"
for f in "${OUTPUTS[@]}"; do
    mv -f "$WORK/out/$f" "$GUEST_DIR/$f"
done
mv -f "$WORK/out/manifest" "$GUEST_DIR/manifest"

log "done in $((SECONDS - START)) s"
echo "$GUEST_DIR"
