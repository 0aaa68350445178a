#!/usr/bin/env bash
# Build the guest agent as a static binary (glibc, crt-static) and print its path.
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build -p vexfs-agent --profile agent \
#       --target x86_64-unknown-linux-gnu
# The explicit --target keeps the RUSTFLAGS away from build scripts and proc macros.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v cargo >/dev/null 2>&1 || { echo "[vexfs] error: cargo is missing: install Rust (rustup) first" >&2; exit 1; }
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-gnu; then
    command -v rustup >/dev/null 2>&1 && rustup target add x86_64-unknown-linux-gnu >&2 || true
fi
cd "$REPO"
RUSTFLAGS="-C target-feature=+crt-static" cargo build -p vexfs-agent --profile agent \
    --target x86_64-unknown-linux-gnu >&2
bin="$REPO/target/x86_64-unknown-linux-gnu/agent/vexfs-agent"
[ -x "$bin" ] || { echo "[vexfs] error: cargo did not produce $bin" >&2; exit 1; }
# Size budget (it is the guest's /init, in every initramfs): fail the build past it.
budget=$((3 * 1024 * 1024))
size=$(stat -c %s "$bin")
if [ "$size" -gt "$budget" ]; then
    echo "[vexfs] error: the agent is $size bytes, over its budget of $budget" >&2
    exit 1
fi
echo "$bin"
