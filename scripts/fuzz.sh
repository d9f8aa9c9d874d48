#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/) for a fixed number of executions from its seed
# corpus (fuzz/corpus/<target>, copied: the repository's corpus does not grow) and prints
# executions and executions per second per target. Build the targets first:
#
#   cd fuzz && RUSTFLAGS="--cfg madsim" cargo +nightly fuzz build -O -a -s none \
#       --target-dir /work/main/target/fuzz
#   scripts/fuzz.sh [RUNS=1000000] [TARGET...]
#
# Exits 1 if a target crashed (its input is left next to its log). FUZZ_BIN_DIR overrides
# where the built targets are.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-1000000}
shift || true
bin_dir=${FUZZ_BIN_DIR:-/work/main/target/fuzz/x86_64-unknown-linux-gnu/release}
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(commit_log_record consume_queue key_index checkpoint case_file tiered_metadata tiered_segment tiered_index
        dledger_entry dledger_index dledger_records)
fi
work=$(mktemp -d /tmp/fuzz.XXXXXX)
failed=0
printf '%-20s %12s %10s  %s\n' target execs execs/s result
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    cp -r "$root/fuzz/corpus/$t/." "$work/$t/" 2>/dev/null || true
    log="$work/$t.log"
    start=$(date +%s.%N)
    if "$bin_dir/$t" "$work/$t" -runs="$runs" -print_final_stats=1 -artifact_prefix="$work/$t-" \
        -rss_limit_mb=2048 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH, see $log"
        failed=1
    fi
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { if (e ~ /^[0-9]+$/ && s > 0) printf "%.0f", e / s; else print "?" }')
    printf '%-20s %12s %10s  %s\n' "$t" "$execs" "$rate" "$result"
done
echo "work dir $work"
exit "$failed"
