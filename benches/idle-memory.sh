#!/usr/bin/env bash
# Rough idle memory per session: benches/idle-memory.sh [N=1000] [quic|tcp]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bins -q
exec target/release/idle-memory "${1:-1000}" "${2:-quic}"
