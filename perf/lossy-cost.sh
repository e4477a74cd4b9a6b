#!/usr/bin/env bash
# Usage: perf/lossy-cost.sh [ROUNDS] [MESSAGES]
# What maintaining the tail intent and the boundary index (what lossy readers need) costs the
# producer: the C twin of the ring (perf/c/twin.c, ShmRing's record format and protocol) built
# twice, with and without them (-DTWIN_NO_LOSSY_INDEX), two processes pinned to CPUs 0 and 1,
# 64-byte payloads, per-message commits and batches of 32, interleaved round by round. Prints
# each round and the medians of per-round ratios (with / without).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
messages=${2:-20000000}
mkdir -p perf/results/bin
include=Sources/CShmAtomics/include
gcc -O2 -march=native -I"$include" -ISources/CShmBench -o perf/results/bin/twin perf/c/twin.c
gcc -O2 -march=native -I"$include" -ISources/CShmBench -DTWIN_NO_LOSSY_INDEX -o perf/results/bin/twin-no-lossy-index perf/c/twin.c
bin=perf/results/bin
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }
out="perf/results/lossy-cost-$(date +%Y%m%d-%H%M%S).txt"
{
echo "# lossy bookkeeping cost, $(date -u), $(nproc) CPUs, $rounds rounds, $messages messages, 64-byte payloads"
for round in $(seq "$rounds"); do
    with_1=$("$bin/twin" throughput "$messages" 64 0 1 16 1 | field msgs_per_s)
    without_1=$("$bin/twin-no-lossy-index" throughput "$messages" 64 0 1 16 1 | field msgs_per_s)
    with_32=$("$bin/twin" throughput "$messages" 64 0 1 16 32 | field msgs_per_s)
    without_32=$("$bin/twin-no-lossy-index" throughput "$messages" 64 0 1 16 32 | field msgs_per_s)
    echo "round $round with_1=$with_1 without_1=$without_1 with_32=$with_32 without_32=$without_32"
done
} | tee "$out"
python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\d+)", line)) for line in open(sys.argv[1]) if line.startswith("round")]
for name, a, b in [("per message", "with_1", "without_1"), ("batches of 32", "with_32", "without_32")]:
    values = [int(r[a]) / int(r[b]) for r in rows]
    print(f"throughput with / without tail intent + boundary index, {name}: median {statistics.median(values):.3f} "
          f"(min {min(values):.3f}, max {max(values):.3f})")
PY
