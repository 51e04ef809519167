# Shared by scripts/guest-image.sh and scripts/nested-host.sh (sourced, not run): take
# Debian packages without installing them, and pack a busybox initramfs.
#
# The caller defines log() and die(), and WORK (a private work dir with a debs/ subdir).

APT_UPDATED=0
apt_update_once() {
    if [[ $APT_UPDATED == 0 ]]; then
        log "apt-get update"
        apt-get update >&2
        APT_UPDATED=1
    fi
}

# Install the Debian package of each missing command. Arguments: command=package pairs.
ensure_tools() {
    local pair missing=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID == 0 ]] || die "missing tools (packages: ${missing[*]}); run as root or install them"
    log "installing missing tools: ${missing[*]}"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

# A kernel metapackage (linux-image-amd64, linux-image-cloud-amd64) only depends on the
# real, versioned image package (linux-image-6.1.0-NN-...); print that one.
resolve_kernel_pkg() { # <metapackage>
    local meta=$1 dep
    if ! apt-cache show "$meta" >/dev/null 2>&1; then
        [[ $EUID == 0 ]] || die "apt-cache does not know $meta (run apt-get update as root)"
        apt_update_once
    fi
    dep=$(apt-cache depends "$meta" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
    [[ -n $dep ]] || die "cannot resolve the image package behind $meta"
    echo "$dep"
}

# apt-get download + dpkg-deb -x into <dest dir>; sets DEB_VERSION.
download_and_unpack() { # <package> <dest dir>
    local pkg=$1 dest=$2 debs
    local -a apt_opts=()
    # As root apt would try to drop to the _apt user, who cannot write our
    # private work dir; downloading as root is what it falls back to anyway.
    [[ $EUID == 0 ]] && apt_opts=(-o APT::Sandbox::User=root)
    # A stale package list can name a version the mirror no longer has:
    # refresh the list once and retry.
    if ! (cd "$WORK/debs" && apt-get "${apt_opts[@]}" download "$pkg" >&2); then
        [[ $EUID == 0 && $APT_UPDATED == 0 ]] || die "apt-get download $pkg failed"
        apt_update_once
        (cd "$WORK/debs" && apt-get "${apt_opts[@]}" download "$pkg" >&2)
    fi
    debs=("$WORK/debs/${pkg}"_*.deb)
    [[ -f ${debs[0]} ]] || die "apt-get download $pkg left no .deb"
    log "unpacking $(basename "${debs[0]}")"
    mkdir -p "$dest"
    dpkg-deb -x "${debs[0]}" "$dest"
    DEB_VERSION=$(dpkg-deb -f "${debs[0]}" Version)
}

# Find module <name> (- and _ are the same) in an unpacked kernel's module tree and write
# it, decompressed (busybox insmod reads plain .ko only), to <out>. Fails if absent.
extract_module() { # <module dir (lib/modules/REL)> <name> <out>
    local moddir=$1 m=$2 out=$3 a b src
    a=${m//-/_} b=${m//_/-}
    src=$(find "$moddir/kernel" \( -name "$a.ko" -o -name "$a.ko.*" -o -name "$b.ko" -o -name "$b.ko.*" \) | head -n1)
    [[ -n $src ]] || return 1
    case $src in
        *.ko) cp "$src" "$out" ;;
        *.ko.xz) xz -dc "$src" >"$out" ;;
        *.ko.zst) zstd -dcq "$src" >"$out" ;;
        *.ko.gz) gzip -dc "$src" >"$out" ;;
        *) die "module $m: unknown format $src" ;;
    esac
}

# Whether module <name> is built into the kernel (modules.builtin).
module_builtin() { # <module dir> <name>
    grep -Eq "/(${2//-/_}|${2//_/-})\.ko$" "$1/modules.builtin" 2>/dev/null
}

# Static busybox from <unpacked busybox-static> into <root>, a symlink per applet (the
# host is amd64 too, so busybox can list its own applets here); /init is the caller's,
# so busybox's own init/linuxrc are left out. Also the skeleton dirs and, as root, the
# /dev/console and /dev/null nodes the kernel wants before devtmpfs is mounted.
install_busybox() { # <unpacked busybox pkg> <root>
    local bbroot=$1 root=$2 applet
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,mnt,root,etc}
    chmod 1777 "$root/tmp"
    cp "$bbroot/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list-full); do
        case $applet in linuxrc | sbin/init | bin/busybox) continue ;; esac
        [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done
    if [[ $EUID == 0 ]]; then
        mknod -m 600 "$root/dev/console" c 5 1
        mknod -m 666 "$root/dev/null" c 1 3
    fi
}

# newc cpio of <root>, files owned by root, gzip'd (the kernel's initramfs format). Fixed
# mtimes, sorted names and --reproducible (inode numbers) make the same inputs give a
# byte-identical archive.
pack_initramfs() { # <root> <out .gz>
    find "$1" -exec touch -h -d @0 {} +
    (cd "$1" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$2"
    log "$(basename "$2"): $(stat -c %s "$2") bytes"
}
