#!/usr/bin/env bash
# Download and unpack Debian kernel packages into the vexfs cache (no system install).
#
#   fetch-kernel.sh latest 6.12|6.1 [FLAVOUR]   print the newest release, e.g. 6.12.117+deb12-amd64
#   fetch-kernel.sh kernel  RELEASE             kernels/RELEASE/ (image package unpacked, depmod run)
#   fetch-kernel.sh headers RELEASE             headers/RELEASE/ (headers + kbuild unpacked, patched)
#   fetch-kernel.sh source SERIES SUBDIR        sources/linux-source-SERIES/SUBDIR (one folder of
#                                               Debian's linux-source-SERIES, e.g. 6.1 fs/minix)
#
# RELEASE is the uname -r (6.12.117+deb12-amd64, 6.1.0-57-cloud-amd64, ...); a package name
# (linux-image-RELEASE) is accepted too. Cache: ${VEXFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vexfs}.
# Everything is skipped when already present. Can also be sourced for its functions.

set -euo pipefail

VEXFS_CACHE="${VEXFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vexfs}"

log() { printf '[vexfs] %s\n' "$*" >&2; }
die() { printf '[vexfs] error: %s\n' "$*" >&2; exit 1; }

# need TOOL PACKAGE: one clear message when a tool is missing.
need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    # sbin tools are not always on a non-root PATH
    [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] && return 0
    die "'$1' is missing: install it with 'apt-get install -y --no-install-recommends $2' (or run scripts/setup.sh)"
}

# Normalise "linux-image-X" / "X" to the release X.
release_of() {
    local r="$1"
    r="${r#linux-image-}"
    r="${r%-unsigned}"
    printf '%s\n' "$r"
}

apt_lists_ready() {
    compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null 2>&1 ||
        compgen -G '/var/lib/apt/lists/*_Packages.*' >/dev/null 2>&1
}

# apt-cache knows PKG; runs apt-get update once if the lists are empty.
ensure_apt_knows() {
    local pkg="$1"
    if apt-cache show "$pkg" >/dev/null 2>&1; then return 0; fi
    if ! apt_lists_ready || [ "${VEXFS_APT_UPDATED:-}" != 1 ]; then
        log "apt lists do not know $pkg: running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed (run it as root)"
        export VEXFS_APT_UPDATED=1
    fi
    apt-cache show "$pkg" >/dev/null 2>&1 ||
        die "package $pkg not found by apt-cache (see: apt-cache search --names-only '^linux-image-')"
}

# latest_release MAJOR.MINOR [FLAVOUR]: newest Debian kernel release of that series.
latest_release() {
    local series="$1" flavour="${2:-amd64}" re
    need apt-cache apt
    case "$series" in
        6.1) re="^linux-image-6\.1\.0-[0-9]+-${flavour}\$" ;;
        6.12) re="^linux-image-6\.12\.[0-9]+\+deb12-${flavour}\$" ;;
        *) re="^linux-image-${series//./\\.}[.-][0-9][^ ]*-${flavour}\$" ;;
    esac
    if ! apt_lists_ready; then
        log "apt lists are empty: running apt-get update"
        apt-get update -qq >&2 || die "apt-get update failed (run it as root)"
        export VEXFS_APT_UPDATED=1
    fi
    local pkg
    pkg=$(apt-cache search --names-only "$re" | awk '{print $1}' | sort -V | tail -n1)
    [ -n "$pkg" ] || die "no kernel package matches $re (apt-cache search)"
    release_of "$pkg"
}

# deb_path PKG: download PKG's .deb into debs/ unless present; prints its path.
deb_path() {
    local pkg="$1" dir="$VEXFS_CACHE/debs" f ver
    mkdir -p "$dir"
    # a package name never contains '_', so this prefix is exact
    f=$(ls -1 "$dir/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$f" ]; then printf '%s\n' "$f"; return 0; fi
    need apt-get apt
    ensure_apt_knows "$pkg"
    log "downloading $pkg"
    (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) ||
        die "apt-get download $pkg failed"
    f=$(ls -1 "$dir/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$f" ] || die "apt-get download $pkg produced no file"
    printf '%s\n' "$f"
}

# fetch_kernel RELEASE: kernels/RELEASE/{boot,lib/modules/RELEASE}, with modules.dep.
fetch_kernel() {
    local rel dir deb
    rel=$(release_of "$1")
    dir="$VEXFS_CACHE/kernels/$rel"
    if [ -f "$dir/.vexfs-ready" ]; then return 0; fi
    need dpkg-deb dpkg
    need depmod kmod
    deb=$(deb_path "linux-image-$rel")
    log "unpacking $(basename "$deb")"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    [ -d "$dir.tmp/lib/modules/$rel" ] || die "$deb has no lib/modules/$rel"
    log "depmod for $rel"
    depmod -b "$dir.tmp" "$rel"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.vexfs-ready"
}

# fetch_headers RELEASE: headers/RELEASE/usr/src/linux-headers-RELEASE, ready for M= builds.
fetch_headers() {
    local rel dir hdr pkgs p deb
    rel=$(release_of "$1")
    dir="$VEXFS_CACHE/headers/$rel"
    if [ -f "$dir/.vexfs-ready" ]; then return 0; fi
    need dpkg-deb dpkg
    need apt-cache apt
    ensure_apt_knows "linux-headers-$rel"
    # linux-headers-REL depends on linux-headers-*-common and linux-kbuild-*
    pkgs="linux-headers-$rel $(apt-cache depends "linux-headers-$rel" |
        awk '/Depends: linux-(headers-.*-common|kbuild-)/ {print $2}' | sort -u | tr '\n' ' ')"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp"
    for p in $pkgs; do
        deb=$(deb_path "$p")
        log "unpacking $(basename "$deb")"
        dpkg-deb -x "$deb" "$dir.tmp"
    done
    hdr="usr/src/linux-headers-$rel"
    [ -f "$dir.tmp/$hdr/Makefile" ] || die "no $hdr/Makefile after unpacking $pkgs"
    # The flavour Makefile includes the -common one by absolute path: point it at the cache.
    sed -i "s#^include /usr/src/#include $dir/usr/src/#" "$dir.tmp/$hdr/Makefile"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    touch "$dir/.vexfs-ready"
}

# fetch_source SERIES SUBDIR: one folder of the kernel source package, unpacked alone
# (the tarball is streamed: nothing else of it is written).
fetch_source() {
    local series="$1" sub="${2%/}" dir deb top
    case "$sub" in /*|*..*|"") die "source folder '$sub' must be relative, like fs/minix" ;; esac
    top="linux-source-$series"
    dir="$VEXFS_CACHE/sources/$top"
    if [ -f "$dir/$sub/.vexfs-ready" ]; then return 0; fi
    need dpkg-deb dpkg
    need xz xz-utils
    deb=$(deb_path "$top")
    log "unpacking $top/$sub from $(basename "$deb")"
    rm -rf "$dir/$sub.tmp"
    mkdir -p "$dir/$sub.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$top.tar.xz" |
        tar -xJ -C "$dir/$sub.tmp" --strip-components=$(( $(tr -cd / <<< "$sub" | wc -c) + 2 )) "$top/$sub" ||
        die "could not unpack $top/$sub from $deb"
    [ -n "$(ls -A "$dir/$sub.tmp")" ] || die "$deb has no $top/$sub"
    rm -rf "${dir:?}/$sub"
    mv "$dir/$sub.tmp" "$dir/$sub"
    touch "$dir/$sub/.vexfs-ready"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    cmd="${1:-}"
    case "$cmd" in
        latest) shift; latest_release "${1:?series, e.g. 6.12}" "${2:-amd64}" ;;
        kernel) shift; fetch_kernel "${1:?release}"; echo "$VEXFS_CACHE/kernels/$(release_of "$1")" ;;
        headers) shift; fetch_headers "${1:?release}"; echo "$VEXFS_CACHE/headers/$(release_of "$1")" ;;
        source) shift; fetch_source "${1:?series, e.g. 6.1}" "${2:?folder, e.g. fs/minix}"
            echo "$VEXFS_CACHE/sources/linux-source-$1/${2%/}" ;;
        *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
fi
