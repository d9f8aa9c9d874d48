#!/usr/bin/env bash
# A short smoke of DLedger over real TCP: three member processes on loopback
# (engine/examples/dledger_node.rs, launched by engine/examples/dledger_bench.rs), a leader
# elected, 8 producers × 50 puts acknowledged on a majority's commit, every acknowledged
# message read back from the leader with its body checked; then all three killed with
# `kill -9`, restarted on their directories (recovery), and every acknowledged message read
# back again from the new leader. Under 30 s; exits non-zero if a put is not acknowledged or
# an acknowledged message is missing or different.
#
#   RUSTFLAGS="" cargo build --release --target-dir target/std -p engine --example dledger_node --example dledger_bench
#   scripts/dledger_smoke.sh [WORK_DIR=a new temporary directory]
#
# DLEDGER_BENCH_BIN overrides the bench binary (dledger_node must sit beside it).
set -euo pipefail
work=${1:-$(mktemp -d /tmp/dledger-smoke.XXXXXX)}
bin=${DLEDGER_BENCH_BIN:-$(dirname "$0")/../target/std/release/examples/dledger_bench}
[[ -x $bin && -x $(dirname "$bin")/dledger_node ]] || { echo "no $bin or dledger_node beside it: build them first (see the header)" >&2; exit 2; }
# Sparse files: zero-filling the members' files would take most of the time allowed.
timeout 30 "$bin" --dir "$work" --only replicated --producers 8 --each 50 --no-preallocate --crash-restart
