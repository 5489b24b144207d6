#!/usr/bin/env bash
# The ops dashboard with many live sessions, against the same gateway with
# none: benches/dashboard-load.sh [SESSIONS=20000] [VIEWERS=20]
# Needs chromium, node and tests/browser/node_modules (tests/run.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bins -q
exec target/release/dashboard-load "${1:-20000}" "${2:-20}"
