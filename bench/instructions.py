#!/usr/bin/env python3
"""User-space instructions per request, counted by valgrind's callgrind:
a measure of a change to the request path that this machine's noise does
not swamp (throughput on two shared cores moves by 10 % between runs of one
binary; an instruction count moves by about 1 % at most). It does not see the
kernel (sockets, loopback), waiting, or cache misses: use it to tell whether
a change to dynakv's own code made a request cheaper, and the throughput
benchmarks to tell what that is worth.

    bench/instructions.py [BINARY ...] [--out FILE]

Each BINARY (default target/release/dynakv) runs as one node under
callgrind with instrumentation off; after a preload of KEYS keys of 1 KiB,
instrumentation is switched on for DUR of each workload (`write`, then `c`)
at 4 in flight, and the instructions counted are divided by the requests
served. The bare sled server (`dynakv-bench baseline --backend sled`) is
measured the same way. Writes bench/results/instructions.md (or --out) and
reassembles bench/RESULTS.md. valgrind is installed with apt-get when
missing.
"""

import argparse
import datetime
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

KEYS = int(os.environ.get("KEYS", "2000"))
DUR = os.environ.get("DUR", "6s")
WORKLOADS = [("write", "PUT"), ("c", "GET")]


def ensure_valgrind():
    if shutil.which("valgrind") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "valgrind"], check=True, stdout=subprocess.DEVNULL)


def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def counted(out):
    """The instructions in callgrind's dump files (`totals:` of each part)."""
    total = 0
    for path in glob.glob(out + ".*"):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("totals:"):
                    total += int(line.split()[1])
                    break
        os.unlink(path)
    return total


def measure(args):
    """{workload: (instructions per request, requests)} for one server."""
    root = tempfile.mkdtemp()
    port = common.free_port()
    url = f"http://127.0.0.1:{port}"
    out = os.path.join(root, "callgrind.out")
    argv = [a.replace("{port}", str(port)).replace("{root}", root) for a in args]
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                             f"--callgrind-out-file={out}", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        common.wait_http(url + "/health", timeout=180)
        common.preload([url], KEYS, conc=4)
        result = {}
        for workload, _ in WORKLOADS:
            control(proc.pid, "-z")
            control(proc.pid, "-i", "on")
            rep = common.bench([url], workload, KEYS, 4, DUR, "0s")
            control(proc.pid, "-i", "off")
            counted(out)  # anything dumped before this workload
            control(proc.pid, "-d")
            deadline = time.time() + 60
            while not glob.glob(out + ".*") and time.time() < deadline:
                time.sleep(0.2)
            n = rep["total"]["count"]
            result[workload] = (counted(out) / max(1, n), n)
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="*", default=[common.DYNAKV])
    ap.add_argument("--out", default="instructions.md")
    a = ap.parse_args()
    ensure_valgrind()
    rows = []
    sled = measure([common.BENCH, "baseline", "--backend", "sled", "--listen", "127.0.0.1:{port}",
                    "--data-dir", "{root}/b"])
    for binary in a.binaries:
        r = measure([binary, "--listen", "127.0.0.1:{port}", "--data-dir", "{root}/d", "--node-id", "n1"])
        rows.append((binary, r))
    lines = [
        "## Instructions per request (`bench/instructions.py`)",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. User-space instructions per request counted by "
        f"callgrind, one node, {KEYS} keys of 1 KiB, 4 in flight for {DUR} per workload (the kernel's share, "
        "about half of a request's CPU here, is not counted). Command: `python3 bench/instructions.py "
        + " ".join(os.path.relpath(b, common.ROOT) if b.startswith(common.ROOT) else "<binary>" for b in a.binaries)
        + "`.",
        "",
        "| server | " + " | ".join(f"{op} instructions / request" for _, op in WORKLOADS) + " | "
        + " | ".join(f"{op} / sled" for _, op in WORKLOADS) + " |",
        "|---" * (1 + 2 * len(WORKLOADS)) + "|",
        "| bare sled server | " + " | ".join(f"{sled[w][0]:,.0f}" for w, _ in WORKLOADS) + " | "
        + " | ".join("1.00" for _ in WORKLOADS) + " |",
    ]
    for binary, r in rows:
        name = os.path.relpath(binary, common.ROOT) if binary.startswith(common.ROOT) else binary
        lines.append(f"| dynakv `{name}` | " + " | ".join(f"{r[w][0]:,.0f}" for w, _ in WORKLOADS) + " | "
                     + " | ".join(f"{r[w][0] / sled[w][0]:.2f}" for w, _ in WORKLOADS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    common.write_section(a.out, text)


if __name__ == "__main__":
    main()
