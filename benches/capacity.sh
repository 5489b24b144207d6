#!/usr/bin/env bash
# Capacity per core (issue Resilience, item 5; not in CI: two cores, minutes).
#
#   benches/capacity.sh [--tcp-sizes "1000 2000 2800"] [--quic-sizes "500 1000 1400"]
#                       [--duration 30] [--ram-gib 8] [--link-mbps 1000]
#                       [--transports "tcp quic"] [--bare] [--record]
#
# The gateway pinned to core 0 (`taskset -c 0`, through the load
# generator's KAKEHASHI_BENCH_WRAP) and the load generator pinned to core 1;
# for each transport and size, `kakehashi-loadgen sessions` at the office
# mix of benches/README.md ("The office traffic mix"), admission through a
# seeded SQLite store as deployed (`--bare`: the bare relay), then the same
# paced sessions through HAProxy pinned to core 0 (TLS 1.3 and mutual TLS
# on both legs, one thread, as the gateway has one core) and straight to
# the load generator's desk with no relay. HAProxy has no QUIC leg: the
# QUIC rows are compared with HAProxy over TLS/TCP at the same size.
#
# From each run's JSON: the gateway's CPU-seconds per GB relayed (both
# directions, headers of the bench protocol included) and per
# session-hour, HAProxy's same figures and the ratio, p99 against the
# no-relay p99, the load generator's own CPU (a row where it reaches 80 %
# of its core measures the load generator: marked invalid), the gateway's
# KiB per session, and the sessions per core these extrapolate to at the
# mix: sessions × 70 % / gateway CPU %, against what memory (--ram-gib at
# the measured KiB per session) and the network (--link-mbps at the mix's
# mean rate) hold; the smallest of the three is what runs out first.
#
# Output: target/bench-results/capacity-<stamp>/ (JSON and progress log per
# run, the gateway's logs under work/, capacity.md with the table). Prints
# the Markdown for benches/RESULTS.md; --record appends it. Defaults keep
# the load generator under 80 % of its core on the 2-core bench machine;
# BENCH_NO_BUILD=1 skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/lib.sh
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

TCP_SIZES="1000 2000 2800"
QUIC_SIZES="500 1000 1400"
TRANSPORTS="tcp quic"
DURATION=30
RAM_GIB=8
LINK_MBPS=1000
STORE=(--store)
RECORD=0
usage() {
  echo "usage: benches/capacity.sh [--tcp-sizes \"A B C\"] [--quic-sizes \"A B C\"] [--duration S] [--ram-gib G] [--link-mbps M] [--transports \"tcp quic\"] [--bare] [--record]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --tcp-sizes) TCP_SIZES="$2"; shift ;;
    --quic-sizes) QUIC_SIZES="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --ram-gib) RAM_GIB="$2"; shift ;;
    --link-mbps) LINK_MBPS="$2"; shift ;;
    --transports) TRANSPORTS="$2"; shift ;;
    --bare) STORE=() ;;
    --record) RECORD=1 ;;
    *) usage ;;
  esac
  shift
done

# The office traffic mix (benches/README.md, "The office traffic mix").
# Keep the two in step.
MIX=(--hz 10 --kbps 150 --burst-every 10 --burst-secs 1 --burst-factor 4 --up-bytes 64
     --heavy-frac 0.01 --heavy-kbps 3000 --idle-frac 0.2)

need_two_cores "capacity.sh pins the gateway and the load generator to a core each"
# Pinning gives each side a core only if nothing else runs on it.
warn_if_loaded
bench_limits
need_deb haproxy haproxy
need_deb jq jq
need_deb taskset util-linux

bench_build
LG=$TARGET/release/kakehashi-loadgen
PKI=$TARGET/bench-pki
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$TARGET/bench-results/capacity-$STAMP
mkdir -p "$OUT"
"$LG" --pki-dir "$PKI" pki > "$OUT/pki.json"
CA=$(jq -r .ca "$OUT/pki.json"); CRL=$(jq -r .crl "$OUT/pki.json")
cat "$(jq -r .gateway_cert "$OUT/pki.json")" "$(jq -r .gateway_key "$OUT/pki.json")" > "$OUT/haproxy-server.pem"
cat "$(jq -r .relay_cert "$OUT/pki.json")" "$(jq -r .relay_key "$OUT/pki.json")" > "$OUT/haproxy-client.pem"
mapfile -t PORTS < <("$LG" free-ports 2)
P_HAP=${PORTS[0]} P_DESK=${PORTS[1]}

# HAProxy as benches/run.sh runs it (benches/lib.sh), with one thread on core 0.
haproxy_config "$OUT" "$P_HAP" "$P_DESK" 1 "$CA" "$CRL"
HAP_PID=""
cleanup() { [ -z "$HAP_PID" ] || kill "$HAP_PID" 2>/dev/null || true; }
trap cleanup EXIT
# `-db`: one foreground process, whose CPU the load generator reads from /proc.
taskset -c 0 haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy.log" 2>&1 & HAP_PID=$!
sleep 0.5
kill -0 "$HAP_PID" || { cat "$OUT/haproxy.log" >&2; exit 1; }

run() { # name, loadgen args…
  local name=$1 t0=$SECONDS; shift
  echo "== $name: kakehashi-loadgen $*" >&2
  KAKEHASHI_BENCH_WRAP="taskset -c 0" taskset -c 1 "$LG" --pki-dir "$PKI" --work-dir "$OUT/work" \
    --json "$OUT/$name.json" "$@" >/dev/null 2>"$OUT/$name.log" || { tail -5 "$OUT/$name.log" >&2; return 1; }
  echo "   $name took $(( SECONDS - t0 )) s" >&2
}

# One table row from a run's JSON (jq does the arithmetic).
ROW_JQ='
def r(x; n): if x == null then "—" else ((x * pow(10; n) | round) / pow(10; n) | tostring) end;
def cpu_s(u; secs): if u == null or u.samples == 0 then null else u.cpu_mean_pct / 100 * secs end;
def per_gb(c; bytes): if c == null or bytes == 0 then null else c / (bytes / 1e9) end;
def per_sh(c; n; secs): if c == null or n == 0 then null else c / (n * secs / 3600) end;
. as $j
| ($j.baseline.through_relay // null) as $h
| ($j.baseline.direct // null) as $d
| cpu_s($j.gateway_steady; $j.steady_secs) as $gc
| per_gb($gc; $j.steady_bytes_both) as $ggb
| per_sh($gc; $j.sessions_opened; $j.steady_secs) as $gsh
| (if $h then cpu_s($h.relay_steady; $h.steady_secs) else null end) as $hc
| (if $h then per_gb($hc; $h.steady_bytes_both) else null end) as $hgb
| (if $h then per_sh($hc; $h.sessions_opened; $h.steady_secs) else null end) as $hsh
| $j.loadgen_steady.cpu_mean_pct as $lg
| ($h.loadgen_steady.cpu_mean_pct // null) as $hlg
| ($lg < 80 and $j.errors_total == 0 and $j.sessions_opened == $j.sessions) as $valid
| ($h != null and $hlg != null and $hlg < 80 and $h.errors_total == 0 and $h.sessions_opened == $j.sessions_opened) as $hvalid
| $j.gateway_steady.cpu_mean_pct as $gpct
| (if $gpct > 0 then $j.sessions_opened * 70 / $gpct else null end) as $by_cpu
| $j.gateway_kib_per_session_total as $kib
| (if $kib > 0 then $ram * 1024 * 1024 / $kib else null end) as $by_mem
| ($link * 1000 / $j.mean_kbps_per_session) as $by_net
| ([["CPU", $by_cpu], ["memory", $by_mem], ["network", $by_net]] | map(select(.[1] != null)) | min_by(.[1])) as $first
| [ (if $j.transport == "tcp" then "TLS/TCP" else "QUIC" end),
    "\($j.sessions_opened)/\($j.sessions)",
    "\(r($j.steady_mbps_down; 0)) Mbit/s",
    "\(r($gpct; 1)) %",
    r($ggb; 2), r($gsh; 2),
    (if $h then "\(r($hgb; 2)) / \(r($hsh; 2)) (\(r($h.relay_steady.cpu_mean_pct; 1)) %)\(if $hvalid then "" else " invalid" end)" else "—" end),
    (if $ggb != null and $hgb != null and $hgb > 0 then "\(r($ggb / $hgb; 2))×" else "—" end),
    "\(r($j.rtt_steady.p99_us / 1000; 1)) ms",
    (if $h then "\(r($h.rtt_steady.p99_us / 1000; 1)) ms" else "—" end),
    (if $d then "\(r($d.rtt_steady.p99_us / 1000; 1)) ms (\(r($j.rtt_steady.p99_us / ([$d.rtt_steady.p99_us, 1] | max); 2))×)" else "—" end),
    "\(r($lg; 0)) %\(if $h then " / \(r($hlg; 0)) % / \(r($d.loadgen_steady.cpu_mean_pct; 0)) %" else "" end)",
    "\(r($kib; 1))",
    "\(r($by_cpu; 0)) (mem \(r($by_mem; 0)), net \(r($by_net; 0))): \($first[0])",
    (if $valid then "valid" else "invalid: " + ([if $lg >= 80 then "load generator \(r($lg; 0)) %" else empty end, if $j.errors_total > 0 then "\($j.errors_total) errors" else empty end, if $j.sessions_opened < $j.sessions then "sessions not all open" else empty end] | join(", ")) end)
  ] | "| " + join(" | ") + " |"'

MD=$OUT/capacity.md
{
  echo "| transport | sessions | carried (down) | gateway CPU (one core) | gateway CPU-s/GB | gateway CPU-s/session-hour | HAProxy (TLS/TCP) CPU-s/GB / per session-hour (its CPU) | CPU/GB vs HAProxy | p99 | HAProxy p99 | no-relay p99 (gateway ×) | load generator CPU (gateway / HAProxy / no-relay run) | gateway KiB/session | sessions per core at 70 % (memory at ${RAM_GIB} GiB, network at ${LINK_MBPS} Mbit/s): first to run out | row |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
} > "$MD"
for T in $TRANSPORTS; do
  case $T in tcp) SIZES=$TCP_SIZES ;; quic) SIZES=$QUIC_SIZES ;; *) usage ;; esac
  for N in $SIZES; do
    NAME=cap-$T-$N
    run "$NAME" sessions --transport "$T" --sessions "$N" --duration "$DURATION" ${STORE[@]+"${STORE[@]}"} "${MIX[@]}" \
      --baseline "tls:127.0.0.1:$P_HAP" --backend-tls "127.0.0.1:$P_DESK" --baseline-pid "$HAP_PID" || continue
    jq -r --argjson ram "$RAM_GIB" --argjson link "$LINK_MBPS" "$ROW_JQ" "$OUT/$NAME.json" | tee -a "$MD" >&2
  done
done

MEAN=$(jq -r '.mean_kbps_per_session * 10 | round / 10' "$(ls "$OUT"/cap-*.json | head -1)" 2>/dev/null || echo "?")
NOTE="Mix: benches/README.md \"The office traffic mix\" (${MEAN} kbit/s mean per session). Gateway and HAProxy pinned to core 0, load generator to core 1 (\`taskset\`); ${DURATION} s steady per run (HAProxy and no-relay runs: up to 30 s); admission $([ ${#STORE[@]} = 0 ] && echo "none (bare relay)" || echo "through a seeded SQLite store"). HAProxy and the no-relay path are TLS/TCP at the same size for both transports. Sessions per core = sessions × 70 % / gateway CPU %; a row whose load generator reached 80 % of its core is invalid. JSON: \`target/bench-results/capacity-$STAMP/\`; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo >&2
cat "$MD"
echo
echo "$NOTE"
if [ $RECORD = 1 ]; then
  {
    echo
    echo "## Capacity per core, run $STAMP (\`benches/capacity.sh\`; issue: Resilience, item 5)"
    echo
    cat "$MD"
    echo
    echo "$NOTE"
  } >> "$ROOT/benches/RESULTS.md"
fi
