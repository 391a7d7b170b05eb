#!/usr/bin/env python3
"""Ownership transfer figures for bench/RESULTS.md (issue 10).

    bench/transfer.py             # BIG=1000000 keys of 1 KiB
    BIG=200000 bench/transfer.py  # quicker

Three nodes (N=3) load BIG keys of 1 KiB with w=quorum. An open-loop
foreground load (workload b, r=w=quorum, RATE ops/s) runs for a while before
the join (the baseline p99), then a fourth node joins with the default
transfer settings while the same load runs. Measured: time from the fourth
node's start until /health/ready answers 200, keys and bytes it received
(dynakv_transfer_*_total{direction="in"}), the receive rate, and foreground
p50/p99 before and during the transfer. Writes bench/results/transfer.md.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BIG = int(os.environ.get("BIG", "1000000"))
RATE = int(os.environ.get("RATE", "2000"))
WINDOW = os.environ.get("WINDOW", "15s")


def metric(url, name, label=None):
    text = common.wait_http(url + "/metrics").decode()
    for line in text.splitlines():
        if line.startswith(name) and (label is None or label in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ready(url):
    try:
        status, _ = common.http(url + "/health/ready", timeout=2)
        return status == 200
    except Exception:
        return False


def foreground(urls, out):
    rep = common.bench(urls, "b", BIG, 32, WINDOW, "1s", level="quorum", rate=RATE,
                       extra=["--key-prefix", "bench-"])
    out.append(rep)


def main():
    root = tempfile.mkdtemp(prefix="dynakv-xfer-")
    procs = common.Procs()
    try:
        urls, pids = common.start_dynakv(procs, 3, root)
        t0 = time.time()
        common.preload(urls, BIG, conc=64, level="quorum")
        load = time.time() - t0
        print(f"loaded {BIG} keys in {load:.0f} s", flush=True)
        before = []
        foreground(urls, before)
        print(f"before: p99 {before[0]['total']['p99_ms']:.2f} ms", flush=True)
        during = []
        port = common.free_port()
        url4 = f"http://127.0.0.1:{port}"
        fg = threading.Thread(target=foreground, args=(urls, during))
        fg.start()
        time.sleep(1.5)  # past the load generator's warm-up, so the join falls in the measured window
        start = time.time()
        procs.start([common.DYNAKV, "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(root, "n4"),
                     "--node-id", "n4", "--seeds", urls[0]])
        common.wait_http(url4 + "/health")
        while not ready(url4):
            time.sleep(0.05)
            if time.time() - start > 1200:
                raise SystemExit("n4 never became ready")
        took = time.time() - start
        fg.join()
        keys = metric(url4, "dynakv_transfer_keys_total", 'direction="in"')
        rbytes = metric(url4, "dynakv_transfer_bytes_total", 'direction="in"')
        owned = metric(url4, "dynakv_partitions_owned")
        print(f"n4 ready in {took:.1f} s: {keys:.0f} keys, {rbytes / 2**20:.0f} MiB, owns {owned:.0f} partitions",
              flush=True)
    finally:
        procs.stop()
        shutil.rmtree(root, ignore_errors=True)
    b, d = before[0]["total"], during[0]["total"]
    lines = ["## Ownership transfer: a fourth node joins (`bench/transfer.py`)\n",
             f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Three nodes "
             f"(N=3) hold {BIG:,} keys of 1 KiB (loaded with w=quorum in {load:.0f} s); a fourth node joins with the "
             "default transfer settings (2 partitions at once, at most 64 MiB/s) while an open-loop foreground "
             f"load runs (workload b, 95 % reads, r=w=quorum, {RATE} ops/s, {WINDOW} windows). All four nodes "
             "and the load generator share this 2-core machine.\n",
             "| | value | target |",
             "|---|---|---|",
             f"| time from start to `/health/ready` 200 | {took:.1f} s | |",
             f"| partitions it owns | {owned:.0f} of 64 | |",
             f"| keys received | {keys:,.0f} | |",
             f"| receive rate | {keys / took:,.0f} keys/s ({rbytes / 2**20 / took:.1f} MiB/s) | ≥ 30,000 keys/s |",
             f"| foreground p50 before / during | {b['p50_ms']:.2f} / {d['p50_ms']:.2f} ms | |",
             f"| foreground p99 before / during | {b['p99_ms']:.2f} / {d['p99_ms']:.2f} ms "
             f"({d['p99_ms'] / b['p99_ms']:.2f}x) | ≤ 2x |",
             f"| foreground errors before / during | {b['errors']} / {d['errors']} | |"]
    common.write_section("transfer.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
