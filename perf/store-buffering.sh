#!/usr/bin/env bash
# Usage: perf/store-buffering.sh [RUNS] [ITERATIONS]
# Runs the store-buffering litmus test of the atomics shim (docs/testing.md) RUNS times (default 7)
# with and without the seq_cst fence, ITERATIONS rounds each (default 1000000), interleaved, and
# prints every count and the median. Results also go to perf/results/store-buffering-DATE.txt
# (outside git).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
iterations=${2:-1000000}
swift build -c release --product shmring-test-peer >/dev/null
peer=.build/release/shmring-test-peer
mkdir -p perf/results
out="perf/results/store-buffering-$(date +%Y%m%d-%H%M%S).txt"

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

fenced=()
unfenced=()
for _ in $(seq "$runs"); do
    fenced+=("$($peer store-buffering --iterations "$iterations" --fence seq_cst | sed -n 's/^both_old=//p')")
    unfenced+=("$($peer store-buffering --iterations "$iterations" --fence none | sed -n 's/^both_old=//p')")
done
{
    echo "store-buffering, $iterations rounds per run, $runs runs, $(uname -r), $(nproc) CPUs"
    echo "with seq_cst fence:  ${fenced[*]}  median $(printf '%s\n' "${fenced[@]}" | median)"
    echo "without fence:       ${unfenced[*]}  median $(printf '%s\n' "${unfenced[@]}" | median)"
} | tee "$out"
