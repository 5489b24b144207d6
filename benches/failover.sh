#!/usr/bin/env bash
# P8, failover of a hung gateway: benches/failover.sh [ROUNDS=10]
#
# Each round is one run of the end-to-end test
# `a_hung_gateway_is_left_within_the_idle_timeout_over_{tcp,quic}` (real
# processes: PostgreSQL, two gateways, an agent, `kakehashi connect`): gw1 is
# frozen with SIGSTOP and the test prints when the agent dropped its tunnel,
# when the laptop left gw1, and when its next session was open through gw2.
# Prints p50 / p99 / max of each over the rounds, per transport.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
cargo build -q -p kakehashi-gateway -p kakehashi-agent -p kakehashi-client
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
for t in tcp quic; do
  for _ in $(seq "$ROUNDS"); do
    cargo nextest run -p kakehashi-tests --test e2e --no-capture \
      -E "test(/a_hung_gateway_is_left_within_the_idle_timeout_over_$t\$/)" 2>&1 \
      | grep -E "^$t: gw1 hung" >>"$LOG" \
      || { echo "round failed ($t)" >&2; exit 1; }
  done
done
# "tcp: gw1 hung (SIGSTOP); the laptop left it after 4.02s and its next
# session opened through gw2 after 4.03s; the agent dropped gw1's tunnel after 3.00s"
stat() { # transport field-name sed-expression
  grep "^$1:" "$LOG" | sed -E "$3" | sort -g | awk -v t="$1" -v w="$2" '
    { v[NR] = $1 }
    END {
      p50 = v[int((NR + 1) / 2)]; i = int(NR * 0.99 + 0.999); if (i > NR) i = NR
      printf "| %s | %s | %d | %.2f s | %.2f s | %.2f s |\n", t, w, NR, p50, v[i], v[NR]
    }'
}
echo "| transport | from SIGSTOP of gw1 to | rounds | p50 | p99 | max |"
echo "|---|---|---|---|---|---|"
for t in tcp quic; do
  stat "$t" "the agent dropped gw1's tunnel" 's/.*tunnel after ([0-9.]+)(ms|s).*/\1 \2/; s/ ms$/e-3/; s/ s$//'
  stat "$t" "the laptop left gw1" 's/.*left it after ([0-9.]+)(ms|s).*/\1 \2/; s/ ms$/e-3/; s/ s$//'
  stat "$t" "its next session open through gw2" 's/.*through gw2 after ([0-9.]+)(ms|s).*/\1 \2/; s/ ms$/e-3/; s/ s$//'
done
