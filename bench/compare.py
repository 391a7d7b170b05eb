#!/usr/bin/env python3
"""Before/after: two dynakv binaries measured in one run, alternating, so a
change can be shown to cost nothing (or what it costs).

    bench/compare.py BEFORE_BINARY [AFTER_BINARY] [--label TEXT] [--title T --out FILE]

AFTER defaults to target/release/dynakv. For each binary, in turns (A B A B
...): one node, then three nodes at r=w=quorum, each running workload
`write` (PUT) and `c` (GET). Medians of RUNS (default 3) runs of DUR each.
Writes bench/results/before-after.md (or --out) and reassembles
bench/RESULTS.md.
"""

import argparse
import datetime
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DUR = os.environ.get("DUR", "5s")
WARM = os.environ.get("WARM", "1s")
RUNS = int(os.environ.get("RUNS", "3"))
KEYS = int(os.environ.get("KEYS", "10000"))
CONC = int(os.environ.get("CONC", "32"))


def one(binary, nodes, workload, root):
    procs = common.Procs()
    try:
        urls, pids = common.start_dynakv(procs, nodes, root, binary=binary)
        common.preload(urls, KEYS)
        level = "quorum" if nodes > 1 else None
        rep = common.bench(urls, workload, KEYS, CONC, DUR, WARM, level=level)
        return rep["total"]["throughput"], rep["total"]["p99_ms"]
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=common.DYNAKV)
    ap.add_argument("--label", default="")
    ap.add_argument("--title", default="Before and after the restructuring")
    ap.add_argument("--out", default="before-after.md")
    args = ap.parse_args()
    results = {}
    for run in range(RUNS):
        for nodes in (1, 3):
            for workload in ("write", "c"):
                for name, binary in (("before", args.before), ("after", args.after)):
                    root = tempfile.mkdtemp(prefix="dynakv-cmp-")
                    ops, p99 = one(binary, nodes, workload, root)
                    results.setdefault((nodes, workload, name), []).append((ops, p99))
                    print(f"run {run} {nodes} node(s) {workload} {name}: {ops:.0f} ops/s p99 {p99:.2f} ms", flush=True)
    lines = [f"## {args.title} (`bench/compare.py`)\n",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
             f"{args.label} Both binaries measured in one run, alternating A B A B, medians of {RUNS} runs "
             f"(min–max), {DUR} each, {CONC} in flight, {KEYS} keys of 1 KiB; 3 nodes at r=w=quorum. "
             f"Command: `bench/compare.py <before-binary>{'' if args.out == 'before-after.md' else ' --out ' + args.out}`.\n",
             "| nodes | op | before ops/s | after ops/s | after / before | before p99 ms | after p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for nodes in (1, 3):
        for workload, op in (("write", "PUT"), ("c", "GET")):
            b = results[(nodes, workload, "before")]
            a = results[(nodes, workload, "after")]
            ratio = common.med([x[0] for x in a])[0] / common.med([x[0] for x in b])[0]
            lines.append(f"| {nodes} | {op} | {common.cell([x[0] for x in b])} | {common.cell([x[0] for x in a])} | "
                         f"{ratio:.2f} | {common.cell([x[1] for x in b], '{:.2f}')} | "
                         f"{common.cell([x[1] for x in a], '{:.2f}')} |")
    common.write_section(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
