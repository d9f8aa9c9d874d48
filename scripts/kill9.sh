#!/usr/bin/env bash
# The real-kernel check of the process-crash model: N rounds of producers on a real directory
# (the real build, RealStorage), killed with `kill -9` at a random point, then the store is
# reopened (recovery) and checked: every acknowledged message recovered, each queue a gapless
# prefix readable by offset and by key (engine/examples/kill9.rs). Every fourth round starts
# from an empty directory; the others crash a store that has already recovered from a crash.
#
#   RUSTFLAGS="" cargo build --release --target-dir /work/main/target/std -p engine --examples
#   scripts/kill9.sh [ROUNDS=200] [WORK_DIR=a new temporary directory]
#
# Prints `rounds N violations V`; exits 1 if V > 0. KILL9_BIN overrides the binary.
set -euo pipefail
rounds=${1:-200}
work=${2:-$(mktemp -d /tmp/kill9.XXXXXX)}
bin=${KILL9_BIN:-/work/main/target/std/release/examples/kill9}
[[ -x $bin ]] || { echo "no $bin: build it first (see the header)" >&2; exit 2; }
mkdir -p "$work"
dir="$work/store"
violations=0
acked_total=0
for ((r = 1; r <= rounds; r++)); do
    if ((r % 4 == 1)); then rm -rf "$dir"; fi
    "$bin" write "$dir" 4 2>>"$work/write.log" &
    pid=$!
    # 50..650 ms: through the open, the first file rolls and steady producing.
    sleep "$(printf '0.%03d' $((50 + RANDOM % 600)))"
    if ! kill -9 "$pid" 2>/dev/null; then
        echo "round $r: the writer had exited before the kill (see $work/write.log)" >&2
    fi
    wait "$pid" 2>/dev/null || true
    if "$bin" check "$dir" >"$work/check-$r.log" 2>&1; then
        rm -f "$work/check-$r.log"
    else
        violations=$((violations + 1))
        echo "round $r: violation, see $work/check-$r.log" >&2
        sed -n '1,5p' "$work/check-$r.log" >&2
    fi
done
echo "rounds $rounds violations $violations (work dir $work)"
((violations == 0))
