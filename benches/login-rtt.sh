#!/usr/bin/env bash
# Login round-trip on the demo: benches/login-rtt.sh [N=20]
#
# Starts `kakehashi-demo` in a temporary directory, then N times:
# `kakehashi --config DIR/client.toml login` (a real WebAuthn ceremony with
# the demo's software passkey against the portal, then the one-time code
# redeemed over mutual TLS) followed by the first session,
# `connect demo-desk --stdio` carrying a line to the echo desk and back.
# Each step is timed as a person sees it (process start to exit); prints
# p50/p95 of login, connect and both together, in milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"

cargo build --release --bins -q
demo=target/release/kakehashi-demo
client=target/release/kakehashi

dir="$(mktemp -d)"
demo_pid=""
cleanup() {
  if [ -n "$demo_pid" ]; then kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

RUST_LOG=warn "$demo" --dir "$dir/demo" >"$dir/demo.out" 2>"$dir/demo.log" &
demo_pid=$!
for _ in $(seq 1 600); do
  grep -q "Kakehashi demo is running" "$dir/demo.out" 2>/dev/null && break
  if ! kill -0 "$demo_pid" 2>/dev/null; then
    echo "the demo stopped:" >&2; cat "$dir/demo.log" >&2; exit 1
  fi
  sleep 0.1
done
grep -q "Kakehashi demo is running" "$dir/demo.out" || { echo "the demo did not start" >&2; exit 1; }

cfg="$dir/demo/client.toml"
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
: >"$dir/login.ms"; : >"$dir/connect.ms"; : >"$dir/total.ms"
for i in $(seq 1 "$n"); do
  t0=$(now_ms)
  "$client" --config "$cfg" login >"$dir/login.out" 2>&1 || { cat "$dir/login.out" >&2; exit 1; }
  t1=$(now_ms)
  got="$(printf 'rtt-%s\n' "$i" | "$client" --config "$cfg" connect demo-desk --stdio 2>"$dir/connect.err")" \
    || { cat "$dir/connect.err" >&2; exit 1; }
  t2=$(now_ms)
  if [ "$got" != "rtt-$i" ]; then
    echo "the desk answered ${got@Q}, not rtt-$i:" >&2; cat "$dir/connect.err" >&2; exit 1
  fi
  echo $((t1 - t0)) >>"$dir/login.ms"
  echo $((t2 - t1)) >>"$dir/connect.ms"
  echo $((t2 - t0)) >>"$dir/total.ms"
done

# Nearest-rank percentiles.
pct() { sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'; }
printf '%-26s %6s %6s  (N=%s, ms)\n' "" p50 p95 "$n"
for step in login connect total; do
  case $step in
    login) what="login (WebAuthn + redeem)";;
    connect) what="first connect (echo)";;
    total) what="login + first connect";;
  esac
  printf '%-26s %6s %6s\n' "$what" "$(pct "$dir/$step.ms" 50)" "$(pct "$dir/$step.ms" 95)"
done
