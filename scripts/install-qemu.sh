#!/usr/bin/env bash
# Install one consistent QEMU family (qemu-system-x86, qemu-system-common, qemu-utils) on
# Debian 12, and say which one is in use.
#
# Debian 12 machines come two ways: without QEMU, or with bookworm-backports' qemu-utils
# 10.x preinstalled, which Breaks bookworm's qemu-system-common 7.2 ("held broken
# packages"). So the whole family is always taken from bookworm-backports (10.x): the
# same QEMU on both kinds of machine, and the newer TCG for the nested test host.
# Set VIREO_QEMU_SUITE=bookworm to take bookworm's 7.2 family instead (qemu-utils is then
# downgraded with --allow-downgrades if a newer one is installed).
#
# Nothing happens when a consistent family is already installed. Needs root for apt.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
suite=${VIREO_QEMU_SUITE:-bookworm-backports}
pkgs=(qemu-system-x86 qemu-system-common qemu-utils)

log() { echo "install-qemu: $*" >&2; }
installed() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1=="ii"{print $2}'; }

consistent() {
    local v first=
    for p in "${pkgs[@]}"; do
        v=$(installed "$p")
        [[ -n $v ]] || return 1
        # qemu-system-x86 is a binNMU (+bN) at times: compare the upstream part.
        v=${v%%+b[0-9]*}
        [[ -z $first ]] && first=$v
        [[ ${v%%~*} == "${first%%~*}" ]] || return 1
    done
}

if ! consistent; then
    if [[ $suite == bookworm-backports ]]; then
        list=/etc/apt/sources.list.d/vireo-bookworm-backports.list
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            log "adding bookworm-backports to apt's sources ($list)"
            echo "deb http://deb.debian.org/debian bookworm-backports main" >"$list"
        fi
        apt-get update -q
        apt-get install -y -q -t bookworm-backports "${pkgs[@]}"
    else
        apt-get update -q
        apt-get install -y -q --allow-downgrades "${pkgs[@]/%//bookworm}"
    fi
fi
consistent || { log "error: the QEMU packages are still at different versions:"; for p in "${pkgs[@]}"; do log "  $p $(installed "$p")"; done; exit 1; }
log "using $(qemu-system-x86_64 --version | head -n1) (qemu-img $(installed qemu-utils))"
