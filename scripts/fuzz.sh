#!/usr/bin/env bash
# One fuzz step of the test suite: runs a libFuzzer binary for a while over its corpus and
# seeds, prints the summary lines, and fails (with the fuzzer's status) when the fuzzer
# does: a crash, a leak, a timeout (one input running over 25 s), or a binary that cannot run.
#
#   scripts/fuzz.sh BINARY SECONDS CORPUS_DIR SEED_DIR [libFuzzer flags...]
#
# The whole output goes to CORPUS_DIR.log; reproducers (crash-*, leak-*, timeout-*) go to
# CORPUS_DIR.artifacts/, never into the current directory.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 BINARY SECONDS CORPUS_DIR SEED_DIR [libFuzzer flags...]" >&2
  exit 2
fi
bin=$1 secs=$2 corpus=$3 seeds=$4
shift 4
log=$corpus.log
artifacts=$corpus.artifacts
mkdir -p "$corpus" "$artifacts"
touch "$artifacts/.start"
status=0
"$bin" -max_total_time="$secs" -max_len=4096 -timeout=25 -print_final_stats=1 \
  -artifact_prefix="$artifacts/" "$@" "$corpus" "$seeds" >"$log" 2>&1 || status=$?
sed -n -E '/stat::number_of_executed_units|ERROR|SUMMARY/p' "$log"
if [[ $status -ne 0 ]]; then
  echo "== $bin failed (exit status $status); the end of $log:"
  tail -n 40 "$log"
  find "$artifacts" -type f ! -name .start -newer "$artifacts/.start" -printf 'reproducer: %p\n'
  exit "$status"
fi
# a run that executed nothing proves nothing
units=$(sed -n -E 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
if [[ -z "$units" || "$units" -eq 0 ]]; then
  echo "== $bin exited 0 without executing any input; the end of $log:"
  tail -n 20 "$log"
  exit 1
fi
