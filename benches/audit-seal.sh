#!/usr/bin/env bash
# The store's side of a login storm on PostgreSQL (issue 18 item 8; the
# store layer of P10): logins' audited writes per second with the audit
# chain taken by every write ("inline") against records sealed in batches
# ("sealed", what a gateway on PostgreSQL does), side by side on one
# throwaway PostgreSQL with fsync on, first as the disk is, then with
# 2 ms added to every fsync (an LD_PRELOAD shim, benches/fsync-delay.c).
#
#   benches/audit-seal.sh [--logins N] [--gateways N] [--workers N] [--rounds N]
#
# Needs PostgreSQL's server programs and a C compiler (installed with
# apt-get when missing). Prints each round and a Markdown table for
# benches/RESULTS.md. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
need_postgres
need_deb cc gcc libc6-dev
cargo build --release -q -p kakehashi-benches --bin audit-seal
target="${CARGO_TARGET_DIR:-target}"
out="$target/audit-seal"; mkdir -p "$out"
fsync_shim "$out"
for delay in 0 2000; do
  echo "== ${delay} µs added to every fsync" >&2
  "$target/release/audit-seal" --fsync-delay-us "$delay" --preload "$PWD/$out/fsync-delay.so" "$@" \
    | tee "$out/delay-$delay.json"
done
echo
echo "| fsync added | gateways | in flight | inline logins/s | sealed logins/s | ratio | sealed p99 |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for delay in 0 2000; do
  python3 - "$out/delay-$delay.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
sealed = [r for r in s["rounds"] if r["mode"] == "sealed"]
p99 = max(r["p99_ms"] for r in sealed)
print(f'| {s["fsync_delay_us"]/1000:g} ms | {s["gateways"]} | {s["workers"]} | {s["inline_logins_per_sec"]:.0f} | {s["sealed_logins_per_sec"]:.0f} | {s["ratio"]:.2f}× | {p99} ms |')
PY
done
