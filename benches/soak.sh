#!/usr/bin/env bash
# The soak of issue Resilience, item 4 (not in CI: 30 minutes and two cores).
#
#   benches/soak.sh [--minutes 30] [--sessions 5000] [--transport quic|tcp]
#                   [--record] [-- MORE LOADGEN ARGS]
#
# One gateway process (release build, admission through a seeded SQLite
# store) for the whole run; `--sessions` slots each keep a session open, a
# session living a random 30–300 s before it closes and the slot opens the
# next one (about sessions/165 opens a second); light office traffic per
# session (a request every 2 s answered with a 5 KB screen update: 20 kbit/s);
# every agent drops and redials its tunnel at a random moment every ~5
# minutes. Every 10 s the gateway's RSS, its open descriptors and the
# store's size are sampled and printed. It passes when, over the last 20
# minutes, RSS has a least-squares slope under 1 % per 10 minutes,
# descriptors stay within 32 + 2 % of each other, the slots held their
# sessions, and the expired login codes and tokens seeded beforehand were
# pruned; it exits non-zero otherwise. What each figure means:
# benches/src/soak.rs.
#
# Output: target/bench-results/soak-<stamp>/ (summary.json with every
# sample, soak.log with the progress lines, the gateway's log under work/).
# Prints the Markdown row for benches/RESULTS.md; --record appends it.
# Options after `--` go to `kakehashi-loadgen soak` (e.g. `-- --hz 0.5`,
# `--agents 1000`, `--window 10`); BENCH_NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

MINUTES=30
SESSIONS=5000
TRANSPORT=quic
RECORD=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift ;;
    --sessions) SESSIONS="$2"; shift ;;
    --transport) TRANSPORT="$2"; shift ;;
    --record) RECORD=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: benches/soak.sh [--minutes N] [--sessions N] [--transport quic|tcp] [--record] [-- loadgen args]" >&2; exit 2 ;;
  esac
  shift
done

bench_limits
need_deb jq jq

bench_build
LG=$TARGET/release/kakehashi-loadgen
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-results/soak-$STAMP
mkdir -p "$OUT"
ARGS=(soak --transport "$TRANSPORT" --minutes "$MINUTES" --sessions "$SESSIONS" ${EXTRA[@]+"${EXTRA[@]}"})
echo "== kakehashi-loadgen ${ARGS[*]} (progress in $OUT/soak.log)" >&2
set +e
"$LG" --pki-dir "$ROOT/target/bench-pki" --work-dir "$OUT/work" --json "$OUT/summary.json" "${ARGS[@]}" \
  >/dev/null 2> >(tee "$OUT/soak.log" >&2)
RC=$?
set -e
wait
[ -s "$OUT/summary.json" ] || { echo "no summary (exit $RC)" >&2; exit "$RC"; }

J=$OUT/summary.json
f() { jq -r "$1" "$J"; }
ROW="| $STAMP | $(f .sessions) sessions ($(f .sessions_opened) opened, $(f '.expected_opens_per_sec*10|floor/10')/s), $(f .agents) agents redialing every ~$(f '.redial_every_secs/60|floor') min ($(f .agent_redials) redials), $(f '.transport|ascii_upcase'), $(f .minutes) min, $(f '.profile.hz') req/s at $(f '.profile.kbps') kbit/s | $(f '.verdict.rss_slope_pct_per_10min*100|round/100') % per 10 min (mean $(f '.verdict.rss_mean_kib/1024|floor') MiB) | $(f .verdict.fd_min)–$(f .verdict.fd_max) (spread $(f '.verdict.fd_max - .verdict.fd_min'); flat up to $(f .verdict.fd_bound)) | used $(f '.store.soak_start.used_bytes/1048576*10|floor/10') → $(f '.store.end.used_bytes/1048576*10|floor/10') MiB ($(f '.store.per_1000_sessions.used_bytes/1024|floor') KiB per 1,000 sessions); expired codes+tokens left $(f .store.end.expired_past_grace) | $(f .errors_total) (ended by a redial: $(f .sessions_ended_by_redial)) | gateway $(f '.gateway_cpu_mean_pct_of_core|floor') %, load generator $(f '.loadgen_cpu_mean_pct_of_core|floor') % of a core | $(f 'if .pass then "**pass**" else "**fail**" end') | \`benches/soak.sh --minutes $MINUTES --sessions $SESSIONS --transport $TRANSPORT${EXTRA[*]:+ -- ${EXTRA[*]}}\` |"
HEADER="| run | load | RSS slope, last $(f '.verdict.window_secs/60|floor') min | descriptors | store | errors | CPU (mean) | verdict | command |
|---|---|---|---|---|---|---|---|---|"
echo >&2
echo "$HEADER"
echo "$ROW"
if [ $RECORD = 1 ]; then
  {
    echo
    echo "## Soak $STAMP (\`benches/soak.sh\`)"
    echo
    echo "$HEADER"
    echo "$ROW"
    echo
    echo "Summary with every sample: \`target/bench-results/soak-$STAMP/summary.json\`; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  } >> "$ROOT/benches/RESULTS.md"
fi
exit "$RC"
