#!/usr/bin/env bash
# Usage: perf/ring-vs-c.sh [ROUNDS] [MESSAGES] [RTT_ROUNDS]
# Two-process throughput and busy-spin round trip of ShmRing against three C baselines, in one
# run, pinned to CPUs 0 and 1, interleaved round by round (this machine's 2 vCPUs drift between a
# "near" and a "far" placement; ratios within a round hold, absolute numbers drift):
#   pingpong  one cache line per direction (the round-trip floor)
#   spsc64    a plain SPSC ring of 64-byte slots, index published per message
#   twin      a C twin of ShmRing's ring: the same layout header, record format and protocol
#   shmring   ShmRing (the release-built test peer's ring-bench)
# Then the record-alignment sweep and the payload-size sweep of ShmRing. Prints every figure and
# the medians of per-round ratios; writes them to perf/results/ring-vs-c-DATE.txt (not in git).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
messages=${2:-20000000}
rtt_rounds=${3:-300000}
mkdir -p perf/results/bin
include=Sources/CShmAtomics/include
for program in pingpong spsc twin; do
    gcc -O2 -march=native -I"$include" -o "perf/results/bin/$program" "perf/c/$program.c"
done
swift build -c release --product shmring-test-peer >/dev/null
bin=perf/results/bin
peer=.build/release/shmring-test-peer
out="perf/results/ring-vs-c-$(date +%Y%m%d-%H%M%S).txt"

field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }

{
echo "# ring vs C, $(date -u), $(uname -r), $(nproc) CPUs, $rounds rounds, $messages messages, $rtt_rounds round trips, 64-byte payloads"
for round in $(seq "$rounds"); do
    pp=$("$bin/pingpong" "$rtt_rounds" 0 1)
    twin_rtt=$("$bin/twin" rtt "$rtt_rounds" 64 0 1)
    ring_rtt=$("$peer" ring-bench --mode rtt --count "$rtt_rounds" --size 64 --cpu-a 0 --cpu-b 1)
    spsc=$("$bin/spsc" "$messages" 0 1)
    twin_1=$("$bin/twin" throughput "$messages" 64 0 1 16 1)
    ring_1=$("$peer" ring-bench --mode throughput --count "$messages" --size 64 --cpu-a 0 --cpu-b 1)
    twin_32=$("$bin/twin" throughput "$messages" 64 0 1 16 32)
    ring_32=$("$peer" ring-bench --mode throughput --count "$messages" --size 64 --cpu-a 0 --cpu-b 1 --batch 32)
    echo "round $round" \
        "pingpong_p50=$(echo "$pp" | field rtt_p50_ns) pingpong_p999=$(echo "$pp" | field rtt_p999_ns)" \
        "twin_rtt_p50=$(echo "$twin_rtt" | field rtt_p50_ns) twin_rtt_p999=$(echo "$twin_rtt" | field rtt_p999_ns)" \
        "ring_rtt_p50=$(echo "$ring_rtt" | field rtt_p50_ns) ring_rtt_p999=$(echo "$ring_rtt" | field rtt_p999_ns)" \
        "spsc=$(echo "$spsc" | field msgs_per_s)" \
        "twin_1=$(echo "$twin_1" | field msgs_per_s) ring_1=$(echo "$ring_1" | field msgs_per_s)" \
        "twin_32=$(echo "$twin_32" | field msgs_per_s) ring_32=$(echo "$ring_32" | field msgs_per_s)"
done
echo "# alignment sweep (64-byte payloads, batch 32): twin and shmring, msgs/s"
for alignment in 8 16 32 64; do
    t=$("$bin/twin" throughput "$messages" 64 0 1 "$alignment" 32 | field msgs_per_s)
    r=$("$peer" ring-bench --mode throughput --count "$messages" --size 64 --cpu-a 0 --cpu-b 1 --batch 32 \
        --alignment "$alignment" | field msgs_per_s)
    echo "alignment $alignment twin=$t ring=$r"
done
echo "# size sweep (shmring, batch 32, alignment 16): bytes/s"
for size in 8 64 256 1024 4096 16384; do
    count=$((messages * 64 / (size > 64 ? size : 64) ))
    r=$("$peer" ring-bench --mode throughput --count "$count" --size "$size" --cpu-a 0 --cpu-b 1 --batch 32)
    echo "size $size msgs_per_s=$(echo "$r" | field msgs_per_s) bytes_per_s=$(echo "$r" | field bytes_per_s)"
done
} | tee "$out"

python3 - "$out" <<'PY'
import re, statistics, sys
rows = [dict(re.findall(r"(\w+)=(\d+)", line)) for line in open(sys.argv[1]) if line.startswith("round")]
def ratio(a, b):
    values = [int(r[a]) / int(r[b]) for r in rows if int(r.get(b, 0))]
    return statistics.median(values), min(values), max(values)
print("# medians of per-round ratios (min, max)")
for name, a, b in [
    ("throughput shmring/twin, per message commit", "ring_1", "twin_1"),
    ("throughput shmring/twin, batch 32", "ring_32", "twin_32"),
    ("throughput shmring(batch 32)/spsc64 per-message", "ring_32", "spsc"),
    ("throughput shmring(per message)/spsc64 per-message", "ring_1", "spsc"),
    ("rtt p50 shmring/pingpong", "ring_rtt_p50", "pingpong_p50"),
    ("rtt p50 twin/pingpong", "twin_rtt_p50", "pingpong_p50"),
    ("rtt p50 shmring/twin", "ring_rtt_p50", "twin_rtt_p50"),
    ("rtt p99.9 shmring/pingpong", "ring_rtt_p999", "pingpong_p999"),
]:
    median, low, high = ratio(a, b)
    print(f"{name}: {median:.2f} ({low:.2f} .. {high:.2f})")
print("# placement per round (pingpong p50 ns; ~90-110 near, ~400 far):", [int(r["pingpong_p50"]) for r in rows])
PY
