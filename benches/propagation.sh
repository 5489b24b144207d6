#!/usr/bin/env bash
# P9, propagation (issue 18): a revocation made through one gateway (an
# officer's `admin device block` / `admin user disable` against gw-a's
# configuration) to the end of each affected session on the other two, as
# the laptop sees it; three release gateways on a throwaway PostgreSQL
# (fsync on), real agents serving echo desks.
#
#   benches/propagation.sh [--rounds N] [--sessions N] [--desks N] [--watch DURATION]
#
# --sessions is per kind of revocation and round (the default 75 makes 150
# live sessions over gw-b and gw-c). Prints a line per kind and round, a
# Markdown table for benches/RESULTS.md and a JSON summary; exits non-zero
# when a session was not ended within 10 s or a control session ended.
# Needs PostgreSQL's server programs (installed with apt-get when missing).
# Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
need_postgres
# (`--bin` would limit the gateway and agent packages to a bin of that name: two commands.)
cargo build --release -q -p kakehashi-gateway -p kakehashi-agent
cargo build --release -q -p kakehashi-benches --bin propagation
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"${CARGO_TARGET_DIR:-target}/release/propagation" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
