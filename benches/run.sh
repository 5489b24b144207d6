#!/usr/bin/env bash
# Side-by-side benchmarks of the performance issue, rows P1–P7.
#
#   benches/run.sh [--quick] [--rows "P1 P3"] [--no-record]
#
# Installs its own baselines (HAProxy and socat from Debian, rathole with
# cargo), builds the release binaries, then for each row alternates the
# system and its baseline (ABAB…, 5 pairs) and reports the median ratio.
# Results (JSON per row) go to target/bench-results/<stamp>/; a table with
# the command of each row is appended to benches/RESULTS.md unless
# --no-record. --quick: reduced sizes, under a minute of measuring on an
# idle machine (each row prints how long it took); its numbers are for
# smoke-testing, not for the record of a target.
#
# BENCH_P2_SIZES="5000" sets P2's sizes of a full run (largest first;
# BENCH_P5_SIZES, BENCH_P5_TCP_SIZES, BENCH_P6_SIZES and BENCH_P6_TCP_SIZES
# likewise, a blank " " skips that ladder); BENCH_NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
ROOT=$PWD

QUICK=0
RECORD=1
ROWS="P1 P2 P3 P4 P5 P6 P7"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --rows) ROWS="$2"; shift ;;
    --no-record) RECORD=0 ;;
    *) echo "usage: benches/run.sh [--quick] [--rows \"P1 P2 …\"] [--no-record]" >&2; exit 2 ;;
  esac
  shift
done

bench_limits

# ---- baselines, installed by the script itself --------------------------
need_deb haproxy haproxy
need_deb socat socat
need_deb openssl openssl
need_deb jq jq
TOOLS=$ROOT/target/bench-tools
RATHOLE=$TOOLS/bin/rathole
if [ ! -x "$RATHOLE" ]; then
  # rathole 0.5.0 (crates.io) has TLS only through native-tls (OpenSSL);
  # there is no rustls feature in a released version. `--locked` fails on
  # current Rust (its locked `time` 0.3.29 no longer compiles), so the
  # dependencies are resolved afresh.
  need_deb pkg-config pkg-config
  dpkg -s libssl-dev >/dev/null 2>&1 || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev >/dev/null; }
  cargo install rathole --version 0.5.0 --no-default-features --features server,client,tls \
    --root "$TOOLS" --target-dir "$ROOT/target/rathole-build"
fi

bench_build
LG=$ROOT/target/release/kakehashi-loadgen
PKI=$ROOT/target/bench-pki
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/target/bench-results/$STAMP
mkdir -p "$OUT"
"$LG" --pki-dir "$PKI" pki > "$OUT/pki.json"
CA=$(jq -r .ca "$OUT/pki.json"); CRL=$(jq -r .crl "$OUT/pki.json")
cat "$(jq -r .gateway_cert "$OUT/pki.json")" "$(jq -r .gateway_key "$OUT/pki.json")" > "$OUT/haproxy-server.pem"
cat "$(jq -r .relay_cert "$OUT/pki.json")" "$(jq -r .relay_key "$OUT/pki.json")" > "$OUT/haproxy-client.pem"
openssl pkcs12 -export -inkey "$(jq -r .gateway_key "$OUT/pki.json")" -in "$(jq -r .gateway_cert "$OUT/pki.json")" \
  -certfile "$CA" -out "$OUT/rathole.p12" -passout pass:bench

mapfile -t PORTS < <("$LG" free-ports 5)
P_HAP=${PORTS[0]} P_BTLS=${PORTS[1]} P_BPLAIN=${PORTS[2]} P_SOCAT=${PORTS[3]} P_TLSACC=${PORTS[4]}

# HAProxy (benches/lib.sh), 2 threads like the gateway's 2 workers.
haproxy_config "$OUT" "$P_HAP" "$P_BTLS" 2 "$CA" "$CRL"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy.log" 2>&1 & PIDS+=($!)
socat TCP-LISTEN:$P_SOCAT,bind=127.0.0.1,fork,reuseaddr TCP:127.0.0.1:$P_BPLAIN >"$OUT/socat.log" 2>&1 & PIDS+=($!)
"$ROOT/target/release/tls-accept" --pki-dir "$PKI" --listen 127.0.0.1:$P_TLSACC >"$OUT/tls-accept.log" 2>&1 & PIDS+=($!)
sleep 0.5

COMMON=(--pki-dir "$PKI" --work-dir "$OUT/work")
PAIRS=(--pairs 5 --baseline tls:127.0.0.1:$P_HAP --backend-tls 127.0.0.1:$P_BTLS)
FLOOR=(--floor plain:127.0.0.1:$P_SOCAT --backend-plain 127.0.0.1:$P_BPLAIN)
if [ $QUICK = 1 ]; then
  # Under a minute of measuring: fewer P2 pairs (each starts a gateway and
  # rathole), a short settle before paced sessions start, and P5/P6 over
  # QUIC only (the laptops' transport; a full run adds TLS/TCP).
  P1_FLOOR=(); SECS=0.3; RR=2000; HS_SECS=0.4; IDLE_SIZES=100; IDLE_SETTLE=0.3; IDLE_PAIRS=2
  SESS_SETTLE=(--settle 0.3)
  P5_SIZES=200; P5_TCP_SIZES=" "; P5_SECS=1; P6_SIZES=150; P6_TCP_SIZES=" "; P6_STORM_SECS=2; P6_SECS=1; P7_SIZES=300
else
  P1_FLOOR=("${FLOOR[@]}"); SECS=3; RR=5000; HS_SECS=3; IDLE_SIZES="${BENCH_P2_SIZES:-20000 10000 5000}"; IDLE_SETTLE=3; IDLE_PAIRS=5
  SESS_SETTLE=()
  P5_SIZES="${BENCH_P5_SIZES:-20000 5000 2000 1000 500}"; P5_SECS=60
  # Over TCP a session holds three descriptors on each side (laptop, agent,
  # data channel): 20,000 do not fit under this machine's limit of 20,000.
  P5_TCP_SIZES="${BENCH_P5_TCP_SIZES:-5000 2000 1000 500}"
  P6_SIZES="${BENCH_P6_SIZES:-15000 3000 1500 600 300}"; P6_STORM_SECS=60; P6_SECS=20
  # 15,000 live + 5,000 new over TCP need ~60,000 descriptors per side; the
  # largest that fits under 20,000 is 4,500 + 1,500.
  P6_TCP_SIZES="${BENCH_P6_TCP_SIZES:-4500 3000 2250 1500 600}"
  P7_SIZES="20000 10000 5000"
fi

MD=$OUT/rows.md
: > "$MD"
row() { echo "| $STAMP | $1 | $2 | $3 | $4 | $5 | $6 | \`$7\` |" >> "$MD"; }
fmt() { jq -r "$1" "$2"; }
# Median ratio of a row, or n/a when no pair could be measured above the noise.
ratio() { jq -r 'if .median_ratio == null then "n/a" else (.median_ratio*100|floor/100|tostring) + "×" end' "$1"; }
run() { # name, loadgen args… ; JSON to $OUT/name.json, progress to name.log
  local name=$1 t0=$SECONDS; shift
  echo "== $name: kakehashi-loadgen $*" >&2
  "$LG" "${COMMON[@]}" --json "$OUT/$name.json" "$@" >/dev/null 2>"$OUT/$name.log" || { tail -5 "$OUT/$name.log" >&2; return 1; }
  echo "   $name took $(( SECONDS - t0 )) s" >&2
}
# The largest size that runs: a full run steps down when the machine cannot
# hold a size (descriptors, memory, time-outs); the row says which ran.
# scaled NAME "SIZES" ARGS-FUNCTION: ARGS-FUNCTION N prints the loadgen args.
scaled() {
  local name=$1 sizes=$2 fn=$3 n
  for n in $sizes; do
    # shellcheck disable=SC2046
    if run "$name-$n" $($fn "$n"); then echo "$OUT/$name-$n.json"; return 0; fi
  done
  return 1
}
# The largest size that runs and, stepping further down, the largest that
# meets the row's bar: every session open and no errors, and the jq test
# BAR if given (P6: its set-up and live-session targets; a figure missing
# from the JSON fails it). Prints the JSON of the largest that ran, then (if
# different) of the largest that met the bar.
# scaled_clean NAME "SIZES" ARGS-FUNCTION [BAR]
scaled_clean() {
  local name=$1 sizes=$2 fn=$3 bar=${4:-true} n first=""
  for n in $sizes; do
    # shellcheck disable=SC2046
    run "$name-$n" $($fn "$n") || continue
    local j=$OUT/$name-$n.json
    [ -n "$first" ] || { first=$j; echo "$j"; }
    if [ "$(fmt ".errors_total == 0 and .sessions_opened == .sessions and ($bar)" "$j")" = true ]; then
      [ "$j" = "$first" ] || echo "$j"
      return 0
    fi
  done
  [ -n "$first" ]
}
P2_T=quic
p2_args() { echo idle --transport $P2_T --sessions "$1" --settle $IDLE_SETTLE --pairs $IDLE_PAIRS --rathole "$RATHOLE" --rathole-p12 "$OUT/rathole.p12"; }
# P5 and P6 run the gateway as deployed: every session admitted through a
# SQLite store (login token, the default policy, BCP declared for a snow day).
# P5 then runs the same paced sessions through HAProxy and straight to the
# desk (TLS over TCP), where descriptors allow: the floor of this machine.
P5_T=quic
p5_args() { echo sessions --transport $P5_T --store --sessions "$1" --duration $P5_SECS ${SESS_SETTLE[@]+"${SESS_SETTLE[@]}"} --baseline tls:127.0.0.1:$P_HAP --backend-tls 127.0.0.1:$P_BTLS; }
P6_T=quic
p6_args() { echo sessions --transport $P6_T --store --sessions "$1" --storm $(( $1 / 3 )) --storm-secs $P6_STORM_SECS --duration $P6_SECS ${SESS_SETTLE[@]+"${SESS_SETTLE[@]}"}; }
p7_args() { echo sessions --sessions 0 --agents "$1" --duration 1 ${SESS_SETTLE[@]+"${SESS_SETTLE[@]}"} --restart; }

for R in $ROWS; do case $R in
P1)
  for s in 1 8; do
    run P1-$s bulk --streams $s --secs $SECS "${PAIRS[@]}" ${P1_FLOOR[@]+"${P1_FLOOR[@]}"} || continue
    J=$OUT/P1-$s.json
    row P1 "bulk, $s session(s), TLS both legs" "$(fmt '.median_kakehashi_mbps|floor' $J) Mbit/s" \
      "HAProxy $(fmt '.median_baseline_mbps|floor' $J) Mbit/s$( [ $QUICK = 1 ] || echo " (socat floor $(fmt '.median_floor_mbps|floor' $J))")" \
      "$(ratio $J)" "≥ 1.0×" "benches/run.sh --rows P1 → kakehashi-loadgen bulk --streams $s --secs $SECS --pairs 5"
  done ;;
P2)
  # Both transports, each paired with rathole (ABAB…) in its own loadgen run.
  for P2_T in quic tcp; do
    J=$(scaled P2-$P2_T "$IDLE_SIZES" p2_args) || continue
    row P2 "idle sessions, $([ $P2_T = quic ] && echo QUIC || echo TLS/TCP), N=$(fmt .sessions $J) (a laptop and an agent each)" \
      "$(fmt '.median_incremental*10|floor/10' $J) KiB/session over live tunnels; $(fmt '.median_total*10|floor/10' $J) KiB with the agent's tunnel" \
      "rathole $(fmt '.median_rathole*10|floor/10' $J) KiB/connection" \
      "$(ratio $J)" "≤ 0.5× and ≤ 16 KiB" "benches/run.sh --rows P2 → kakehashi-loadgen $(p2_args "$(fmt .sessions $J)" | sed "s|$OUT|<run dir>|g; s|$ROOT/||g")"
  done ;;
P3)
  run P3 handshakes --secs $HS_SECS --concurrency 32 --pairs 5 --baseline tls:127.0.0.1:$P_TLSACC || continue
  J=$OUT/P3.json
  row P3 "full mutual-TLS handshakes/s (TCP)" "$(fmt '.median_kakehashi_per_sec|floor' $J)/s" \
    "tls-accept $(fmt '.median_baseline_per_sec|floor' $J)/s" "$(ratio $J)" "≥ 0.9×" \
    "benches/run.sh --rows P3 → kakehashi-loadgen handshakes --secs $HS_SECS --concurrency 32 --pairs 5" ;;
P4)
  run P4 rr --count $RR --size 1024 "${PAIRS[@]}" "${FLOOR[@]}" || continue
  J=$OUT/P4.json
  row P4 "added p99 of 1 KiB request/response, TLS both legs" "+$(fmt '.median_kakehashi_added_p99_us|floor' $J) µs" \
    "HAProxy +$(fmt '.median_baseline_added_p99_us|floor' $J) µs (socat +$(fmt '.median_floor_added_p99_us|floor' $J) µs)" \
    "$(ratio $J)" "≤ 1.2×" "benches/run.sh --rows P4 → kakehashi-loadgen rr --count $RR --size 1024 --pairs 5" ;;
P5)
  # Both transports: QUIC (what laptops use) and TLS/TCP (HAProxy's).
  for P5_T in quic tcp; do
  if [ $P5_T = quic ]; then SIZES=$P5_SIZES; else SIZES=$P5_TCP_SIZES; fi
  JS=$(scaled_clean P5-$P5_T "$SIZES" p5_args) || continue
  for J in $JS; do
  row P5 "$(fmt .sessions_opened $J) of $(fmt .sessions $J) paced sessions, $([ $P5_T = quic ] && echo QUIC || echo TLS/TCP), default mix ($(fmt '.offered_mbps|floor' $J) Mbit/s offered), admission through SQLite" \
    "gateway CPU $(fmt '.gateway_steady.cpu_mean_machine_pct|floor' $J) % of the machine (load generator $(fmt '.loadgen_steady.cpu_mean_machine_pct|floor' $J) %), p99 $(fmt '.rtt_steady.p99_us/10|floor/100' $J) ms, errors $(fmt .errors_total $J)" \
    "$(fmt 'if .baseline.through_relay then "HAProxy p99 \(.baseline.through_relay.rtt_steady.p99_us/10|floor/100) ms (errors \(.baseline.through_relay.errors_total)); no relay p99 \(.baseline.direct.rtt_steady.p99_us/10|floor/100) ms" else "— (\(.baseline.skipped // "absolute target"))" end' $J)" "—" "CPU ≤ 70 %, p99 ≤ 1 ms, 0 errors" "benches/run.sh --rows P5 → kakehashi-loadgen $(p5_args "$(fmt .sessions $J)" | sed "s/127.0.0.1:$P_HAP/<HAProxy>/; s/127.0.0.1:$P_BTLS/<desk>/")"
  done
  done ;;
P6)
  # Both transports, as P5: TLS/TCP carries more paced traffic per core
  # here, so a larger storm runs within the machine.
  for P6_T in quic tcp; do
  if [ $P6_T = quic ]; then SIZES=$P6_SIZES; else SIZES=$P6_TCP_SIZES; fi
  JS=$(scaled_clean P6-$P6_T "$SIZES" p6_args '(.storm.setup.p99_us // 1e18) <= 200000 and (.storm.live_p99_ratio // 1e18) <= 2') || continue
  for J in $JS; do
  row P6 "login storm, $([ $P6_T = quic ] && echo QUIC || echo TLS/TCP): $(fmt .storm.sessions $J) new over $(fmt .storm.secs $J) s onto $(fmt .sessions_opened $J) live, admission through SQLite" \
    "setup p99 $(fmt '.storm.setup.p99_us/1000|floor' $J) ms, errors $(fmt .errors_total $J), live p99 $(fmt '.storm.live_p99_ratio*100|floor/100' $J)× ($(fmt .storm.live_rtt_before.p99_us $J) → $(fmt .storm.live_rtt_during.p99_us $J) µs)" \
    "— (absolute target)" "—" "setup p99 ≤ 200 ms, 0 errors, live p99 ≤ 2×" "benches/run.sh --rows P6 → kakehashi-loadgen $(p6_args "$(fmt .sessions $J)")"
  done
  done ;;
P7)
  J=$(scaled P7 "$P7_SIZES" p7_args) || continue
  row P7 "reconnect storm: gateway restart (SIGTERM) with $(fmt .agents_up $J) agents" \
    "all back: $(fmt .restart.all_back $J), $(fmt '(.restart.all_back_after_ready_secs // -1)*10|floor/10' $J) s after the new gateway served its first agent ($(fmt '(.restart.all_back_after_stop_secs // -1)*10|floor/10' $J) s after the stop; serving $(fmt '.restart.new_gateway_serving_after_stop_secs*10|floor/10' $J) s after the stop; peak $(fmt '(.restart.returns_per_sec // [0])|max' $J) returns/s)" \
    "— (absolute target)" "—" "all back within 15 s, jittered backoff" "benches/run.sh --rows P7 → kakehashi-loadgen $(p7_args "$(fmt .agents $J)")" ;;
esac; done

echo >&2; cat "$MD" >&2
if [ $RECORD = 1 ] && [ -s "$MD" ]; then
  {
    echo
    if [ $QUICK = 1 ]; then
      echo "## Run $STAMP (\`benches/run.sh --quick\`: reduced sizes, noisy — not a measurement of the targets)"
    else
      echo "## Run $STAMP (\`benches/run.sh\`)"
    fi
    echo
    echo "| run | row | what | kakehashi | baseline | median ratio | target | command |"
    echo "|---|---|---|---|---|---|---|---|"
    cat "$MD"
    echo
    echo "JSON of every row: \`target/bench-results/$STAMP/\`; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  } >> "$ROOT/benches/RESULTS.md"
fi
