#!/usr/bin/env bash
# Past capacity, the latency half (issue Resilience, item 1): offer a
# gateway twice the sessions and traffic it can carry and see whether the
# sessions it admits keep their round trips (p99 within 2x of the unloaded
# figure) and the others are refused with `gateway_busy`.
#
#   benches/past-capacity.sh [--transport tcp|quic] [--gateway-cpu 0.25]
#                            [--sessions 300] [--busy-cpu-percent 85]
#                            [--busy-delay-ms 20] [--record]
#
# Two cores cannot hold a gateway and a load generator that saturates it
# (the load generator costs about as much per session as the gateway), so
# the gateway gets a fraction of core 0 (`--gateway-cpu`, a CPU cgroup
# quota: a smaller gateway, as on a smaller machine) and the load generator
# all of core 1. Three runs of the load generator's `sessions` bench, bare
# relay, the default paced traffic, 100 desks:
#
#   1. calibration: `--sessions` sessions for 10 s, the rule off; the
#      gateway's CPU at that load gives its capacity C under the quota
#      (sessions x quota / CPU);
#   2. rules off: the same sessions for 10 s (the unloaded p99), then a
#      storm of 2C - sessions more over 10 s: 2C offered;
#   3. rules on (`[relay.limits] busy_cpu_percent` and `busy_delay`, by
#      default the shipped 85 % and 20 ms): the same offer.
#
# For each of 2 and 3: the live sessions' p99 before and during the storm
# and its ratio, the new sessions' p99 against the same unloaded figure,
# sessions admitted in the storm and refused with `gateway_busy`, the
# gateway's CPU. It passes when run 3 keeps both ratios within 2 and
# refuses with gateway_busy only. Prints a Markdown table; --record appends
# it to benches/RESULTS.md. Needs root (the cgroup) and 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

TRANSPORT=tcp
QUOTA=0.25
SESSIONS=300
DELAY=20
CPU_LIMIT=85
RECORD=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --transport) TRANSPORT="$2"; shift ;;
    --gateway-cpu) QUOTA="$2"; shift ;;
    --sessions) SESSIONS="$2"; shift ;;
    --busy-delay-ms) DELAY="$2"; shift ;;
    --busy-cpu-percent) CPU_LIMIT="$2"; shift ;;
    --record) RECORD=1 ;;
    *) usage ;;
  esac
  shift
done
case $TRANSPORT in tcp|quic) ;; *) echo "--transport is tcp or quic" >&2; exit 2 ;; esac
awk -v q="$QUOTA" 'BEGIN { exit !(q > 0.02 && q <= 1) }' || { echo "--gateway-cpu is a fraction of a core, 0.02-1" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "past-capacity.sh sets a CPU cgroup quota: run it as root" >&2; exit 1; }
need_two_cores "past-capacity.sh gives the gateway part of one core and the load generator the other"
warn_if_loaded
bench_limits
need_deb jq jq
need_deb taskset util-linux
bench_build
LG=$TARGET/release/kakehashi-loadgen
PKI=$TARGET/bench-pki
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$TARGET/bench-results/past-capacity-$STAMP
mkdir -p "$OUT"

# The gateway's cgroup: a quota of QUOTA x 10 ms per 10 ms period (a short
# period: a throttled gateway waits at most the rest of 10 ms).
PERIOD=10000
QUOTA_US=$(awk -v q="$QUOTA" -v p=$PERIOD 'BEGIN { printf "%d", q * p }')
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then        # cgroup v1
  CG=/sys/fs/cgroup/cpu/kakehashi-bench
  mkdir -p "$CG"
  echo $PERIOD > "$CG/cpu.cfs_period_us"
  echo "$QUOTA_US" > "$CG/cpu.cfs_quota_us"
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then       # cgroup v2
  CG=/sys/fs/cgroup/kakehashi-bench
  echo +cpu > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
  mkdir -p "$CG"
  echo "$QUOTA_US $PERIOD" > "$CG/cpu.max"
else
  echo "no CPU cgroup controller under /sys/fs/cgroup" >&2; exit 1
fi
cat > "$OUT/wrap.sh" <<WRAP
#!/bin/sh
echo \$\$ > $CG/cgroup.procs
exec taskset -c 0 "\$@"
WRAP
chmod +x "$OUT/wrap.sh"
cleanup() { rmdir "$CG" 2>/dev/null || true; }
trap cleanup EXIT

run() { # name, loadgen args…
  local name=$1; shift
  echo "== $name: kakehashi-loadgen sessions $*" >&2
  KAKEHASHI_BENCH_WRAP="$OUT/wrap.sh" taskset -c 1 "$LG" --pki-dir "$PKI" --work-dir "$OUT/work" \
    --json "$OUT/$name.json" sessions --transport "$TRANSPORT" --agents 100 "$@" \
    >/dev/null 2>"$OUT/$name.log" || { tail -5 "$OUT/$name.log" >&2; return 1; }
}

run calibration --sessions "$SESSIONS" --duration 10 --busy-delay-ms 0 --busy-cpu-percent 0
CPU=$(jq '.gateway_steady.cpu_mean_pct' "$OUT/calibration.json")
CAP=$(awk -v s="$SESSIONS" -v q="$QUOTA" -v c="$CPU" 'BEGIN { printf "%d", s * q * 100 / c }')
echo "   $SESSIONS sessions: gateway at $CPU % of a core; capacity under a $QUOTA core quota: about $CAP sessions" >&2
if [ "$CAP" -lt $(( SESSIONS * 5 / 4 )) ]; then
  echo "the gateway is near its quota with $SESSIONS sessions already: lower --sessions or raise --gateway-cpu" >&2
  exit 1
fi
STORM=$(( 2 * CAP - SESSIONS ))
OFFER=(--sessions "$SESSIONS" --duration 10 --storm "$STORM" --storm-secs 10)
run rule-off "${OFFER[@]}" --busy-delay-ms 0 --busy-cpu-percent 0
run rule-on "${OFFER[@]}" --busy-delay-ms "$DELAY" --busy-cpu-percent "$CPU_LIMIT"

ROW_JQ='
def r(x; n): if x == null then "—" else ((x * pow(10; n) | round) / pow(10; n) | tostring) end;
def ms(us): r(us / 1000; 1);
.storm as $s
| .rtt_steady.p99_us as $u
| ($s.new_sessions_rtt.p99_us / ($u | if . == 0 then 1 else . end)) as $new
| ([.errors | to_entries[] | select(.key != "setup:refused:gateway_busy") | .value] | add // 0) as $other
| "| \($t) | \($name) | \($q) core, \($cap) sessions | \(.sessions) + \($s.sessions) | \($s.setup.count) | \($s.refused_gateway_busy) | \($other) | \(ms($u)) ms | \(ms($s.live_rtt_during.p99_us)) ms (\(r($s.live_p99_ratio; 1))×) | \(ms($s.new_sessions_rtt.p99_us)) ms (\(r($new; 1))×) | \(r($s.gateway.cpu_mean_pct; 0)) % | \(if $s.live_p99_ratio <= 2 and $new <= 2 then "✓" else "✗" end) |"'
{
  echo
  echo "### Run $STAMP (\`benches/past-capacity.sh --transport $TRANSPORT --gateway-cpu $QUOTA --sessions $SESSIONS --busy-cpu-percent $CPU_LIMIT --busy-delay-ms $DELAY\`)"
  echo
  echo "| transport | rules | gateway (quota, capacity) | offered (steady + storm) | admitted in the storm | refused \`gateway_busy\` | other errors | unloaded p99 | live p99 in the storm | new sessions' p99 | gateway CPU in the storm | p99 within 2× |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  for n in rule-off rule-on; do
    name="off"; [ $n = rule-on ] && name="CPU ${CPU_LIMIT} %, delay ${DELAY} ms"
    jq -r --arg t "$TRANSPORT" --arg name "$name" --arg q "$QUOTA" --arg cap "$CAP" "$ROW_JQ" "$OUT/$n.json"
  done
  echo
  echo "Calibration: $SESSIONS sessions put the gateway at $(printf %.0f "$CPU") % of a core. JSON: \`target/bench-results/past-capacity-$STAMP/\`."
} | tee "$OUT/table.md"
[ $RECORD = 0 ] || cat "$OUT/table.md" >> benches/RESULTS.md
