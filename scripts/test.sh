#!/usr/bin/env bash
# The project's test command (README, .ci/run): sets up what is missing (idempotent),
# then runs every layer of tests: lints, unit and property tests, the agent's
# integration tests, and the VM end-to-end tests on real guests.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
step() { printf '\n[vexfs test] %s\n' "$*"; }

step "set-up (packages, vhost-device-vsock, static agent, guest images)"
scripts/setup.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

step "unit, property and integration tests"
cargo test --workspace

# The VM tests drive the vexctl binary too (controller killed and resumed).
cargo build -p vexfs-controller --bin vexctl

step "VM end-to-end tests (real QEMU, real Debian kernels, vsock through vhost-device-vsock)"
# At most two guests at a time: each costs about a core while it boots. The 200-cycle
# soak (35 min) is its own command (README, "Soak").
cargo test -p vexfs-tests --test vm -- --ignored --test-threads=2 --skip soak::

step "done"
