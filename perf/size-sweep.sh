#!/usr/bin/env bash
# Usage: perf/size-sweep.sh [ROUNDS] [BYTES_PER_RUN]
# ShmRing's two-process throughput (release-built test peer, `ring-bench`, 1 MiB ring, alignment
# 16, pinned to CPUs 0 and 1) for payloads of 8 B to 16 KiB, one publish per message and batches
# of 32, in messages/s and payload bytes/s. Each round runs every size once, and the sizes are
# interleaved round by round, so a placement change of the two vCPUs hits all sizes alike. Every
# run moves about BYTES_PER_RUN payload bytes (at least 1 M messages). Prints each run and the
# median of the rounds; writes perf/results/size-sweep-DATE.txt (not in git).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bytes=${2:-2000000000}
peer=.build/release/shmring-test-peer
swift build -c release --product shmring-test-peer >/dev/null
mkdir -p perf/results
out="perf/results/size-sweep-$(date +%Y%m%d-%H%M%S).txt"
sizes="8 64 256 1024 4096 16384"
echo "# size-sweep $(date -u) $(uname -r) rounds=$rounds bytes_per_run=$bytes" | tee "$out"
for round in $(seq "$rounds"); do
    for size in $sizes; do
        count=$((bytes / size))
        [ "$count" -ge 1000000 ] || count=1000000
        for batch in 1 32; do
            line=$("$peer" ring-bench --mode throughput --count "$count" --size "$size" --batch "$batch" \
                --cpu-a 0 --cpu-b 1 | tail -1)
            rate=$(sed -n 's/.*msgs_per_s=\([0-9]*\).*/\1/p' <<<"$line")
            echo "round=$round size=$size batch=$batch msgs_per_s=$rate" | tee -a "$out"
        done
    done
done
python3 - "$out" <<'PY' | tee -a "$out"
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"round=\d+ size=(\d+) batch=(\d+) msgs_per_s=(\d+)", line)
    if m:
        runs.setdefault((int(m[1]), int(m[2])), []).append(int(m[3]))
print("# medians of the rounds (min-max): payload, batch, msgs/s, payload bytes/s")
for (size, batch), rates in sorted(runs.items()):
    median = statistics.median(rates)
    print(f"{size:>6} B batch {batch:>2}: {median / 1e6:7.1f} M msgs/s ({min(rates) / 1e6:.1f}-{max(rates) / 1e6:.1f}), "
          f"{median * size / 1e9:6.2f} GB/s")
PY
echo "written to $out"
