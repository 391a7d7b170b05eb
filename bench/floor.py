#!/usr/bin/env python3
"""The latency floor of this machine: p99 at fixed offered rates (open
loop, workload A, 32 connections, 10,000 keys of 1 KiB, dynakv-bench) of
the bare in-memory server, the bare sled server, one dynakv node and three
dynakv nodes at r=w=quorum.

Issue 13 asks for a three-node p99 of at most 2 ms at half the three-node
saturation rate. This script says what p99 a server that does nothing but
look up a hash map gets at the same rates on the same machine, with the
same load generator, so a three-node figure can be read against what any
server gets here. Every target runs for the whole script; each run visits
every rate and every target in turn, so the figures of one rate are taken
seconds apart. Medians of RUNS runs of DUR (min–max). Writes
bench/results/floor.md.
"""

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
KEYS = 10000
RATES = [int(r) for r in os.environ.get("RATES", "1000,3000,6000,12000").split(",")]


def main():
    procs = common.Procs()
    root = tempfile.mkdtemp(prefix="dynakv-floor-")
    try:
        targets = {}
        for backend in ("memory", "sled"):
            port = common.free_port()
            url = f"http://127.0.0.1:{port}"
            procs.start([common.BENCH, "baseline", "--backend", backend, "--listen", f"127.0.0.1:{port}",
                         "--data-dir", os.path.join(root, backend)])
            common.wait_http(url + "/health")
            targets[backend] = ([url], None)
        one, _ = common.start_dynakv(procs, 1, os.path.join(root, "one"))
        targets["1 node"] = (one, None)
        three, _ = common.start_dynakv(procs, 3, os.path.join(root, "three"))
        targets["3 nodes, quorum"] = (three, "quorum")
        for urls, level in targets.values():
            common.preload(urls, KEYS, level=level)

        p99 = {(name, rate): [] for name in targets for rate in RATES}
        achieved = {(name, rate): [] for name in targets for rate in RATES}
        for run in range(RUNS):
            for rate in RATES:
                for name, (urls, level) in targets.items():
                    rep = common.bench(urls, "a", KEYS, 32, DUR, "1s", level=level, rate=rate)
                    p99[name, rate].append(rep["total"]["p99_ms"])
                    achieved[name, rate].append(rep["total"]["throughput"])
            print(f"run {run}: " + ", ".join(f"{n}@{r} {v[-1]:.2f}" for (n, r), v in p99.items()), flush=True)
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)

    lines = ["## The latency floor of this machine (`bench/floor.py`)\n",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. p99 in ms at "
             f"fixed offered rates, open loop (each request timed from its scheduled start), workload A (50 % reads, "
             f"50 % updates), 32 connections, {KEYS:,} keys of 1 KiB, medians of {RUNS} runs of {DUR} (min–max); "
             "each run visits every rate and every target in turn. Every server and the load generator share the "
             "2 cores. Command: `python3 bench/floor.py`.\n",
             "| offered ops/s | " + " | ".join(targets) + " |",
             "|---|" + "---|" * len(targets)]
    for rate in RATES:
        cells = []
        for name in targets:
            got = statistics.median(achieved[name, rate])
            short = f" (achieved {got:.0f})" if got < 0.95 * rate else ""
            cells.append(common.cell(p99[name, rate], "{:.2f}") + short)
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    common.write_section("floor.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
