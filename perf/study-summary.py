#!/usr/bin/env python3
"""Usage: perf/study-summary.py RESULTS_FILE

Reads the lines perf/study.sh wrote ("round=R label=NAME/SIZE/CAPACITY/BATCH|rtt ...") and prints,
for every program, size and capacity, the median (min-max) over rounds of its per-round ratios:
throughput against `slots` (per message), against `slots-batched` and `tachyon-style` (batches),
round trip against `commit` (the minimal commit-in-header ring of the same capacity) and against
`line` (one cache line per direction). Only ratios within a round are compared."""
import re
import statistics
import sys
from collections import defaultdict

values = defaultdict(dict)  # round -> label -> {field: value}
for line in open(sys.argv[1]):
    match = re.match(r"round=(\d+) label=(\S+) (.*)", line)
    if not match:
        continue
    fields = dict(re.findall(r"(\w+)=(\d+)", match.group(3)))
    values[int(match.group(1))][match.group(2)] = {k: float(v) for k, v in fields.items()}


def ratios(label, field, base_label, base_field=None):
    out = []
    for by_label in values.values():
        a, b = by_label.get(label, {}).get(field), by_label.get(base_label, {}).get(base_field or field)
        if a and b:
            out.append(a / b)
    return out


def show(name, found):
    if found:
        print(f"  {name}: {statistics.median(found):.2f} ({min(found):.2f}-{max(found):.2f})")


labels = sorted({label for by_label in values.values() for label in by_label})
line_p50 = [by_label["line"]["rtt_p50_ns"] for by_label in values.values() if "line" in by_label]
if line_p50:
    print(f"line (one cache line per direction) rtt p50: median {statistics.median(line_p50):.0f} ns "
          f"({min(line_p50):.0f}-{max(line_p50):.0f}) over {len(line_p50)} rounds")
groups = sorted({tuple(label.split("/")[1:3]) for label in labels if label.count("/") == 3}, key=lambda g: (int(g[0]), int(g[1])))
for size, capacity in groups:
    print(f"\n== payload {size} B, capacity {capacity} (medians of per-round ratios, min-max)")
    names = sorted({label.split("/")[0] for label in labels if label.count("/") == 3 and label.split("/")[1:3] == [size, capacity]})
    base = f"{size}/{capacity}"
    for name in names:
        print(f"{name}:")
        show("msgs/s per message / slots", ratios(f"{name}/{base}/1", "msgs_per_s", f"slots/{base}/1"))
        for batch in ("16", "32"):
            show(f"msgs/s batches of {batch} / slots-batched ({batch})",
                 ratios(f"{name}/{base}/{batch}", "msgs_per_s", f"slots-batched/{base}/{batch}"))
            show(f"msgs/s batches of {batch} / tachyon-style ({batch})",
                 ratios(f"{name}/{base}/{batch}", "msgs_per_s", f"tachyon-style/{base}/{batch}"))
        show("rtt p50 / commit", ratios(f"{name}/{base}/rtt", "rtt_p50_ns", f"commit/{base}/rtt"))
        show("rtt p99 / commit", ratios(f"{name}/{base}/rtt", "rtt_p99_ns", f"commit/{base}/rtt"))
        show("rtt p50 / line", ratios(f"{name}/{base}/rtt", "rtt_p50_ns", "line"))
        if name == "shmring":
            show("msgs/s per message / twin", ratios(f"shmring/{base}/1", "msgs_per_s", f"twin/{base}/1"))
            show("msgs/s batches of 32 / twin", ratios(f"shmring/{base}/32", "msgs_per_s", f"twin/{base}/32"))
            show("rtt p50 / twin", ratios(f"shmring/{base}/rtt", "rtt_p50_ns", f"twin/{base}/rtt"))
