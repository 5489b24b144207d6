#!/usr/bin/env bash
# The fuzzing campaign (issue #19): build every cargo-fuzz target, then run
# each in turn, one job, until it has made 10 million executions or spent
# its time budget, whichever comes first. Prints executions, exec/s, corpus
# size and crashes per target, writes a Markdown table for
# benches/RESULTS.md, and exits non-zero if any target crashed (or timed
# out, or ran out of memory) on any input.
#
#   fuzz/campaign.sh                    # 60 minutes per target at most (the full campaign)
#   fuzz/campaign.sh --minutes 2        # a short run
#   fuzz/campaign.sh --targets certs,plan_csv --minutes 5
#
# Options:
#   --minutes N     time budget per target (default 60)
#   --runs N        execution budget per target (default 10000000)
#   --targets LIST  comma-separated targets (default: every target, `cargo fuzz list`)
#   --no-cmin       keep the corpus as the run left it (default: minimise it
#                   with `cargo fuzz cmin` after each run)
#   --summary FILE  where the Markdown table goes (default fuzz/target/campaign-summary.md)
#
# Corpora live in fuzz/corpus/<target> (git-ignored; see fuzz/README.md):
# each run starts from the corpus the last one left plus the committed
# seeds in fuzz/seeds/<target>, and libFuzzer adds what it finds to the
# corpus. Crashes are saved in fuzz/artifacts/<target>/.
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (fuzz/README.md). cargo-fuzz is installed if absent.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=60
runs=10000000
targets=""
cmin=1
summary=fuzz/target/campaign-summary.md
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --targets) targets=${2//,/ }; shift 2 ;;
    --no-cmin) cmin=0; shift ;;
    --summary) summary=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "campaign.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $minutes in ''|*[!0-9]*) echo "campaign.sh: --minutes takes whole minutes" >&2; exit 2 ;; esac
case $runs in ''|*[!0-9]*) echo "campaign.sh: --runs takes a number" >&2; exit 2 ;; esac

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

echo "==> Building the fuzz targets (cargo fuzz build, address sanitizer)"
cargo fuzz build
if [ -z "$targets" ]; then
  targets=$(cargo fuzz list)
fi

# What libFuzzer is told for every target. -max_len: at least 20000, so
# inputs reach the 16 KiB frame payload limit; more when a seed is longer.
# -timeout: one input taking 10 s is a hang, reported like a crash.
common=(-max_total_time=$((minutes * 60)) -runs="$runs" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1)

mkdir -p "$(dirname "$summary")"
rows=()
failed=()
for t in $targets; do
  corpus=fuzz/corpus/$t
  seeds=fuzz/seeds/$t
  artifacts=fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  [ -d "$seeds" ] || seeds=""
  max_len=20000
  if [ -n "$seeds" ]; then
    longest=$(find "$seeds" -type f -printf '%s\n' | sort -n | tail -n1)
    [ -n "$longest" ] && [ "$longest" -gt "$max_len" ] && max_len=$longest
  fi
  before=$(find "$artifacts" -type f | wc -l)
  log=fuzz/target/campaign-$t.log
  echo
  echo "==> $t: up to $runs executions or $minutes min (log: $log)"
  start=$SECONDS
  set +e
  # shellcheck disable=SC2086 # $seeds is one directory or nothing
  cargo fuzz run "$t" "$corpus" $seeds -- "${common[@]}" -max_len="$max_len" >"$log" 2>&1
  rc=$?
  set -e
  secs=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  if [ -z "$execs" ]; then
    # No final stats (the run stopped on a crash): the last status line.
    execs=$(grep -o '^#[0-9]*' "$log" | tail -n1 | tr -d '#')
    execs=${execs:-0}
    rate=$((execs / (secs > 0 ? secs : 1)))
  fi
  after=$(find "$artifacts" -type f | wc -l)
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  if [ "$cmin" = 1 ] && [ "$crashes" -eq 0 ]; then
    cargo fuzz cmin "$t" "$corpus" -- -max_len="$max_len" >"fuzz/target/campaign-$t-cmin.log" 2>&1 ||
      echo "   (cmin failed; the corpus is kept as the run left it: fuzz/target/campaign-$t-cmin.log)"
  fi
  files=$(find "$corpus" -type f | wc -l)
  kib=$(find "$corpus" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%d", (s + 1023) / 1024 }')
  stop="time"
  [ "$execs" -ge "$runs" ] && stop="runs"
  [ "$crashes" -gt 0 ] && stop="crash"
  printf '   executions %s, %s exec/s, %s s, corpus %s files (%s KiB), crashes %s\n' \
    "$execs" "$rate" "$secs" "$files" "$kib" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    failed+=("$t")
    echo "   CRASH: see $log and $artifacts/"
    grep -m5 -E "panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY" "$log" | sed 's/^/   /' || true
  fi
  rows+=("| \`$t\` | $execs | $rate | $secs | $stop | $files ($kib KiB) | $crashes |")
done

{
  echo "Fuzzing campaign, $(date -u +%Y-%m-%d) (\`fuzz/campaign.sh --minutes $minutes\`; one job each, address sanitizer, $(nproc) cores, $(git describe --always --dirty 2>/dev/null || echo '?')):"
  echo
  echo "| target | executions | exec/s | seconds | stopped by | corpus after cmin (files, size) | crashes |"
  echo "| --- | ---: | ---: | ---: | --- | ---: | ---: |"
  printf '%s\n' "${rows[@]}"
} >"$summary"
echo
cat "$summary"
echo
echo "(table written to $summary)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "campaign.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "campaign.sh: no crash in $(echo "$targets" | wc -w) targets"
