#!/usr/bin/env python3
"""One node under 32, 256 and 1,024 concurrent clients (issue 12): the
throughput and latency curve, the share of requests shed with 503
`overloaded`, and the node's resident memory at each level. Workload A
(50 % reads, 50 % updates), 1 KiB values, closed loop, medians of RUNS.
Writes bench/results/overload.md."""

import datetime
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

RUNS = int(os.environ.get("RUNS", "3"))
DUR = os.environ.get("DUR", "5s")
LEVELS = [32, 256, 1024]


def main():
    root = tempfile.mkdtemp(prefix="dynakv-ovl-")
    procs = common.Procs()
    rows = {c: [] for c in LEVELS}
    try:
        urls, pids = common.start_dynakv(procs, 1, root)
        common.preload(urls, 10000)
        for run in range(RUNS):
            for c in LEVELS:
                rep = common.bench(urls, "a", 10000, c, DUR, "1s")
                t = rep["total"]
                ok = (t["count"] - t["errors"]) / rep["duration_s"]
                rows[c].append({"ops": ok, "p50": t["p50_ms"], "p99": t["p99_ms"],
                                "errors": t["errors"], "count": t["count"], "rss": common.rss_mib(pids)})
                print(f"run {run} c={c}: {ok:.0f} ok/s p99 {t['p99_ms']:.2f} ms "
                      f"errors {t['errors']} rss {rows[c][-1]['rss']:.0f} MiB", flush=True)
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)
    lines = ["## One node under 32, 256 and 1,024 clients (`bench/overload.py`)\n",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Default limits "
             "(`--max-requests 512`, `--max-connections 4096`). Workload A (50 % reads, 50 % updates), 1 KiB values, "
             f"closed loop with that many connections each keeping one request in flight, {DUR} per run, medians of "
             f"{RUNS} (min–max). Errors are requests answered with anything else than a success (here: 503 "
             "`overloaded` once more than 512 are in progress); latencies are of every request, errors included.\n",
             "| clients | ops/s (successes) | p50 ms | p99 ms | errors (share) | node RSS MiB |",
             "|---|---|---|---|---|---|"]
    for c in LEVELS:
        r = rows[c]
        share = statistics.median(x["errors"] / max(1, x["count"]) for x in r)
        lines.append(f"| {c} | {common.cell([x['ops'] for x in r])} | {common.cell([x['p50'] for x in r], '{:.2f}')} | "
                     f"{common.cell([x['p99'] for x in r], '{:.2f}')} | {statistics.median(x['errors'] for x in r):.0f} "
                     f"({100 * share:.1f} %) | {common.cell([x['rss'] for x in r])} |")
    common.write_section("overload.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
