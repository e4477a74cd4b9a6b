#!/usr/bin/env python3
"""Usage: perf/wake-rtt.py [--rounds N] [--trips N] [--gap-us G]

The blocking round trip (docs/wakeup.md): two processes pinned to CPUs 0 and 1 pass a message back
and forth, and each waits for it asleep. Per round, interleaved: the plain primitives (perf/c/
blocking.c: a futex word and an eventfd per direction), ShmRing (the release-built test peer's
ring-wait-pingpong: two rings, RingConsumer.wait through io_uring) and ShmRing with the futex
fallback, in an order that turns with the round. Each program's p50 and p99.9 over the best plain primitive of the same round
(the lower p50 of futex and eventfd); the report gives medians (min-max) of those ratios and of
the share of waits that slept.

With --gap-us G, the answering side waits G µs before each answer (so that the other side is
surely asleep) and the figure is the answer's one-way latency, from its send to the return from
the receiver's wait: the latency of waking a sleeping receiver, every hop asleep.

Results: perf/results/wake-rtt-DATE.txt (not in git)."""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "perf/results/bin")
PEER = os.path.join(ROOT, ".build/release/shmring-test-peer")


def values(text):
    return {key: float(value) for key, value in re.findall(r"(\w+)=([0-9.]+)", text)}


def plain(kind, trips, gap):
    out = subprocess.run([os.path.join(BIN, "blocking"), kind, str(trips), "0", "1", str(gap)], check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return values(out)


def shmring(trips, fallback, round_, gap):
    key = f"wake-rtt-{os.getpid()}-{round_}-{int(fallback)}"
    env = dict(os.environ, SHMRING_WAKE_FALLBACK="1" if fallback else "0")
    common = ["ring-wait-pingpong", "--key", key, "--rounds", str(trips), "--gap-us", str(gap)]
    pong = subprocess.Popen([PEER] + common + ["--side", "pong", "--cpu", "1"], env=env,
                            stdout=subprocess.PIPE, text=True)
    ping = subprocess.run([PEER] + common + ["--side", "ping", "--cpu", "0"], env=env, check=True,
                          capture_output=True, text=True, timeout=600).stdout
    pong.communicate(timeout=60)
    result = values(ping)
    result["slept_share"] = result["sleeps"] / trips
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--trips", type=int, default=20000)
    parser.add_argument("--gap-us", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(BIN, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", os.path.join(BIN, "blocking"),
                    os.path.join(ROOT, "perf/c/blocking.c")], check=True)
    subprocess.run(["swift", "build", "-c", "release", "--product", "shmring-test-peer"], check=True, cwd=ROOT,
                   capture_output=True)
    out = os.path.join(ROOT, "perf/results", "wake-rtt-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".txt")
    log = open(out, "w")

    def say(text):
        print(text)
        log.write(text + "\n")
        log.flush()

    say(f"# wake-rtt {datetime.datetime.utcnow().isoformat()}Z {args}")
    ratios = {}
    shares = {}
    for round_ in range(1, args.rounds + 1):
        runs = {"futex": lambda: plain("futex", args.trips, args.gap_us),
                "eventfd": lambda: plain("eventfd", args.trips, args.gap_us),
                "shmring": lambda: shmring(args.trips, False, round_, args.gap_us),
                "shmring-fallback": lambda: shmring(args.trips, True, round_, args.gap_us)}
        # The order turns with the round, so that no program always runs first or last.
        names = list(runs)
        shift = (round_ - 1) % len(names)
        results = {name: runs[name]() for name in names[shift:] + names[:shift]}
        kind = "hop" if args.gap_us else "rtt"
        best = min(("futex", "eventfd"), key=lambda k: results[k][f"{kind}_p50_ns"])
        for name, r in results.items():
            say(f"round={round_} program={name} p50={r[kind + '_p50_ns']:.0f} p99={r[kind + '_p99_ns']:.0f} "
                f"p999={r[kind + '_p999_ns']:.0f} slept_share={r['slept_share']:.3f} best_plain={best}")
            shares.setdefault(name, []).append(r["slept_share"])
            for p in (f"{kind}_p50_ns", f"{kind}_p999_ns"):
                ratios.setdefault((name, p), []).append(r[p] / results[best][p])
    say("\n# medians (min-max) over rounds: ratio to the best plain primitive of the round; slept share")
    for (name, p), found in sorted(ratios.items()):
        say(f"{name:<18} {p:<12} {statistics.median(found):6.2f} ({min(found):.2f}-{max(found):.2f})  "
            f"slept {statistics.median(shares[name]):.2f} ({min(shares[name]):.2f}-{max(shares[name]):.2f})")
    say(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
