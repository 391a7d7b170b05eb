#!/usr/bin/env python3
"""Runs the dynakv benchmark matrix on this machine and writes its section of
bench/RESULTS.md (bench/results/matrix.md).

Started by bench/run.sh after a release build. Everything runs on 127.0.0.1:
the in-memory and bare-sled baselines, a 1-node dynakv and a 3-node dynakv
cluster, driven by target/release/dynakv-bench. Each figure is the median of
RUNS runs (min and max beside it). Server CPU (cores busy) and resident memory
come from /proc. Environment knobs: DUR (measured seconds per run), WARM,
RUNS, KEYS, CONC, BIG_KEYS (keys for the memory/disk load), QUICK=1.
"""

import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import BENCH, DYNAKV, Procs, cpu_seconds, du_mib, free_port, rss_mib, start_dynakv, wait_http  # noqa: E402

QUICK = os.environ.get("QUICK") == "1"
DUR = os.environ.get("DUR", "2s" if QUICK else "5s")
WARM = os.environ.get("WARM", "1s")
RUNS = int(os.environ.get("RUNS", "1" if QUICK else "3"))
KEYS = int(os.environ.get("KEYS", "10000"))
CONC = int(os.environ.get("CONC", "32"))
BIG_KEYS = int(os.environ.get("BIG_KEYS", "20000" if QUICK else "1000000"))
WORKLOADS = ["a", "b", "c", "write", "delete"]
LEVELS = ["1", "quorum", "all"]


def bench(urls, workload, level=None, rate=None):
    return common.bench(urls, workload, KEYS, CONC, DUR, WARM, level=level, rate=rate)


def preload(urls, keys=KEYS, conc=CONC):
    common.preload(urls, keys, conc=conc)


def measure(name, urls, pids, results, levels=(None,)):
    preload(urls)
    for level in levels:
        for w in WORKLOADS:
            for run in range(RUNS):
                c0, t0 = cpu_seconds(pids), time.time()
                rep = bench(urls, w, level)
                cores = (cpu_seconds(pids) - c0) / (time.time() - t0)
                results.append({"target": name, "workload": w, "level": level or "-", "run": run,
                                "ops": rep["total"]["throughput"], "p50": rep["total"]["p50_ms"],
                                "p99": rep["total"]["p99_ms"], "p999": rep["total"]["p999_ms"],
                                "errors": rep["total"]["errors"], "cores": cores, "rss": rss_mib(pids),
                                "ops_detail": rep["ops"]})
                print(f"  {name} {w} {level or '-'} run {run}: {rep['total']['throughput']:.0f} ops/s "
                      f"p99 {rep['total']['p99_ms']:.2f} ms", flush=True)


def med(rows, key):
    return common.med([r[key] for r in rows])


def main():
    for b in (DYNAKV, BENCH):
        if not os.path.exists(b):
            raise SystemExit(f"{b} missing: run bench/run.sh (it builds in release first)")
    root = tempfile.mkdtemp(prefix="dynakv-bench-")
    results = []
    procs = Procs()
    try:
        print("baselines and 1 node", flush=True)
        mem_port, sled_port = free_port(), free_port()
        mem = procs.start([BENCH, "baseline", "--backend", "memory", "--listen", f"127.0.0.1:{mem_port}"])
        sled = procs.start([BENCH, "baseline", "--backend", "sled", "--listen", f"127.0.0.1:{sled_port}",
                            "--data-dir", os.path.join(root, "sled")])
        wait_http(f"http://127.0.0.1:{mem_port}/health")
        wait_http(f"http://127.0.0.1:{sled_port}/health")
        measure("memory", [f"http://127.0.0.1:{mem_port}"], [mem.pid], results)
        measure("sled", [f"http://127.0.0.1:{sled_port}"], [sled.pid], results)
        procs.stop()
        urls, pids = start_dynakv(procs, 1, os.path.join(root, "one"))
        measure("1-node", urls, pids, results)
        procs.stop()

        print("3 nodes", flush=True)
        urls, pids = start_dynakv(procs, 3, os.path.join(root, "three"))
        measure("3-node", urls, pids, results, levels=LEVELS)
        sat = statistics.median(r["ops"] for r in results
                                if r["target"] == "3-node" and r["workload"] == "a" and r["level"] == "quorum")
        half = []
        for run in range(RUNS):
            rep = bench(urls, "a", "quorum", rate=round(sat / 2))
            half.append({"ops": rep["total"]["throughput"], "p50": rep["total"]["p50_ms"],
                         "p99": rep["total"]["p99_ms"], "p999": rep["total"]["p999_ms"]})
            print(f"  3-node a quorum at {sat / 2:.0f}/s: p99 {rep['total']['p99_ms']:.2f} ms", flush=True)
        procs.stop()

        print(f"memory and disk after {BIG_KEYS} keys of 1 KiB", flush=True)
        urls, pids = start_dynakv(procs, 1, os.path.join(root, "big"))
        rss0 = rss_mib(pids)
        t0 = time.time()
        preload(urls, keys=BIG_KEYS, conc=64)
        load_secs = time.time() - t0
        time.sleep(2)  # one sled flush interval and then some, so disk use is settled
        big = {"keys": BIG_KEYS, "rss_start": rss0, "rss": rss_mib(pids),
               "disk": du_mib(os.path.join(root, "big")), "load_secs": load_secs}
        procs.stop()
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_report(results, half, sat, big)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_report(results, half, sat, big):
    def group(target, workload, level="-"):
        return [r for r in results if r["target"] == target and r["workload"] == workload and r["level"] == level]

    def cell(rows, key, fmt):
        return common.cell([r[key] for r in rows], fmt)

    lines = []
    lines.append("## The matrix (`bench/run.sh`)\n")
    lines.append(f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines.append(f"Machine: {os.cpu_count()} cores ({cpu_model()}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}  ")
    lines.append(f"Command: `bench/run.sh` (DUR={DUR} WARM={WARM} RUNS={RUNS} KEYS={KEYS} CONC={CONC} BIG_KEYS={BIG_KEYS})  ")
    lines.append("Every server and the load generator share this machine's cores, so figures are comparable only "
                 "within one run: compare ratios, not absolutes. Each cell is the median of the runs, (min–max). "
                 "Values 1 KiB, uniform keys, closed loop with "
                 f"{CONC} requests in flight; `cores` is CPU time of the server processes per wall second.\n")

    lines.append("## Throughput (ops/s) and p99 latency (ms)\n")
    lines.append("| target | level | workload | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server cores | server RSS MiB |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for target, levels in (("memory", ["-"]), ("sled", ["-"]), ("1-node", ["-"]), ("3-node", LEVELS)):
        for level in levels:
            for w in WORKLOADS:
                rows = group(target, w, level)
                if not rows:
                    continue
                lines.append(f"| {target} | {level} | {w} | {cell(rows, 'ops', '{:.0f}')} | {cell(rows, 'p50', '{:.2f}')} | "
                             f"{cell(rows, 'p99', '{:.2f}')} | {cell(rows, 'p999', '{:.2f}')} | "
                             f"{sum(r['errors'] for r in rows)} | {med(rows, 'cores')[0]:.2f} | {med(rows, 'rss')[0]:.0f} |")

    def per_op(target, workload, op, level="-"):
        vals = [r["ops_detail"][op]["throughput"] for r in group(target, workload, level) if op in r["ops_detail"]]
        return statistics.median(vals) if vals else float("nan")

    put1, get1 = per_op("1-node", "write", "update"), per_op("1-node", "c", "read")
    lines.append("\n## Ratios (medians of the same run)\n")
    lines.append("| ratio | value | target |")
    lines.append("|---|---|---|")
    lines.append(f"| 1-node PUT / sled-baseline PUT (workload write) | {put1 / per_op('sled', 'write', 'update'):.2f} | ≥ 0.6 |")
    lines.append(f"| 1-node GET / sled-baseline GET (workload c) | {get1 / per_op('sled', 'c', 'read'):.2f} | ≥ 0.7 |")
    lines.append(f"| 1-node PUT / in-memory-baseline PUT | {put1 / per_op('memory', 'write', 'update'):.2f} | |")
    lines.append(f"| 1-node GET / in-memory-baseline GET | {get1 / per_op('memory', 'c', 'read'):.2f} | |")
    put3, get3 = per_op("3-node", "write", "update", "quorum"), per_op("3-node", "c", "read", "quorum")
    lines.append(f"| 3-node w=quorum PUT / 1-node PUT | {put3 / put1:.2f} | ≥ 0.3 |")
    lines.append(f"| 3-node r=quorum GET / 1-node GET | {get3 / get1:.2f} | ≥ 0.3 |")
    a1 = statistics.median(r["ops"] for r in group("1-node", "a"))
    lines.append(f"| 3-node quorum workload A / 1-node workload A | {sat / a1:.2f} | ≥ 0.3 |")

    lines.append("\n## Latency at half the saturation rate (3 nodes, workload A, r=w=quorum, open loop)\n")
    lines.append(f"Saturation (closed loop, median): {sat:.0f} ops/s; offered: {sat / 2:.0f} ops/s, each request timed "
                 "from its scheduled start (coordinated omission corrected).\n")
    lines.append("| ops/s achieved | p50 ms | p99 ms | p99.9 ms | target |")
    lines.append("|---|---|---|---|---|")
    lines.append(f"| {cell(half, 'ops', '{:.0f}')} | {cell(half, 'p50', '{:.2f}')} | {cell(half, 'p99', '{:.2f}')} | "
                 f"{cell(half, 'p999', '{:.2f}')} | p99 ≤ 5 ms |")

    lines.append(f"\n## Memory and disk after loading {big['keys']:,} keys of 1 KiB (1 node)\n")
    lines.append("| RSS before | RSS after | data dir on disk | load time | load rate |")
    lines.append("|---|---|---|---|---|")
    lines.append(f"| {big['rss_start']:.0f} MiB | {big['rss']:.0f} MiB | {big['disk']:.0f} MiB | {big['load_secs']:.0f} s | "
                 f"{big['keys'] / big['load_secs']:.0f} keys/s |")

    common.write_section("matrix.md", "\n".join(lines))
    print("wrote bench/results/matrix.md and bench/RESULTS.md")


if __name__ == "__main__":
    sys.exit(main())
