#!/usr/bin/env bash
# Two builds of the gateway side by side: rows of benches/run.sh run with one
# gateway binary, then the other, alternating (ABAB…), and the median of
# after/before per row is printed as a Markdown table (for benches/RESULTS.md).
#
#   benches/compare-builds.sh BEFORE_GATEWAY AFTER_GATEWAY [--rounds N] [--rows "P1 P3 P4"]
#
# Both binaries must read the config the current benches write (the bench
# harness is this checkout's). Build the old one in its own worktree and
# target directory, e.g.
#   git worktree add --detach ../before REV
#   (cd ../before && CARGO_TARGET_DIR=../target-before cargo build --release -p kakehashi-gateway)
# Ratios are oriented so that ≥ 1.0 means "after is as good or better":
# throughput after/before (P1, P3), memory and latency before/after (P2, P4).
# BENCH_P2_SIZES (default 2000 here) as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
[ $# -ge 2 ] || { sed -n 2,15p "$0" >&2; exit 2; }
BEFORE=$(realpath "$1") AFTER=$(realpath "$2"); shift 2
ROUNDS=2 ROWS="P1 P2 P3 P4"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --rows) ROWS=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export BENCH_P2_SIZES="${BENCH_P2_SIZES:-2000}"
cargo build --release -q -p kakehashi-gateway -p kakehashi-benches
GW=$ROOT/target/release/kakehashi-gateway
cp "$GW" "$GW.this-checkout"
trap 'cp "$GW.this-checkout" "$GW"' EXIT
DIR=$ROOT/target/bench-compare/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$DIR"
echo "results in $DIR" >&2
# Copies of the two binaries: either may be this checkout's own
# target/release/kakehashi-gateway (or a link to it), which each round
# overwrites.
cp "$BEFORE" "$DIR/gateway-before"; cp "$AFTER" "$DIR/gateway-after"
BEFORE=$DIR/gateway-before AFTER=$DIR/gateway-after
for r in $(seq 1 "$ROUNDS"); do
  for which in before after; do
    bin=$BEFORE; [ $which = after ] && bin=$AFTER
    cp "$bin" "$GW"
    echo "== round $r: $which ($bin)" >&2
    t0=$SECONDS
    BENCH_NO_BUILD=1 benches/run.sh --no-record --rows "$ROWS" > "$DIR/$which-$r.log" 2>&1 || true
    out=$(grep -o 'target/bench-results/[0-9TZ]*' "$DIR/$which-$r.log" | tail -1 || true)
    [ -z "$out" ] && out=$(ls -td target/bench-results/*/ | head -1)
    cp -r "$ROOT/${out%/}" "$DIR/$which-$r"
    echo "   took $(( SECONDS - t0 )) s" >&2
  done
done

# Figure of each row's JSON, and whether higher is better.
figure() { # ROW-FILE
  case $1 in
    P1-*) echo '.median_kakehashi_mbps up' ;;
    P2-*) echo '.median_incremental down' ;;
    P3*) echo '.median_kakehashi_per_sec up' ;;
    P4*) echo '.median_kakehashi_added_p99_us down' ;;
  esac
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
echo "| row | before (median of $ROUNDS) | after (median of $ROUNDS) | after vs before (≥ 0.95 wanted) |"
echo "|---|---|---|---|"
for j in "$DIR"/before-1/*.json; do
  name=$(basename "$j" .json)
  read -r q dir <<<"$(figure "$name")" || true
  [ -n "${q:-}" ] || continue
  b=$(for r in $(seq 1 "$ROUNDS"); do jq "$q" "$DIR/before-$r/$name.json" 2>/dev/null; done | median)
  a=$(for r in $(seq 1 "$ROUNDS"); do jq "$q" "$DIR/after-$r/$name.json" 2>/dev/null; done | median)
  if [ "$dir" = up ]; then ratio=$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", a/b}')
  else ratio=$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.2f", b/a}'); fi
  echo "| $name | $b | $a | ${ratio}× |"
done
