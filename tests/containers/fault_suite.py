#!/usr/bin/env python3
"""Fault suite: a dynakv cluster in real containers under real faults.

Starts docker-compose.yml (+ docker-compose.node4.yml, + compose.ci.yml next to
this file: fast timers and a partitionable network) under a unique project
name, drives it from the host over HTTP and injects faults with the docker CLI:

  smoke      PUT/GET/DELETE through every node; /cluster/members on every node
             lists three alive members; readiness and the image's HEALTHCHECK.
  kill       `docker kill` (SIGKILL) a node under a w=quorum write load, then
             `docker start` it again.
  pause      `docker pause` a node under a w=quorum write load, then unpause.
  partition  `docker network disconnect` a node from the cluster network: both
             sides accept w=1 writes to the same key (the lone side refuses
             w=quorum); after healing, an r=all read returns both versions as
             siblings and a write with that read's context resolves them.
  wipe       stop a node, delete its volume, start it again with the same node
             id: once ready it holds every key it replicates, and new writes
             through it are not mistaken for old ones.
  scale      add node4 (docker-compose.node4.yml): every key stays readable
             through it; then make it leave (401 without the cluster secret;
             then the Kubernetes preStop command, dynakv-leave --only-if, first
             unmarked: nothing happens, then marked: POST /cluster/leave): it
             exits 0, stays stopped, and every key stays readable.

Every write acknowledged with a 2xx must be readable afterwards with its value
(read with r=all through every node); the suite counts writes attempted,
acknowledged, refused (503), failed (connection error or timeout) and lost,
prints them per case, and exits 1 if a case fails or anything is lost.

Standard library only. Usage:

  tests/containers/fault_suite.py [--image dynakv:latest] [--cases kill,pause]
                                  [--project NAME] [--keep]

The image must exist (docker/build-images.sh); it is never built or pulled.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CASES = ["smoke", "kill", "pause", "partition", "wipe", "scale"]
NODES = ["node1", "node2", "node3"]

# Deadlines (seconds). The suite polls for conditions; these only bound waits.
CLUSTER_DEADLINE = 60  # all members alive / ready after a start or a heal
DETECT_DEADLINE = 20  # the others notice a node is gone (suspect 1.5 s, dead 4 s)
VERIFY_DEADLINE = 30  # every acknowledged write readable through every node
REFILL_DEADLINE = 30  # a wiped node holds its keys, counted from its readiness
CLIENT_TIMEOUT = 3.0  # one client request


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def poll(what, deadline_s, fn, interval=0.2):
    """Calls fn until it returns a truthy value; raises after deadline_s."""
    end = time.monotonic() + deadline_s
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last = exc
        if time.monotonic() > end:
            raise CheckFailed(f"timed out after {deadline_s}s waiting for {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP


class Client:
    """Keep-alive HTTP connections to the nodes, one per thread and port."""

    def __init__(self, timeout=CLIENT_TIMEOUT):
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self, port):
        conns = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        if port not in conns:
            conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        return conns[port]

    def _drop(self, port):
        conn = self.local.conns.pop(port, None)
        if conn is not None:
            conn.close()

    def request(self, port, method, path, body=None, headers=None, timeout=None):
        """Returns (status, headers dict with lower-case names, body bytes).
        Raises OSError / HTTPException on connection errors and timeouts."""
        conn = self._conn(port)
        if timeout is not None:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if hdrs.get("connection", "").lower() == "close":
                self._drop(port)
            return resp.status, hdrs, data
        except BaseException:
            self._drop(port)
            raise
        finally:
            if timeout is not None and port in self.local.conns:
                self.local.conns[port].timeout = self.timeout

    def json(self, port, method, path, **kw):
        status, hdrs, data = self.request(port, method, path, **kw)
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return status, hdrs, doc


def kv(key, **query):
    path = "/kv/" + urllib.parse.quote(key, safe="")
    if query:
        path += "?" + urllib.parse.urlencode(query)
    return path


def sibling_values(doc):
    return sorted(s.get("value") for s in doc.get("siblings", []) if not s.get("deleted"))


# --------------------------------------------------------------------------
# docker and compose


def run(cmd, check_rc=True, env=None, timeout=180):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)
    if check_rc and proc.returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout.strip()}")
    return proc.stdout.strip()


def compose_command():
    override = os.environ.get("DYNAKV_COMPOSE")
    if override:
        return override.split()
    if subprocess.run(["docker", "compose", "version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    sys.exit("neither `docker compose` nor `docker-compose` is available")


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, args):
        self.project = args.project
        self.image = args.image
        self.secret = args.secret
        self.compose = compose_command() + [
            "-p", self.project,
            "-f", os.path.join(REPO, "docker-compose.yml"),
            "-f", os.path.join(REPO, "docker-compose.node4.yml"),
            "-f", os.path.join(HERE, "compose.ci.yml"),
        ]
        ports = free_ports(4)
        self.port = {f"node{i + 1}": p for i, p in enumerate(ports)}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and not k.startswith("DYNAKV_")}
        self.env.update({
            "DYNAKV_IMAGE": self.image,
            "DYNAKV_CLUSTER_SECRET": self.secret,
            "DYNAKV_BIND_ADDRESS": "127.0.0.1",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
        })
        for name, port in self.port.items():
            self.env[f"DYNAKV_{name.upper()}_PORT"] = str(port)
        self.http = Client()
        self.members_of = set(NODES)  # nodes expected alive
        self.readiness_route = None  # True / False once known

    # compose / docker
    def dc(self, *args, check_rc=True, timeout=180):
        return run(self.compose + list(args), check_rc=check_rc, env=self.env, timeout=timeout)

    def cid(self, service, required=True):
        out = run(["docker", "ps", "-aq",
                   "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}"])
        ids = out.split()
        if required:
            check(len(ids) == 1, f"expected one container for {service}, found {ids}")
        return ids[0] if ids else None

    def inspect(self, service):
        return json.loads(run(["docker", "inspect", self.cid(service)]))[0]

    def cluster_network(self, service):
        nets = [n for n in self.inspect(service)["NetworkSettings"]["Networks"] if n.endswith("_cluster")]
        if nets:
            return nets[0]
        return f"{self.project}_cluster"

    def up(self, *services):
        self.dc("up", "-d", "--no-build", "--no-deps", *services)

    def down(self):
        self.dc("down", "-v", "--remove-orphans", "-t", "30", check_rc=False, timeout=300)

    def logs(self, service, lines=40):
        cid = self.cid(service, required=False)
        if not cid:
            return "(no container)"
        return run(["docker", "logs", "--tail", str(lines), cid], check_rc=False)

    # HTTP views
    def members(self, node):
        status, _, doc = self.http.json(self.port[node], "GET", "/cluster/members")
        if status != 200:
            return None
        return {m["id"]: m["status"] for m in doc["members"]}

    def ready(self, node):
        """True when the node reports ready. Binaries without /health/ready
        (404 route_not_found) fall back to /health, and the smoke case fails."""
        status, _, doc = self.http.json(self.port[node], "GET", "/health/ready")
        if status == 404 and (doc or {}).get("code") == "route_not_found":
            if self.readiness_route is None:
                log("WARNING: this binary has no /health/ready; waiting on /health and /cluster/members instead")
            self.readiness_route = False
            status, _, doc = self.http.json(self.port[node], "GET", "/health")
            return status == 200
        if status in (200, 503):
            self.readiness_route = True
        return status == 200 and (doc or {}).get("status") == "ready"

    def converged(self, nodes=None):
        """Every node in `nodes` is ready and lists every expected member alive."""
        nodes = nodes or sorted(self.members_of)
        for node in nodes:
            if not self.ready(node):
                return False
            view = self.members(node)
            if view is None or any(view.get(m) != "alive" for m in self.members_of):
                return False
        return True

    def wait_converged(self, what="the cluster to converge", deadline=CLUSTER_DEADLINE):
        t0 = time.monotonic()
        poll(what, deadline, self.converged)
        if self.readiness_route:
            # The image's HEALTHCHECK (dynakv-healthcheck /health/ready) agrees.
            def healthy():
                return all(self.inspect(n)["State"].get("Health", {}).get("Status") == "healthy" for n in sorted(self.members_of))
            poll("docker to report every container healthy", deadline, healthy, interval=0.5)
        return time.monotonic() - t0

    def seen_down(self, target, by, statuses=("suspect", "dead")):
        """Every node in `by` sees `target` with one of `statuses`."""
        for node in by:
            view = self.members(node)
            if view is None or view.get(target) not in statuses:
                return False
        return True

    def heal(self):
        """Undoes whatever a failed case left behind."""
        for node in sorted(self.members_of):
            cid = self.cid(node, required=False)
            if not cid:
                self.up(node)
                continue
            state = self.inspect(node)["State"]
            if state.get("Paused"):
                run(["docker", "unpause", cid], check_rc=False)
            elif not state.get("Running"):
                run(["docker", "start", cid], check_rc=False)
            net = self.cluster_network(node)
            if net not in self.inspect(node)["NetworkSettings"]["Networks"]:
                run(["docker", "network", "connect", "--alias", node, net, cid], check_rc=False)


# --------------------------------------------------------------------------
# load and verification


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempted = 0
        self.acked = 0
        self.refused = 0  # 503
        self.failed = 0  # connection error / timeout
        self.other = 0  # any other status
        self.lost = 0
        self.acked_values = {}  # key -> value
        self.acked_log = []  # (phase, port, key) in ack order
        self.phase_acks = {}
        self.phase = "start"

    def add(self, other):
        for f in ("attempted", "acked", "refused", "failed", "other", "lost"):
            setattr(self, f, getattr(self, f) + getattr(other, f))

    def row(self):
        return f"attempted {self.attempted:6d}  acked {self.acked:6d}  refused(503) {self.refused:5d}  failed {self.failed:5d}  other {self.other:3d}  lost {self.lost:3d}"


class Load:
    """Writers PUTting one fresh key per write with w=quorum, round-robin over
    the nodes' ports. Counts by outcome and by phase."""

    def __init__(self, cluster, prefix, nodes, workers=6, rate=300):
        self.cluster = cluster
        # Writes per second over all workers: enough to keep every phase busy,
        # few enough that reading them all back through three nodes is quick.
        self.interval = workers / rate
        self.prefix = prefix
        self.ports = [cluster.port[n] for n in nodes]
        self.workers = workers
        self.counts = Counts()
        self.stop_flag = threading.Event()
        self.threads = []
        self.http = Client()

    def set_phase(self, phase):
        with self.counts.lock:
            self.counts.phase = phase

    def _worker(self, w):
        seq = 0
        # Like a client with a list of nodes: after a failure or timeout on a
        # node, use the others for a second.
        avoid_until = {}
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if next_at > now:
                time.sleep(next_at - now)
                now = time.monotonic()
            next_at = max(next_at + self.interval, now - 1.0)
            candidates = [p for p in self.ports if avoid_until.get(p, 0) <= now] or self.ports
            port = candidates[(w + seq) % len(candidates)]
            key = f"{self.prefix}-{w}-{seq}"
            value = f"{key}:{secrets.token_hex(6)}"
            seq += 1
            with self.counts.lock:
                self.counts.attempted += 1
            try:
                status, _, _ = self.http.request(port, "PUT", kv(key, w="quorum"), body=value.encode(),
                                                 headers={"Content-Type": "text/plain"})
            except (OSError, http.client.HTTPException):
                with self.counts.lock:
                    self.counts.failed += 1
                avoid_until[port] = time.monotonic() + 1.0
                continue
            with self.counts.lock:
                if 200 <= status < 300:
                    self.counts.acked += 1
                    self.counts.acked_values[key] = value
                    self.counts.acked_log.append((self.counts.phase, port, key))
                    ph = self.counts.phase
                    self.counts.phase_acks[ph] = self.counts.phase_acks.get(ph, 0) + 1
                elif status == 503:
                    self.counts.refused += 1
                else:
                    self.counts.other += 1
            if status >= 300:
                time.sleep(0.02)

    def start(self):
        for w in range(self.workers):
            t = threading.Thread(target=self._worker, args=(w,), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=CLIENT_TIMEOUT * 3)


def verify(cluster, acked, nodes, deadline=VERIFY_DEADLINE, rotate=False):
    """Reads every key in `acked` (key -> value) with r=all and Accept: JSON
    through every node in `nodes` (with rotate, through one of them in turn)
    until its value is among the live versions. Returns {key: reason} for keys
    still missing at the deadline."""
    end = time.monotonic() + deadline
    http_client = Client(timeout=5)

    def one(arg):
        i, (key, value) = arg
        for node in ([nodes[i % len(nodes)]] if rotate else nodes):
            reason = None
            while True:
                try:
                    status, _, doc = http_client.json(cluster.port[node], "GET", kv(key, r="all"),
                                                      headers={"Accept": "application/json"})
                    if status in (200, 300) and value in sibling_values(doc or {}):
                        break
                    reason = f"{node}: HTTP {status} {json.dumps(doc)[:200]}"
                except (OSError, http.client.HTTPException) as exc:
                    reason = f"{node}: {exc!r}"
                if time.monotonic() > end:
                    return key, reason
                time.sleep(0.25)
        return key, None

    missing = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        for key, reason in pool.map(one, enumerate(acked.items())):
            if reason:
                missing[key] = reason
    return missing


def put_all(cluster, node, items, w="all"):
    """PUTs key -> value through `node`; returns Counts (acked_values filled)."""
    counts = Counts()
    for key, value in items.items():
        counts.attempted += 1
        try:
            status, _, _ = cluster.http.request(cluster.port[node], "PUT", kv(key, w=w), body=value.encode(),
                                                headers={"Content-Type": "text/plain"})
        except (OSError, http.client.HTTPException):
            counts.failed += 1
            continue
        if 200 <= status < 300:
            counts.acked += 1
            counts.acked_values[key] = value
        elif status == 503:
            counts.refused += 1
        else:
            counts.other += 1
    return counts


def finish_counts(cluster, counts, nodes):
    log(f"verifying {len(counts.acked_values)} acknowledged writes with r=all through {', '.join(nodes)}")
    missing = verify(cluster, counts.acked_values, nodes)
    counts.lost = len(missing)
    for key, reason in list(missing.items())[:10]:
        log(f"  LOST {key}: {reason}")
    return missing


# --------------------------------------------------------------------------
# cases


class Suite:
    def __init__(self, cluster):
        self.c = cluster
        self.all_acked = {}  # acknowledged writes of every case not already lost, re-checked later

    def case_smoke(self, counts):
        c = self.c
        for i, node in enumerate(NODES):
            key = f"smoke-{node}"
            value = f"hello from {node}"
            counts.attempted += 1
            status, hdrs, _ = c.http.request(c.port[node], "PUT", kv(key), body=value.encode(),
                                             headers={"Content-Type": "text/plain"})
            check(status == 204 or 200 <= status < 300, f"PUT through {node}: HTTP {status}")
            check("x-context" in hdrs, f"PUT through {node} returned no X-Context")
            counts.acked += 1
            counts.acked_values[key] = value
            for other in NODES:
                status, hdrs, body = c.http.request(c.port[other], "GET", kv(key))
                check(status == 200 and body.decode() == value, f"GET {key} through {other}: HTTP {status} {body[:200]!r}")
                check(hdrs.get("content-type") == "text/plain", f"GET {key} through {other}: content-type {hdrs.get('content-type')}")
        # DELETE through one node, 404 through the others.
        status, _, _ = c.http.request(c.port["node3"], "DELETE", kv("smoke-node1"))
        check(status == 204, f"DELETE through node3: HTTP {status}")
        counts.acked_values.pop("smoke-node1")
        for node in NODES:
            status, hdrs, doc = c.http.json(c.port[node], "GET", kv("smoke-node1", r="all"))
            check(status == 404 and doc.get("code") == "not_found", f"GET after DELETE through {node}: HTTP {status} {doc}")
            check("x-context" in hdrs, f"404 after DELETE through {node} has no X-Context")
        # /cluster/members on every node: three alive members.
        for node in NODES:
            view = c.members(node)
            check(view == {n: "alive" for n in NODES}, f"/cluster/members on {node}: {view}")
        # Readiness, and the image's HEALTHCHECK on it.
        check(c.readiness_route, "GET /health/ready is missing (404): readiness and the HEALTHCHECK cannot work")
        for node in NODES:
            status, _, doc = c.http.json(c.port[node], "GET", "/health/ready")
            check(status == 200 and doc.get("status") == "ready", f"/health/ready on {node}: {status} {doc}")
            health = c.inspect(node)["State"].get("Health", {}).get("Status")
            check(health == "healthy", f"docker health of {node}: {health}")

    def _fault_under_load(self, counts, victim, inject, restore, name):
        c = self.c
        others = [n for n in NODES if n != victim]
        load = Load(c, f"{name}-{secrets.token_hex(3)}", NODES)
        load.start()
        try:
            poll("the first acknowledged writes", 10, lambda: load.counts.acked >= 200)
            load.set_phase("fault")
            log(f"{name}: injecting the fault into {victim} after {load.counts.acked} acks")
            inject(c.cid(victim))
            t0 = time.monotonic()
            # Down long enough to be declared dead: off the ring, its writes go
            # to stand-ins with hints, and it rejoins when it is back.
            poll(f"{', '.join(others)} to see {victim} dead", DETECT_DEADLINE, lambda: c.seen_down(victim, others, ("dead",)))
            log(f"{name}: {victim} seen dead after {time.monotonic() - t0:.1f}s")
            # Keep writing while the node is dead.
            mark = load.counts.phase_acks.get("fault", 0)
            poll("writes acknowledged while the node is down", DETECT_DEADLINE,
                 lambda: load.counts.phase_acks.get("fault", 0) >= mark + 50)
            restore(c.cid(victim))
            load.set_phase("recovery")
            took = c.wait_converged(f"{victim} to be back and the cluster to converge")
            log(f"{name}: {victim} back and converged after {took:.1f}s")
            mark = load.counts.phase_acks.get("recovery", 0)
            poll("writes acknowledged after the recovery", DETECT_DEADLINE,
                 lambda: load.counts.phase_acks.get("recovery", 0) >= mark + 50)
        finally:
            load.stop()
            counts.add(load.counts)
            counts.acked_values = dict(load.counts.acked_values)
            log(f"{name}: acks by phase {load.counts.phase_acks}")
        # The last writes the victim coordinated before the fault (for a kill,
        # possibly not yet flushed there), overwritten through it now: a node
        # must never reuse a dot it issued before, or the new value would look
        # like the old one and be dropped.
        victim_port = c.port[victim]
        recent = [k for ph, p, k in load.counts.acked_log if ph == "start" and p == victim_port][-100:]
        again = put_all(c, victim, {k: f"{k}:overwritten-after-{name}" for k in recent}, w="quorum")
        counts.add(again)
        counts.acked_values.update(again.acked_values)
        log(f"{name}: overwrote {again.acked}/{len(recent)} keys through {victim} that it had coordinated before the fault")
        check(load.counts.phase_acks.get("fault", 0) > 0, "no w=quorum write was acknowledged while one node of three was down")

    def case_kill(self, counts):
        def inject(cid):
            run(["docker", "kill", cid])

        def restore(cid):
            state = json.loads(run(["docker", "inspect", cid]))[0]["State"]
            check(not state["Running"], "the killed container is running again before we restarted it")
            run(["docker", "start", cid])
        self._fault_under_load(counts, "node2", inject, restore, "kill")

    def case_pause(self, counts):
        self._fault_under_load(counts, "node3", lambda cid: run(["docker", "pause", cid]),
                               lambda cid: run(["docker", "unpause", cid]), "pause")

    def case_partition(self, counts):
        c = self.c
        key = f"partition-{secrets.token_hex(3)}"
        base = f"{key}:before"
        status, _, _ = c.http.request(c.port["node1"], "PUT", kv(key, w="all"), body=base.encode())
        check(200 <= status < 300, f"initial w=all PUT: HTTP {status}")
        cid = c.cid("node3")
        net = c.cluster_network("node3")
        log(f"partition: disconnecting node3 from {net}")
        run(["docker", "network", "disconnect", net, cid])
        try:
            poll("both sides to see the other as unreachable", DETECT_DEADLINE,
                 lambda: c.seen_down("node3", ["node1", "node2"]) and c.seen_down("node1", ["node3"]) and c.seen_down("node2", ["node3"]))
            # The lone node refuses w=quorum (dead members still count)...
            lone = f"{key}-quorum"
            counts.attempted += 1
            status, _, doc = c.http.json(c.port["node3"], "PUT", kv(lone, w="quorum"), body=b"lone")
            if 200 <= status < 300:
                counts.acked += 1
                counts.acked_values[lone] = "lone"
            elif status == 503:
                counts.refused += 1
            check(status == 503 and doc.get("code") == "quorum_not_met",
                  f"w=quorum through the node cut off alone: HTTP {status} {doc} (expected 503 quorum_not_met)")
            # ...and both sides accept w=1 writes to the same key.
            sides = {"node1": f"{key}:majority-side", "node3": f"{key}:minority-side"}
            for node, value in sides.items():
                counts.attempted += 1
                status, _, doc = c.http.json(c.port[node], "PUT", kv(key, w="1"), body=value.encode(),
                                             headers={"Content-Type": "text/plain"})
                check(200 <= status < 300, f"w=1 PUT through {node} during the partition: HTTP {status} {doc}")
                counts.acked += 1
        finally:
            log("partition: healing")
            run(["docker", "network", "connect", "--alias", "node3", net, cid])
        took = c.wait_converged("the partition to heal")
        log(f"partition: healed and converged after {took:.1f}s")
        want = sorted(sides.values())

        def siblings_everywhere():
            doc = None
            for node in NODES:
                status, _, doc = c.http.json(c.port[node], "GET", kv(key, r="all"), headers={"Accept": "application/json"})
                if status not in (200, 300) or sibling_values(doc or {}) != want:
                    return None
            return doc
        try:
            doc = poll("an r=all read through every node to return both versions as siblings", VERIFY_DEADLINE, siblings_everywhere)
        except CheckFailed:
            status, _, doc = c.http.json(c.port["node1"], "GET", kv(key, r="all"), headers={"Accept": "application/json"})
            got = sibling_values(doc or {})
            counts.lost += len([v for v in want if v not in got])
            raise CheckFailed(f"after healing, r=all through node1: HTTP {status} values {got}, expected {want}")
        status, _, _ = c.http.request(c.port["node1"], "GET", kv(key, r="all"))
        check(status == 300, f"plain GET of the key with siblings: HTTP {status}, expected 300")
        log(f"partition: siblings after healing: {sibling_values(doc)}")
        # Resolve with the context of that read.
        resolved = f"{key}:resolved"
        counts.attempted += 1
        status, _, _ = c.http.request(c.port["node2"], "PUT", kv(key, w="all"), body=resolved.encode(),
                                      headers={"X-Context": doc["context"], "Content-Type": "text/plain"})
        check(200 <= status < 300, f"resolving PUT with the read's context: HTTP {status}")
        counts.acked += 1
        counts.acked_values[key] = resolved

        def resolved_everywhere():
            for node in NODES:
                status, _, body = c.http.request(c.port[node], "GET", kv(key, r="all"))
                if status != 200 or body.decode() != resolved:
                    return False
            return True
        poll("the resolved value (one version) through every node", VERIFY_DEADLINE, resolved_everywhere)

    def case_wipe(self, counts):
        c = self.c
        prefix = f"wipe-{secrets.token_hex(3)}"
        victim = "node3"
        # Written through the victim, so it issued the dots of these versions.
        items = {f"{prefix}-{i}": f"{prefix}-{i}:v1" for i in range(200)}
        pre = put_all(c, victim, items, w="all")
        check(pre.acked == len(items), f"preloading with w=all: {pre.row()}")
        counts.add(pre)
        acked = dict(pre.acked_values)
        mount = [m for m in c.inspect(victim)["Mounts"] if m["Destination"] == "/data"]
        check(len(mount) == 1 and mount[0].get("Name"), f"no named volume on /data of {victim}: {mount}")
        volume = mount[0]["Name"]
        log(f"wipe: stopping {victim}, removing its container and volume {volume}")
        c.dc("rm", "-s", "-f", victim)
        run(["docker", "volume", "rm", volume])
        c.up(victim)
        t0 = time.monotonic()
        poll(f"{victim} to report ready", CLUSTER_DEADLINE, lambda: c.ready(victim))
        c.wait_converged(f"{victim} to rejoin")
        log(f"wipe: {victim} ready after {time.monotonic() - t0:.1f}s")

        # Once ready, the node must hold every key it replicates.
        def holes():
            missing = []
            for key in items:
                status, _, doc = c.http.json(c.port[victim], "GET", f"/cluster/replicas/{urllib.parse.quote(key)}")
                if status != 200:
                    missing.append(f"{key}: HTTP {status}")
                    continue
                if victim not in doc["preference_list"]:
                    continue
                mine = [r for r in doc["replicas"] if r["node"] == victim]
                if not mine or not mine[0].get("versions"):
                    missing.append(key)
            return missing
        t1 = time.monotonic()
        left = holes()
        if left:
            log(f"wipe: {len(left)} keys not yet on {victim} when it reported ready; polling")
            end = time.monotonic() + REFILL_DEADLINE
            while left and time.monotonic() < end:
                time.sleep(0.5)
                left = holes()
        log(f"wipe: {victim} {'holds every key it replicates' if not left else f'still misses {len(left)} keys'} "
            f"({time.monotonic() - t1:.1f}s after readiness)")
        # A lost data dir is not amnesia: new writes through the wiped node
        # (plain PUTs, no context) supersede the old versions. Had the node
        # reused a dot it issued before the wipe, a new version would look
        # like an old one and vanish (counted as lost); had it not been
        # refilled, the new version would only be a sibling of the old one.
        newer = {k: f"{k}:v2-through-{victim}" for k in list(items)[:50]}
        post = put_all(c, victim, newer, w="all")
        counts.add(post)
        acked.update(post.acked_values)
        counts.acked_values = acked
        superseded, vanished = [], []
        for key, value in post.acked_values.items():
            status, _, doc = c.http.json(c.port["node1"], "GET", kv(key, r="all"), headers={"Accept": "application/json"})
            values = sibling_values(doc or {})
            if value not in values:
                vanished.append(f"{key}: HTTP {status} {values}")
            elif values != [value]:
                superseded.append(f"{key}: {len(values)} versions")
        problems = []
        if post.acked != len(newer):
            problems.append(f"w=all writes through the wiped node: {post.row()}")
        if left:
            problems.append(f"{victim} came back ready without {len(left)} of its keys (first: {left[:3]}): "
                            "anti-entropy/transfer did not refill it")
        if vanished:
            problems.append(f"{len(vanished)} of {len(post.acked_values)} acknowledged writes through the wiped node "
                            f"vanished (a reused dot?) (first: {vanished[:2]})")
        if superseded:
            problems.append(f"{len(superseded)} of {len(post.acked_values)} writes through the wiped node left the old "
                            f"value as a sibling (it did not hold it) (first: {superseded[:2]})")
        check(not problems, "; ".join(problems))

    def case_scale(self, counts):
        c = self.c
        log("scale: starting node4 from docker-compose.node4.yml")
        c.up("node4")
        c.members_of.add("node4")
        took = c.wait_converged("node4 to join (four alive members everywhere, all ready)")
        log(f"scale: four nodes converged after {took:.1f}s")
        # Every write acknowledged so far stays readable through the new node
        # (and, in the final check, through the others after it left).
        missing = verify(c, self.all_acked, ["node4"])
        check(not missing, f"{len(missing)} acknowledged writes unreadable through node4 after it joined "
                           f"(first: {list(missing.items())[:2]})")
        more = put_all(c, "node4", {f"scale-{i}": f"scale-{i}:{secrets.token_hex(4)}" for i in range(50)}, w="quorum")
        counts.add(more)
        counts.acked_values.update(more.acked_values)
        check(more.acked == 50, f"writes through node4: {more.row()}")
        # Leave: refused without the cluster secret...
        status, _, doc = c.http.json(c.port["node4"], "POST", "/cluster/leave")
        unauthorized_ok = status == 401
        if not unauthorized_ok:
            log(f"scale: POST /cluster/leave without the secret answered {status} {doc}")
        # ...then with the secret from inside the container, the way the
        # Kubernetes preStop hook does it: a no-op on an unmarked pod, a leave
        # once /data/leave-requested exists (compose users run dynakv-leave).
        cid = c.cid("node4")
        pre_stop = ["docker", "exec", cid, "dynakv-leave", "--only-if", "/data/leave-requested", "--wait", "60"]
        if status != 202:
            out = run(pre_stop, timeout=90)
            check(out == "", f"the preStop command on an unmarked node printed {out!r}")
            check((c.members("node1") or {}).get("node4") == "alive", "the preStop command left without the mark")
            run(["docker", "exec", cid, "touch", "/data/leave-requested"])
            out = run(pre_stop, check_rc=False, timeout=90)
            log(f"scale: preStop with the mark: {out}")
        c.members_of.discard("node4")

        def left_everywhere():
            return all((c.members(n) or {}).get("node4") == "left" for n in NODES)
        poll("node1..node3 to list node4 as left", CLUSTER_DEADLINE, left_everywhere)

        def exited():
            state = json.loads(run(["docker", "inspect", cid]))[0]["State"]
            return state["Status"] == "exited" and state
        state = poll("node4 to exit", CLUSTER_DEADLINE, exited)
        check(state["ExitCode"] == 0, f"node4 exited {state['ExitCode']} after leaving, expected 0")
        c.wait_converged("node1..node3 after node4 left")
        check(unauthorized_ok, f"POST /cluster/leave without the cluster secret: HTTP {status} {doc}, expected 401")


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=os.environ.get("DYNAKV_IMAGE", "dynakv:latest"))
    ap.add_argument("--project", default=f"dynakv-ci-{secrets.token_hex(4)}")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--secret", default=secrets.token_hex(16), help="the cluster secret (default: random)")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = ap.parse_args()
    cases = [x.strip() for x in args.cases.split(",") if x.strip()]
    unknown = [x for x in cases if x not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}")
    run(["docker", "image", "inspect", args.image])
    # A SIGTERM (CI timeout) still tears the project down (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cluster = Cluster(args)
    suite = Suite(cluster)
    results = []
    t_start = time.monotonic()
    log(f"project {cluster.project}, image {args.image}, compose `{' '.join(cluster.compose[:2])}`, "
        f"host ports {cluster.port}")
    try:
        cluster.up(*NODES)
        took = cluster.wait_converged("three nodes to start and converge")
        log(f"three nodes up and converged in {took:.1f}s "
            f"({'/health/ready' if cluster.readiness_route else '/health: no /health/ready in this binary'})")
        for name in cases:
            counts = Counts()
            t0 = time.monotonic()
            log(f"--- case {name}")
            error = None
            try:
                getattr(suite, f"case_{name}")(counts)
            except CheckFailed as exc:
                error = str(exc)
            except Exception as exc:  # a bug in the suite or the docker CLI: still clean up and report
                error = f"{type(exc).__name__}: {exc}"
            # Every write the case acknowledged must be readable; a failed case
            # still counts its losses. Lost keys are counted once, here.
            missing = {}
            if counts.acked_values:
                try:
                    if "node4" in cluster.members_of:
                        nodes = sorted(cluster.members_of)
                    else:
                        nodes = NODES
                    cluster.heal()
                    cluster.wait_converged("the cluster before verifying")
                    missing = finish_counts(cluster, counts, nodes)
                    if missing and not error:
                        error = f"{len(missing)} acknowledged writes lost"
                except CheckFailed as exc:
                    error = error or str(exc)
                suite.all_acked.update({k: v for k, v in counts.acked_values.items() if k not in missing})
            if error:
                log(f"case {name} FAILED: {error}")
                for node in sorted(cluster.members_of):
                    log(f"last log lines of {node}:\n{cluster.logs(node, 15)}")
                try:
                    cluster.heal()
                    cluster.wait_converged("the cluster to recover after a failed case")
                except CheckFailed as exc:
                    log(f"could not bring the cluster back: {exc}")
            results.append((name, error, counts, time.monotonic() - t0))
        # Final: nothing acknowledged in any case is lost, and no container
        # crashed or restarted by itself.
        final = Counts()
        final_error = None
        try:
            cluster.heal()
            cluster.wait_converged("the cluster before the final check")
            log(f"final: re-reading {len(suite.all_acked)} acknowledged writes (all but those already counted lost) "
                "with r=all, through node1..node3 in turn")
            missing = verify(cluster, suite.all_acked, NODES, rotate=True)
            final.lost = len(missing)
            if missing:
                final_error = f"{len(missing)} acknowledged writes lost by the end: {list(missing.items())[:3]}"
            for node in NODES + ["node4"]:
                cid = cluster.cid(node, required=False)
                if not cid:
                    continue
                info = json.loads(run(["docker", "inspect", cid]))[0]
                if info["RestartCount"]:
                    final_error = final_error or f"{node} was restarted {info['RestartCount']} times by its restart policy (a crash)"
                logs = run(["docker", "logs", cid], check_rc=False)
                if "panicked at" in logs:
                    final_error = final_error or f"{node} logged a panic"
        except CheckFailed as exc:
            final_error = str(exc)
        results.append(("final", final_error, final, 0.0))
    finally:
        if args.keep:
            log(f"--keep: project {cluster.project} left running, ports {cluster.port}")
        else:
            log(f"removing project {cluster.project}")
            cluster.down()

    total = Counts()
    print()
    print(f"fault suite: {len(results) - 1} cases in {time.monotonic() - t_start:.0f}s, image {args.image}")
    for name, error, counts, secs in results:
        total.add(counts)
        print(f"  {'PASS' if not error else 'FAIL'}  {name:<9} {secs:5.1f}s  {counts.row()}")
    print(f"  total               {total.row()}")
    failed = [(n, e) for n, e, _, _ in results if e]
    for name, error in failed:
        print(f"  {name}: {error}")
    return 1 if failed or total.lost else 0


if __name__ == "__main__":
    sys.exit(main())
