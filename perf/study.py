#!/usr/bin/env python3
"""Usage: perf/study.py [--rounds N] [--messages N] [--rtt-rounds N] [--sizes 48,64]
                      [--capacities 65536,1048576] [--variants a,b,...] [--batches 1,32] [--no-swift]

The ring's record-protocol study and its baselines, measured as sandwiches: within a round, for
each configuration (payload size, capacity, mode), the baseline runs before and after every
program, and a program's ratio is its figure over the mean of the two baseline runs around it.
A sandwich whose two baseline runs differ by more than 25 % (the two vCPUs moved between a "near"
and a "far" placement meanwhile) is dropped and counted. The report gives, per program, the
median (min-max) of its ratios over the rounds, and how many sandwiches were kept.

Programs (perf/c; harness.h says what each run does), all pinned to CPUs 0 and 1, busy-spin:
  line            one cache line per direction: the round-trip floor (pingpong.c)
  slots           SPSC ring of 64-byte slots, cached indices, indices published per message:
                  the per-message baseline
  slots-batched   the same, indices published per batch: the batched baseline
  tachyon-style   64-byte-aligned records, 64-byte header, head published every 32 commits
  commit          the minimal commit-in-header ring: the round-trip baseline; commit-* adds one
                  of ShmRing's costs at a time (commit.c's knobs)
  twin            ShmRing's protocol in C (twin.c, 1 MiB only); shmring: ShmRing (the test peer)
  *-idleN         the consumer pauses N times after a poll that found nothing (IDLE_PAUSES;
                  shmring-idleN: ring-bench --idle-pauses N)
  *-aN            records aligned to N bytes (commit's ALIGN, twin's and ring-bench's alignment)
Results: perf/results/study-DATE.txt (raw lines and the report; not in git)."""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "perf/results/bin/study")
PEER = os.path.join(ROOT, ".build/release/shmring-test-peer")

VARIANTS = {
    # name: (source, flags)
    "slots": ("slots.c", []),
    "slots-batched": ("slots.c", ["-DINDEX_EVERY=0"]),
    "tachyon-style": ("tachyon.c", []),
    "commit": ("commit.c", []),
    "commit-a64": ("commit.c", ["-DALIGN=64"]),
    "commit-a128": ("commit.c", ["-DALIGN=128"]),
    "commit-mix": ("commit.c", ["-DMIX=1"]),
    "commit-keep1": ("commit.c", ["-DMIX=1", "-DKEEP=1", "-DRESCAN=1"]),
    "commit-keep2": ("commit.c", ["-DMIX=1", "-DKEEP=2", "-DRESCAN=1"]),
    "commit-keep2-norescan": ("commit.c", ["-DMIX=1", "-DKEEP=2"]),
    "commit-keep3": ("commit.c", ["-DMIX=1", "-DKEEP=3", "-DRESCAN=1"]),
    "commit-keep3-pfbatch2": ("commit.c", ["-DMIX=1", "-DKEEP=3", "-DRESCAN=1", "-DPF_BATCH=2"]),
    "commit-keep3-pftail16": ("commit.c", ["-DMIX=1", "-DKEEP=3", "-DRESCAN=1", "-DPF_TAIL=16"]),
    "commit-keep3-pftail64": ("commit.c", ["-DMIX=1", "-DKEEP=3", "-DRESCAN=1", "-DPF_TAIL=64"]),
    "commit-cursor16": ("commit.c", ["-DCURSOR=16"]),
    "commit-pfr1": ("commit.c", ["-DPF_READ=1"]),
    "commit-pfr2": ("commit.c", ["-DPF_READ=2"]),
    "commit-pfr2-adaptive": ("commit.c", ["-DPF_READ=2", "-DADAPTIVE=1"]),
    "commit-pfw2": ("commit.c", ["-DPF_WRITE=2"]),
    "commit-spintail": ("commit.c", ["-DSPIN_TAIL=1"]),
    "commit-idle8": ("commit.c", ["-DIDLE_PAUSES=8"]),
    "commit-fixed64": ("commit.c", ["-DFIXED_SIZE=64"]),  # 64-byte payloads only
    "commit-pfr4": ("commit.c", ["-DPF_READ=4"]),
    "commit-pfr8-adaptive": ("commit.c", ["-DPF_READ=8", "-DADAPTIVE=1"]),
    "commit-idle32": ("commit.c", ["-DIDLE_PAUSES=32"]),
    "slots-batched-idle32": ("slots.c", ["-DINDEX_EVERY=0", "-DIDLE_PAUSES=32"]),
    "commit-marker": ("commit.c", ["-DMARKER=1"]),
    "commit-marker128": ("commit.c", ["-DMARKER=1", "-DMARKER_SPAN=128"]),
    "commit-keep3-a128": ("commit.c", ["-DMIX=1", "-DKEEP=3", "-DRESCAN=1", "-DALIGN=128"]),
    "commit-mix-a128": ("commit.c", ["-DMIX=1", "-DALIGN=128"]),
    "twin": ("twin.c", []),
    "twin-a128": ("twin.c", []),
    "line": ("pingpong.c", []),
}


def build(names):
    os.makedirs(BIN, exist_ok=True)
    include = os.path.join(ROOT, "Sources/CShmAtomics/include")
    for name in set(names) | {"line", "slots", "slots-batched", "tachyon-style", "commit"}:
        source, flags = VARIANTS[name]
        # -O2 as the reference floors are built (-march=native made the slot rings slower here).
        command = ["gcc", "-O2", "-Wall", "-Wextra", "-I" + include, "-I" + os.path.join(ROOT, "Sources/CShmBench"),
                   "-o", os.path.join(BIN, name),
                   os.path.join(ROOT, "perf/c", source), f'-DRING_NAME="{name}"'] + flags
        subprocess.run(command, check=True)


def run(command):
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {key: float(value) for key, value in re.findall(r"(\w+)=(\d+)", output)}


def command(name, mode, size, capacity, batch, args):
    if name.startswith("shmring"):
        # shmring, shmring-idleN (N pauses after an empty poll), shmring-aN (record alignment N)
        knobs = dict(re.findall(r"-(idle|a)(\d+)", name))
        common = ["--size", str(size), "--cpu-a", "0", "--cpu-b", "1", "--capacity", str(capacity),
                  "--alignment", knobs.get("a", "16")]
        if mode == "rtt":
            return [PEER, "ring-bench", "--mode", "rtt", "--count", str(args.rtt_rounds)] + common
        return [PEER, "ring-bench", "--mode", "throughput", "--count", str(args.messages), "--batch", str(batch),
                "--idle-pauses", knobs.get("idle", "1")] + common
    if name.startswith("twin"):  # 1 MiB; twin (alignment 16) or twin-aN
        alignment = name.split("-a")[1] if "-a" in name else "16"
        if mode == "rtt":
            return [os.path.join(BIN, name), "rtt", str(args.rtt_rounds), str(size), "0", "1", alignment]
        return [os.path.join(BIN, name), "throughput", str(args.messages), str(size), "0", "1", alignment, str(batch)]
    if mode == "rtt":
        return [os.path.join(BIN, name), "rtt", str(args.rtt_rounds), str(size), "0", "1", str(capacity)]
    return [os.path.join(BIN, name), "throughput", str(args.messages), str(size), "0", "1", str(capacity), str(batch)]


def field(mode):
    return "rtt_p50_ns" if mode == "rtt" else "msgs_per_s"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--rtt-rounds", type=int, default=100_000)
    parser.add_argument("--sizes", default="48,64")
    parser.add_argument("--capacities", default="65536,1048576")
    parser.add_argument("--variants", default="commit-mix,commit-keep1,commit-keep2,commit-cursor16,commit-a64,"
                        "commit-pfr1,commit-pfr2-adaptive,commit-pfw2,commit-spintail")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--no-swift", action="store_true")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    build([v for v in variants if v in VARIANTS] + ["twin"])
    if not args.no_swift:
        subprocess.run(["swift", "build", "-c", "release", "--product", "shmring-test-peer"], check=True,
                       cwd=ROOT, capture_output=True)
    out = os.path.join(ROOT, "perf/results", "study-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".txt")
    log = open(out, "w")

    def say(text):
        print(text)
        log.write(text + "\n")
        log.flush()

    say(f"# study {datetime.datetime.utcnow().isoformat()}Z {os.uname().release} {args}")
    ratios = {}  # (program, size, capacity, mode, against) -> [ratio]
    dropped = {}
    for round_ in range(1, args.rounds + 1):
        line = run([os.path.join(BIN, "line"), str(args.rtt_rounds), "0", "1"])
        say(f"round={round_} line rtt_p50_ns={line['rtt_p50_ns']:.0f} rtt_p99_ns={line['rtt_p99_ns']:.0f}")
        for size in [int(s) for s in args.sizes.split(",")]:
            for capacity in [int(c) for c in args.capacities.split(",")]:
                for mode in ["rtt"] + [f"b{b}" for b in args.batches.split(",")]:
                    batch = 1 if mode == "rtt" else int(mode[1:])
                    base = "commit" if mode == "rtt" else "slots" if batch == 1 else "slots-batched"
                    programs = (["line", "slots"] if mode == "rtt" else []) + ["tachyon-style", "commit"] + variants
                    programs += ["twin"] if capacity == 1048576 else []
                    programs += [] if args.no_swift else ["shmring"]
                    programs = [p for p in programs if p != base]
                    kind = "rtt" if mode == "rtt" else "throughput"
                    fields = ["rtt_p50_ns", "rtt_p99_ns"] if kind == "rtt" else ["msgs_per_s"]
                    before = run(command(base, kind, size, capacity, batch, args))
                    for program in programs:
                        if program == "line":
                            value = run([os.path.join(BIN, "line"), str(args.rtt_rounds), "0", "1"])
                        else:
                            value = run(command(program, kind, size, capacity, batch, args))
                        after = run(command(base, kind, size, capacity, batch, args))
                        say(f"round={round_} size={size} capacity={capacity} mode={mode} base={base} program={program} "
                            + " ".join(f"{f}={value[f]:.0f}/{before[f]:.0f}/{after[f]:.0f}" for f in fields))
                        first = fields[0]
                        for f in fields:
                            key = (program, size, capacity, mode + ("" if f == first else "-p99"), base)
                            if max(before[first], after[first]) > 1.25 * min(before[first], after[first]):
                                dropped[key] = dropped.get(key, 0) + 1
                            else:
                                ratios.setdefault(key, []).append(value[f] / ((before[f] + after[f]) / 2))
                        before = after
    say("\n# medians (min-max) of per-sandwich ratios; throughput: program / baseline (higher is better); "
        "rtt p50: program / baseline (lower is better)")
    for (program, size, capacity, mode, base), found in sorted(ratios.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
        what = {"rtt": "rtt p50", "rtt-p99": "rtt p99"}.get(mode, f"msgs/s, batch {mode[1:]}")
        say(f"{size:>3} B {capacity:>8} {what:<16} {program:<22} / {base:<14} {statistics.median(found):5.2f} "
            f"({min(found):.2f}-{max(found):.2f}) n={len(found)} dropped={dropped.get((program, size, capacity, mode, base), 0)}")
    say(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
