#!/usr/bin/env python3
"""Usage: perf/idle-table.py [--rounds N] [--seconds S]

The idle strategies at three message gaps (docs/wakeup.md, "Idle strategies"): `shmring pub
--rate` publishes 64-byte generated messages every 10 µs, 100 µs or 1 ms (stamped when written);
the release-built test peer's `ring-idle-consume` reads them with `--idle spin|yield|backoff|block`
(and `async`: through `RingConsumer.messages()`, the AsyncSequence, which blocks like `block`)
and reports the one-way latency from each stamp to the poll that read it, and the CPU time it used
(user + system, getrusage) from the first message to the last. Per round every gap and strategy
runs once, in an order that turns with the round; the report gives medians (min-max) over rounds:
latency p50 / p99 / p99.9 and the consumer's CPU per message and share of one CPU. Neither
the publisher is pinned to CPU 0 and the consumer to CPU 1 (the publisher paces by spinning for
gaps under 200 µs: unpinned, a woken consumer lands on the spinning publisher's CPU and waits for
it, milliseconds). The first twentieth of each run is warm-up: the first few messages of a run
wait 1.5-3 ms with every strategy that sleeps (cause not pinned down; io_uring's set-up takes
50-200 µs).

Results: perf/results/idle-table-DATE.txt (not in git)."""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, ".build/release/shmring-test-peer")
SHMRING = os.path.join(ROOT, ".build/release/shmring")
GAPS = [10, 100, 1000]
STRATEGIES = ["spin", "yield", "backoff", "block", "async"]


def run(gap_us, idle, seconds, tag):
    key = f"idle-table-{os.getpid()}-{tag}"
    count = int(seconds * 1e6 / gap_us)
    publisher = subprocess.Popen(["taskset", "-c", "0", SHMRING, "pub", key, "--size", "64", "--count", str(count), "--rate",
                                  str(1e6 / gap_us), "--wait-consumers", "1"], stderr=subprocess.DEVNULL)
    consumer = None
    for _ in range(200):  # the ring appears when the publisher has started
        consumer = subprocess.Popen(["taskset", "-c", "1", PEER, "ring-idle-consume", "--key", key, "--count", str(count), "--idle", idle],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = consumer.communicate(timeout=300)
        if consumer.returncode == 0:
            break
        if "notFound" not in err and "nobody serves" not in err and "not found" not in err.lower():
            sys.exit(f"the consumer failed: {err}")
        import time
        time.sleep(0.05)
    publisher.wait(timeout=60)
    values = {k: int(v) for k, v in re.findall(r"(\w+)=([0-9]+)", out)}
    return {"p50": values["latency_p50_ns"], "p99": values["latency_p99_ns"], "p999": values["latency_p999_ns"],
            "cpu_per_msg": values["cpu_ns"] / values["messages"], "cpu_share": values["cpu_ns"] / values["elapsed_ns"]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(ROOT, f"perf/results/idle-table-{stamp}.txt")
    cases = [(gap, idle) for gap in GAPS for idle in STRATEGIES]
    results = {}
    with open(path, "w") as log:
        for round_ in range(args.rounds):
            order = cases[round_ % len(cases):] + cases[:round_ % len(cases)]
            for gap, idle in order:
                result = run(gap, idle, args.seconds, f"{round_}-{gap}-{idle}")
                results.setdefault((gap, idle), []).append(result)
                line = f"round={round_} gap_us={gap} idle={idle} " + " ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
                print(line, flush=True)
                log.write(line + "\n")
        header = "\n| gap | idle | latency p50 | p99 | p99.9 | consumer CPU per message | CPU share |\n|---|---|---|---|---|---|---|"
        print(header)
        log.write(header + "\n")

        def median(values, scale, unit):
            return f"{statistics.median(values) / scale:.1f} {unit} ({min(values) / scale:.1f}-{max(values) / scale:.1f})"

        for gap, idle in cases:
            runs = results[(gap, idle)]
            row = (f"| {gap} µs | {idle} | {median([r['p50'] for r in runs], 1000, 'µs')} | "
                   f"{median([r['p99'] for r in runs], 1000, 'µs')} | {median([r['p999'] for r in runs], 1000, 'µs')} | "
                   f"{median([r['cpu_per_msg'] for r in runs], 1000, 'µs')} | "
                   f"{statistics.median([r['cpu_share'] for r in runs]) * 100:.0f} % |")
            print(row)
            log.write(row + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
