#!/usr/bin/env python3
"""Usage: perf/wake-many.py [--rounds N] [--wakes W] [--ks 1,4,16] [--peer NAME=PATH ...]

Waking many sleepers (docs/wakeup.md, "Waking many"): one producer, K consumers (each a process,
the release-built test peer's `ring-wait-consume`), all asleep before each publish
(`ring-fan-out` waits until the observer shows every one asleep). Per run, W wakes; per wake:
- the producer's cost: how long the publish that wakes took (`publish_p50_ns`);
- the time until the first and until the last of the K had the message (from its stamp to the
  poll that read it: the max and the min over the K consumers, per wake).
Runs alternate between the peers given (default: this build's) in an order that turns with the
round; the report gives medians (min-max) over rounds of each run's p50 (and p99 for "all").

Results: perf/results/wake-many-DATE.txt (not in git)."""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(peer, k, wakes, gap, tag):
    key = f"wake-many-{os.getpid()}-{tag}"
    ready_read, ready_write = os.pipe()  # the peer says "created" on SHMRING_READY_FD
    producer = subprocess.Popen([peer, "ring-fan-out", "--key", key, "--consumers", str(k), "--rounds", str(wakes),
                                 "--burst", "1", "--gap-us", str(gap)], stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, SHMRING_READY_FD=str(ready_write)), pass_fds=(ready_write,))
    os.close(ready_write)
    with os.fdopen(ready_read) as ready:
        line = ready.readline()
    if "created" not in line:
        sys.exit(f"the producer did not start: {line!r}")
    consumers = [subprocess.Popen([peer, "ring-wait-consume", "--key", key, "--count", str(wakes), "--burst", "1",
                                   "--timeout-ms", "10000"], stdout=subprocess.PIPE, text=True) for _ in range(k)]
    latencies = []
    for consumer in consumers:
        out = consumer.communicate(timeout=600)[0]
        found = re.search(r"first_latencies_ns=([0-9,]+)", out)
        if consumer.returncode != 0 or not found:
            sys.exit(f"a consumer failed: {out}")
        latencies.append([int(x) for x in found.group(1).split(",")])
    out = producer.communicate(timeout=60)[0]
    values = dict(re.findall(r"(\w+)=([0-9]+)", out))
    if values.get("not_asleep") != "0":
        print(f"  note: {values.get('not_asleep')} wakes started without every consumer asleep", file=sys.stderr)
    skip = wakes // 10  # warm-up
    last = sorted(max(per[i] for per in latencies) for i in range(skip, wakes))
    first = sorted(min(per[i] for per in latencies) for i in range(skip, wakes))
    return {"publish_p50": int(values["publish_p50_ns"]), "first_p50": first[len(first) // 2],
            "all_p50": last[len(last) // 2], "all_p99": last[len(last) * 99 // 100]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wakes", type=int, default=300)
    parser.add_argument("--gap-us", type=int, default=200)
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--peer", action="append", default=[])
    args = parser.parse_args()
    peers = dict(p.split("=", 1) for p in args.peer) or {"shmring": os.path.join(ROOT, ".build/release/shmring-test-peer")}
    ks = [int(k) for k in args.ks.split(",")]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(ROOT, f"perf/results/wake-many-{stamp}.txt")
    results = {}
    with open(path, "w") as log:
        names = list(peers)
        for round_ in range(args.rounds):
            for k in ks:
                order = names[round_ % len(names):] + names[:round_ % len(names)]
                for name in order:
                    result = run(peers[name], k, args.wakes, args.gap_us, f"{round_}-{k}-{name}")
                    results.setdefault((name, k), []).append(result)
                    line = f"round={round_} peer={name} k={k} " + " ".join(f"{a}={b}" for a, b in result.items())
                    print(line, flush=True)
                    log.write(line + "\n")
        log.write("\n# medians (min-max) over rounds, ns\n")
        print("\n# medians (min-max) over rounds, ns")
        for (name, k), runs in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
            parts = []
            for field in ["publish_p50", "first_p50", "all_p50", "all_p99"]:
                values = [r[field] for r in runs]
                parts.append(f"{field} {statistics.median(values):.0f} ({min(values)}-{max(values)})")
            line = f"{name:<14} K={k:<3} " + "  ".join(parts)
            print(line)
            log.write(line + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
