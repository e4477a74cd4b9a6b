#!/usr/bin/env bash
# Usage: perf/study.sh [ROUNDS] [MESSAGES] [RTT_ROUNDS]
# The ring's record-protocol study and its baselines, in one run: every program is measured in
# every round, interleaved (this machine's 2 vCPUs drift between placements: compare only within
# a round), pinned to CPUs 0 and 1, busy-spin, in a memfd. Then perf/study-summary.py prints the
# medians (min-max) of the per-round ratios. Results: perf/results/study-DATE.txt (not in git).
#
# Programs (perf/c; harness.h says what each run does):
#   line            one cache line per direction: the round-trip floor (pingpong.c)
#   slots           SPSC ring of 64-byte slots, cached indices, indices published per message
#   slots-batched   the same, indices published per batch (run with batches of 16 and 32)
#   tachyon-style   64-byte-aligned records, 64-byte header, head published every 32 commits
#   commit          the minimal commit-in-header ring; commit-* its variants (commit.c's knobs)
#   twin            ShmRing's protocol in C (twin.c); shmring: ShmRing itself (the test peer)
# Environment: SIZES (default "48 64"), CAPACITIES (default "65536 1048576"), VARIANTS (default:
# all below), SKIP_SWIFT=1 leaves ShmRing out.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-7}
messages=${2:-20000000}
rtt_rounds=${3:-200000}
sizes=${SIZES:-48 64}
capacities=${CAPACITIES:-65536 1048576}
bin=perf/results/bin/study
mkdir -p "$bin"
include=Sources/CShmAtomics/include
cc() { gcc -O2 -march=native -Wall -Wextra -I"$include" -o "$bin/$1" "perf/c/$2" "${@:3}"; }

# name  source  flags
declare -A source flags
add() { source[$1]=$2; flags[$1]="${*:3}"; }
add slots slots.c
add slots-batched slots.c -DINDEX_EVERY=0
add tachyon-style tachyon.c
add commit commit.c
add commit-a64 commit.c -DALIGN=64
add commit-mix commit.c -DMIX=1
add commit-keep1 commit.c -DMIX=1 -DKEEP=1 -DRESCAN=1
add commit-keep2 commit.c -DMIX=1 -DKEEP=2 -DRESCAN=1
add commit-keep2-norescan commit.c -DMIX=1 -DKEEP=2
add commit-cursor16 commit.c -DCURSOR=16
add commit-pfr1 commit.c -DPF_READ=1
add commit-pfr2 commit.c -DPF_READ=2
add commit-pfr2-adaptive commit.c -DPF_READ=2 -DADAPTIVE=1
add commit-pfw2 commit.c -DPF_WRITE=2
add commit-spintail commit.c -DSPIN_TAIL=1
variants=${VARIANTS:-slots slots-batched tachyon-style commit commit-a64 commit-mix commit-keep1 commit-keep2 commit-keep2-norescan commit-cursor16 commit-pfr1 commit-pfr2 commit-pfr2-adaptive commit-pfw2 commit-spintail}
for name in $variants; do
    # shellcheck disable=SC2086
    cc "$name" "${source[$name]}" -DRING_NAME="\"$name\"" ${flags[$name]}
done
cc line pingpong.c
cc twin twin.c
if [ "${SKIP_SWIFT:-0}" != 1 ]; then
    swift build -c release --product shmring-test-peer >/dev/null
fi
peer=.build/release/shmring-test-peer
out="perf/results/study-$(date +%Y%m%d-%H%M%S).txt"

run() {  # run ROUND LABEL COMMAND...: prints "round LABEL output"
    local round=$1 label=$2
    shift 2
    echo "round=$round label=$label $("$@" | tail -1)"
}

{
echo "# study $(date -u) $(uname -r) rounds=$rounds messages=$messages rtt_rounds=$rtt_rounds sizes=($sizes) capacities=($capacities)"
for round in $(seq "$rounds"); do
    run "$round" line "$bin/line" "$rtt_rounds" 0 1
    for size in $sizes; do
        for capacity in $capacities; do
            for name in $variants; do
                case $name in
                slots-batched) ;;  # batched only
                *)
                    run "$round" "$name/$size/$capacity/1" "$bin/$name" throughput "$messages" "$size" 0 1 "$capacity" 1
                    run "$round" "$name/$size/$capacity/rtt" "$bin/$name" rtt "$rtt_rounds" "$size" 0 1 "$capacity"
                    ;;
                esac
                case $name in
                slots-batched | tachyon-style | commit | commit-keep2 | commit-mix)
                    for batch in 16 32; do
                        run "$round" "$name/$size/$capacity/$batch" "$bin/$name" throughput "$messages" "$size" 0 1 \
                            "$capacity" "$batch"
                    done
                    ;;
                esac
            done
            if [ "$capacity" = 1048576 ]; then
                run "$round" "twin/$size/$capacity/1" "$bin/twin" throughput "$messages" "$size" 0 1 16 1
                run "$round" "twin/$size/$capacity/32" "$bin/twin" throughput "$messages" "$size" 0 1 16 32
                run "$round" "twin/$size/$capacity/rtt" "$bin/twin" rtt "$rtt_rounds" "$size" 0 1 16
            fi
            if [ "${SKIP_SWIFT:-0}" != 1 ]; then
                for batch in 1 32; do
                    run "$round" "shmring/$size/$capacity/$batch" "$peer" ring-bench --mode throughput \
                        --count "$messages" --size "$size" --batch "$batch" --cpu-a 0 --cpu-b 1 --capacity "$capacity"
                done
                run "$round" "shmring/$size/$capacity/rtt" "$peer" ring-bench --mode rtt --count "$rtt_rounds" \
                    --size "$size" --cpu-a 0 --cpu-b 1 --capacity "$capacity"
            fi
        done
    done
    run "$round" line-after "$bin/line" "$rtt_rounds" 0 1
done
} | tee "$out"
python3 perf/study-summary.py "$out" | tee -a "$out"
echo "written to $out"
