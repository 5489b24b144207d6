#!/usr/bin/env bash
# P10, the login storm (issue 18 item 8): full logins per second through
# the portal — the WebAuthn ceremony with a software passkey, then the
# one-time code redeemed over the laptop's mutual TLS, as `kakehashi login`
# does — against one gateway and spread over three gateways on one
# PostgreSQL (fsync on), alternating rounds, first as the disk is, then with
# 2 ms added to every fsync (an LD_PRELOAD shim, benches/fsync-delay.c).
#
#   benches/login-storm.sh [--users N] [--concurrency N] [--logins N] [--rounds N] [--tcp]
#
# Needs PostgreSQL's server programs and a C compiler (installed with
# apt-get when missing). Prints each round (with the CPU of PostgreSQL, each
# gateway and the load generator) and a Markdown table for
# benches/RESULTS.md. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
need_postgres
need_deb cc gcc libc6-dev
cargo build --release -q -p kakehashi-gateway
cargo build --release -q -p kakehashi-benches --bin login-storm
target="${CARGO_TARGET_DIR:-target}"
out="$target/login-storm"; mkdir -p "$out"
fsync_shim "$out"
for delay in 0 2000; do
  echo "== ${delay} µs added to every fsync" >&2
  "$target/release/login-storm" --fsync-delay-us "$delay" --preload "$PWD/$out/fsync-delay.so" "$@" \
    | tee "$out/delay-$delay.json"
done
echo
echo "| fsync added | gateways | round | logins/s | p50 | p99 | errors | CPU % of one core: postgres / gw1 / gw2 / gw3 / load generator | machine busy |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for delay in 0 2000; do
  python3 - "$out/delay-$delay.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for r in s["rounds"]:
    c = r["cpu_pct"]
    errs = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
    busy = c["machine_busy"] / c["machine_total"] * 100 if c["machine_total"] else 0
    print(f'| {s["fsync_delay_us"]/1000:g} ms | {r["gateways"]} | {r["round"]} | {r["logins_per_sec"]:.0f} | {r["p50_ms"]} ms | {r["p99_ms"]} ms | {errs} | {c["postgres"]:.0f} / {c["gw1"]:.0f} / {c["gw2"]:.0f} / {c["gw3"]:.0f} / {c["bench"]:.0f} | {busy:.0f} % |')
PY
done
