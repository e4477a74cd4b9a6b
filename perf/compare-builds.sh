#!/usr/bin/env bash
# Usage: perf/compare-builds.sh BASE_PEER NEW_PEER [ROUNDS] [MESSAGES] [RTT_ROUNDS]
# Compares two release builds of shmring-test-peer (say, the commit before a change and after it)
# on the ring's hot path, in one run:
#   - two-process throughput (1 MiB ring, pinned to CPUs 0 and 1), one publish per message and
#     batches of 32, at 64-byte payloads (whole words) and 61-byte payloads (a partial last word),
#     and the busy-spin round trip at 64 bytes (p50, p99), the two builds interleaved round by
#     round (this machine's 2 vCPUs drift between placements: ratios within a round hold);
#   - instructions per publish+poll (callgrind over `ring-hot-loop`, one process, 200 000
#     messages), which do not drift.
# Prints each round and the median (min-max) of the per-round ratios NEW / BASE; writes them to
# perf/results/compare-builds-DATE.txt (not in git). Build a peer of another commit with
# `git worktree add /tmp/base COMMIT && (cd /tmp/base && swift build -c release --product
# shmring-test-peer)`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
base=$1
new=$2
rounds=${3:-7}
messages=${4:-20000000}
rtt_rounds=${5:-300000}
for peer in "$base" "$new"; do [ -x "$peer" ] || { echo "no executable at $peer" >&2; exit 2; }; done
mkdir -p perf/results
out="perf/results/compare-builds-$(date +%Y%m%d-%H%M%S).txt"

field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p"; }
median_of() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) m = v[(NR + 1) / 2]; else m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f (%.3f-%.3f)", m, v[1], v[NR] }'; }

cases=("throughput 64 1" "throughput 61 1" "throughput 64 32" "throughput 61 32" "rtt 64 1")
declare -A ratios
{
echo "# compare-builds, $(date -u), $(uname -r), base $base, new $new, $rounds rounds, $messages messages, $rtt_rounds round trips"
for round in $(seq "$rounds"); do
    line="round $round:"
    for case in "${cases[@]}"; do
        read -r mode size batch <<<"$case"
        declare -A result=()
        # Alternate which build goes first, so that neither always runs right after the other.
        order=("$base" "$new")
        [ $((round % 2)) -eq 0 ] && order=("$new" "$base")
        for peer in "${order[@]}"; do
            if [ "$mode" = rtt ]; then
                output=$("$peer" ring-bench --mode rtt --count "$rtt_rounds" --size "$size" --cpu-a 0 --cpu-b 1)
                result[$peer]="$(echo "$output" | field rtt_p50_ns) $(echo "$output" | field rtt_p99_ns)"
            else
                output=$("$peer" ring-bench --mode throughput --count "$messages" --size "$size" --batch "$batch" \
                    --cpu-a 0 --cpu-b 1)
                result[$peer]=$(echo "$output" | field msgs_per_s)
            fi
        done
        if [ "$mode" = rtt ]; then
            read -r base50 base99 <<<"${result[$base]}"
            read -r new50 new99 <<<"${result[$new]}"
            ratios["rtt p50"]+="$(echo "$new50 / $base50" | bc -l) "
            ratios["rtt p99"]+="$(echo "$new99 / $base99" | bc -l) "
            line+=" rtt p50 $base50/$new50 ns, p99 $base99/$new99 ns;"
        else
            name="$mode ${size} B batch $batch"
            ratios[$name]+="$(echo "${result[$new]} / ${result[$base]}" | bc -l) "
            line+=" $name $((result[$base] / 1000000))/$((result[$new] / 1000000)) M;"
        fi
    done
    echo "$line"
done
echo "# medians of per-round ratios new / base (throughput: higher is better; rtt: lower is better)"
for name in "throughput 64 B batch 1" "throughput 61 B batch 1" "throughput 64 B batch 32" "throughput 61 B batch 32" \
    "rtt p50" "rtt p99"; do
    echo "$name: $(echo "${ratios[$name]}" | tr ' ' '\n' | grep . | median_of)"
done
if command -v valgrind >/dev/null; then
    echo "# instructions per publish+poll (callgrind, ring-hot-loop, 200000 messages, after 10000 warm-up)"
    for size in 64 61; do
        line="size $size:"
        for peer in "$base" "$new"; do
            # valgrind 3.19 cannot read the toolchain's DWARF 5: a copy without debug information.
            stripped=$(mktemp)
            objcopy --strip-debug "$peer" "$stripped"
            file=$(mktemp)
            valgrind --tool=callgrind --callgrind-out-file="$file" --toggle-collect=shmring_hot_publish_poll \
                "$stripped" ring-hot-loop --messages 200000 --size "$size" >/dev/null 2>&1
            total=$(callgrind_annotate "$file" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
            rm -f "$file" "$stripped"
            line+=" $(echo "$total / 200000" | bc -l | xargs printf '%.1f')"
        done
        echo "$line (base, new)"
    done
fi
} | tee "$out"
echo "written to $out"
