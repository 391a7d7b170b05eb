#!/usr/bin/env python3
"""User-space instructions per request, counted by valgrind's callgrind:
a measure of a change to the request path that this machine's noise does
not swamp (throughput on two shared cores moves by 10 % between runs of one
binary; an instruction count moves by about 1 % at most). It does not see the
kernel (sockets, loopback), waiting, or cache misses: use it to tell whether
a change to dynakv's own code made a request cheaper, and the throughput
benchmarks to tell what that is worth.

    bench/instructions.py [BINARY ...] [--out FILE] [--nodes 3]

Each BINARY (default target/release/dynakv) runs as one node under
callgrind with instrumentation off; after a preload of KEYS keys of 1 KiB,
instrumentation is switched on for DUR of each workload (`write`, then `c`)
at 4 in flight, and the instructions counted are divided by the requests
served. The bare sled server (`dynakv-bench baseline --backend sled`) is
measured the same way. Writes bench/results/instructions.md (or --out) and
reassembles bench/RESULTS.md. valgrind is installed with apt-get when
missing.

With --nodes 3 each BINARY runs as a three-node cluster, every node under
callgrind (timeouts stretched, anti-entropy off), and the instructions of
all three are summed per client request at r=w=quorum: the replicated
path's own cost (bench/results/instructions-3.md).
"""

import argparse
import datetime
import glob
import json
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


# Three nodes under callgrind run some 50 times slower than natively:
# timeouts and failure detection are stretched so that nothing times out,
# and anti-entropy is off so that only the requests are counted.
SLOW = ["--request-timeout-ms", "20000", "--suspect-after-ms", "60000", "--dead-after-ms", "120000",
        "--anti-entropy-interval-ms", "0"]


def measure(servers, level=None):
    """{workload: (instructions per request, requests)}: `servers` are the
    argument lists of one server or of the nodes of one cluster (the first
    the seed), each run under callgrind; a cluster's count is the sum over
    its nodes, per client request (spread over them, at `level`)."""
    root = tempfile.mkdtemp()
    ports = [common.free_port() for _ in servers]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    outs = [os.path.join(root, f"callgrind-{i}.out") for i in range(len(servers))]
    procs = []
    try:
        for i, args in enumerate(servers):
            argv = [a.replace("{port}", str(ports[i])).replace("{root}", root).replace("{seed}", urls[0])
                    for a in args]
            procs.append(subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                           f"--callgrind-out-file={outs[i]}", *argv],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for url in urls:
            common.wait_http(url + "/health", timeout=180)
        if len(urls) > 1:
            deadline = time.time() + 300
            while time.time() < deadline:
                members = json.loads(common.wait_http(urls[-1] + "/cluster/members"))["members"]
                if sum(m["status"] == "alive" for m in members) == len(urls):
                    break
                time.sleep(0.5)
        common.preload(urls, KEYS, conc=4, level=level)
        result = {}
        for workload, _ in WORKLOADS:
            for p in procs:
                control(p.pid, "-z")
                control(p.pid, "-i", "on")
            rep = common.bench(urls, workload, KEYS, 4, DUR, "0s", level=level)
            total = 0
            for p, out in zip(procs, outs):
                control(p.pid, "-i", "off")
                counted(out)  # anything dumped before this workload
                control(p.pid, "-d")
                deadline = time.time() + 60
                while not glob.glob(out + ".*") and time.time() < deadline:
                    time.sleep(0.2)
                total += counted(out)
            n = rep["total"]["count"]
            result[workload] = (total / max(1, n), n)
        return result
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


def label(binary):
    """A binary's path as a results table names it."""
    return os.path.relpath(binary, common.ROOT) if binary.startswith(common.ROOT) else binary


def node(binary, i):
    args = [binary, "--listen", "127.0.0.1:{port}", "--data-dir", f"{{root}}/n{i}", "--node-id", f"n{i}"]
    return args + (["--seeds", "{seed}", *SLOW] if i > 1 else SLOW)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="*", default=[common.DYNAKV])
    ap.add_argument("--out", default="instructions.md")
    ap.add_argument("--nodes", type=int, default=1, choices=(1, 3),
                    help="3: each binary as a three-node cluster at r=w=quorum (no sled baseline)")
    a = ap.parse_args()
    ensure_valgrind()
    if a.nodes == 3:
        return three(a)
    rows = []
    sled = measure([[common.BENCH, "baseline", "--backend", "sled", "--listen", "127.0.0.1:{port}",
                     "--data-dir", "{root}/b"]])
    for binary in a.binaries:
        r = measure([[binary, "--listen", "127.0.0.1:{port}", "--data-dir", "{root}/d", "--node-id", "n1"]])
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
        name = label(binary)
        lines.append(f"| dynakv `{name}` | " + " | ".join(f"{r[w][0]:,.0f}" for w, _ in WORKLOADS) + " | "
                     + " | ".join(f"{r[w][0] / sled[w][0]:.2f}" for w, _ in WORKLOADS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    common.write_section(a.out, text)


def three(a):
    rows = [(b, measure([node(b, i) for i in (1, 2, 3)], level="quorum")) for b in a.binaries]
    lines = [
        "## Instructions per request, three nodes (`bench/instructions.py --nodes 3`)",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. User-space instructions of all "
        f"three nodes per client request, counted by callgrind; r=w=quorum, {KEYS} keys of 1 KiB, 4 in flight "
        f"(spread over the nodes) for {DUR} per workload, anti-entropy off. With 4 in flight a replica batch "
        "carries about one operation, so the internal exchange weighs more than at 32. Command: "
        "`python3 bench/instructions.py --nodes 3 " + " ".join("<binary>" for _ in a.binaries) + "`.",
        "",
        "| build | " + " | ".join(f"{op} instructions / request" for _, op in WORKLOADS) + " |",
        "|---" * (1 + len(WORKLOADS)) + "|",
    ]
    for b, r in rows:
        lines.append(f"| `{label(b)}` | " + " | ".join(f"{r[w][0]:,.0f}" for w, _ in WORKLOADS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    common.write_section(a.out if a.out != "instructions.md" else "instructions-3.md", text)


if __name__ == "__main__":
    main()
