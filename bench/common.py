"""Shared helpers of the benchmark scripts: processes, ports, /proc readings,
dynakv-bench runs, and assembling bench/RESULTS.md from its sections."""

import glob
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DYNAKV = os.path.join(ROOT, "target/release/dynakv")
BENCH = os.path.join(ROOT, "target/release/dynakv-bench")
TICK = os.sysconf("SC_CLK_TCK")

# The order sections appear in bench/RESULTS.md; any other file in
# bench/results/ follows them alphabetically.
ORDER = ["matrix.md", "perf.md", "floor.md", "instructions.md", "instructions-3.md", "before-after.md", "digest-reads.md", "anti-entropy.md", "transfer.md", "overload.md", "simulation.md"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, method="GET", body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read()
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def du_mib(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total / (1024 * 1024)


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, env=None):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "RUST_LOG": "warn", **(env or {})})
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def start_dynakv(procs, n, root, binary=DYNAKV, extra=()):
    ports = [free_port() for _ in range(n)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    pids = []
    for i, port in enumerate(ports):
        args = [binary, "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(root, f"n{i + 1}"),
                "--node-id", f"n{i + 1}", *extra]
        if i > 0:
            args += ["--seeds", urls[0]]
        pids.append(procs.start(args).pid)
    for u in urls:
        wait_http(u + "/health")
    if n > 1:
        deadline = time.time() + 30
        while time.time() < deadline:
            body = json.loads(wait_http(urls[-1] + "/cluster/members"))
            if sum(m["status"] == "alive" for m in body["members"]) == n:
                break
            time.sleep(0.1)
    return urls, pids


def bench(urls, workload, keys, conc, dur, warm, level=None, rate=None, extra=()):
    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    args = [BENCH, "run", "--urls", ",".join(urls), "--workload", workload, "--keys", str(keys),
            "--concurrency", str(conc), "--duration", dur, "--warmup", warm, "--json", out, *extra]
    if level:
        args += ["--r", level, "--w", level]
    if rate:
        args += ["--rate", str(rate)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        report = json.load(f)
    os.unlink(out)
    return report


def preload(urls, keys, conc=32, value_size=1024, level=None):
    args = [BENCH, "run", "--urls", ",".join(urls), "--keys", str(keys), "--concurrency", str(conc),
            "--value-size", str(value_size), "--preload-only"]
    if level:
        args += ["--w", level]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def med(vals):
    return statistics.median(vals), min(vals), max(vals)


def cell(vals, fmt="{:.0f}"):
    m, lo, hi = med(vals)
    return f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"


def write_section(name, text):
    """Writes bench/results/<name> and reassembles bench/RESULTS.md."""
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
        f.write(text.rstrip() + "\n")
    assemble()


def assemble():
    parts = sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.md")),
                   key=lambda p: (ORDER.index(os.path.basename(p)) if os.path.basename(p) in ORDER else len(ORDER),
                                  os.path.basename(p)))
    chunks = ["# dynakv benchmark results\n",
              "Each section below is written by the script it names, measured on this machine; figures are "
              "comparable only within one section (one run): compare ratios, not absolutes.\n"]
    for p in parts:
        with open(p) as f:
            chunks.append(f.read().rstrip() + "\n")
    notes = os.path.join(ROOT, "bench", "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            chunks.append(f.read().rstrip() + "\n")
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "w") as f:
        f.write("\n".join(chunks))
