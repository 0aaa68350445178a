#!/usr/bin/env bash
# The main job (README): set up what is missing, then run the crash scenario suite on a
# real guest (newest Debian 6.12 kernel, TCG here) and print the summary. Extra
# arguments go to `vexctl run` (e.g. --kernel latest-6.1 --kernel latest-6.12).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
scripts/setup.sh
cargo build --release -p vexfs-controller --bin vexctl
out="${VEXFS_DEMO_OUT:-$REPO/target/demo}"
mkdir -p "$out"
set +e
target/release/vexctl run --db "$out/crashes.db" \
    --junit "$out/junit.xml" --json "$out/results.json" --html "$out/report.html" "$@"
code=$?
set -e
echo
echo "reports: $out/report.html, $out/junit.xml, $out/results.json"
echo "crash database: target/release/vexctl crashes --db $out/crashes.db list"
exit "$code"
