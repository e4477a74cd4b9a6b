#!/usr/bin/env python3
"""Usage: perf/death-times.py [--kills N]

How long a death takes to be noticed (docs/failure-model.md), with the release-built test peer,
N kills of each kind (default 100), one process pair per kill:
- eviction: a gating consumer that never reads (`ring-wait-consume --stall`) holds a producer
  (`ring-evict-produce`) back on a full 4 KiB ring; the consumer is SIGKILLed; the time from the
  kill to the producer's next publish going through (its slot reclaimed on the rendezvous
  connection's hang-up, the producer woken);
- producer gone, blocking: a consumer asleep in `wait` (`ring-wait-consume`) after reading
  everything; the producer is SIGKILLed; the time from the kill to the consumer's `producerGone`;
- producer gone, spinning: the same with `--idle spin` (`idle(using: .spin)`, which looks about
  once per idle millisecond).
Times are CLOCK_MONOTONIC in both processes (the kill's just before `kill(2)`). Reports p50, p90
and max (µs) of each.

Results: perf/results/death-times-DATE.txt (not in git)."""
import argparse
import datetime
import os
import re
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, ".build/release/shmring-test-peer")


def spawn(args, ready=None):
    """Starts the peer; with `ready`, waits for that line on SHMRING_READY_FD."""
    read_end, write_end = os.pipe()
    process = subprocess.Popen([PEER] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, SHMRING_READY_FD=str(write_end)), pass_fds=(write_end,))
    os.close(write_end)
    process.ready = os.fdopen(read_end)
    if ready:
        wait_ready(process, ready)
    return process


def wait_ready(process, line):
    while True:
        got = process.ready.readline()
        if not got:
            sys.exit(f"{process.args[1]} ended before '{line}': {process.stderr.read()}")
        if got.strip() == line:
            return


def now():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def killing(*processes):
    """Kills what is still running of `processes` (after a failure, or a run cut short)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def eviction(tag):
    key = f"death-evict-{os.getpid()}-{tag}"
    producer = consumer = None
    try:
        producer = spawn(["ring-evict-produce", "--key", key], "created")
        consumer = spawn(["ring-wait-consume", "--key", key, "--count", "1", "--stall"], "attached")
        wait_ready(producer, "full")
        time.sleep(0.005)  # the producer goes from its spins to its sleep
        killed = now()
        consumer.send_signal(signal.SIGKILL)
        out = producer.communicate(timeout=60)[0]
        consumer.wait()
        return (int(re.search(r"resumed_at_ns=(\d+)", out).group(1)) - killed) / 1000
    finally:
        killing(producer, consumer)


def producer_gone(tag, spinning):
    key = f"death-gone-{os.getpid()}-{tag}"
    producer = consumer = None
    try:
        producer = spawn(["ring-produce", "--key", key, "--count", "10", "--wait-consumers", "1"], "created")
        consumer = spawn(["ring-wait-consume", "--key", key, "--count", "1000", "--timeout-ms", "600000"]
                         + (["--idle", "spin"] if spinning else []), "attached")
        wait_ready(producer, "published")
        time.sleep(0.01)  # the consumer reads the 10 and goes idle
        killed = now()
        producer.send_signal(signal.SIGKILL)
        producer.wait()
        out = consumer.communicate(timeout=60)[0]
        if "ended=producerGone" not in out:
            sys.exit(f"the consumer did not see the producer go: {out}")
        return (int(re.search(r"ended_at_ns=(\d+)", out).group(1)) - killed) / 1000
    finally:
        killing(producer, consumer)


def summary(name, values):
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]
    return f"{name:<26} n={len(values)} p50={pick(0.5):.0f} us p90={pick(0.9):.0f} us max={values[-1]:.0f} us"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(ROOT, f"perf/results/death-times-{stamp}.txt")
    results = {"eviction": [], "producer gone, blocking": [], "producer gone, spinning": []}
    for i in range(args.kills):  # interleaved, so that drift hits all three alike
        results["eviction"].append(eviction(i))
        results["producer gone, blocking"].append(producer_gone(i, False))
        results["producer gone, spinning"].append(producer_gone(i, True))
    with open(path, "w") as log:
        for name, values in results.items():
            log.write(f"{name}: {' '.join(f'{v:.0f}' for v in values)}\n")
        for name, values in results.items():
            line = summary(name, values)
            print(line)
            log.write(line + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
