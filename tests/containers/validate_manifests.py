#!/usr/bin/env python3
"""Validates deploy/kubernetes/*.yaml offline.

1. Schema: every document against the OpenAPI schemas bundled in the
   `kubernetes-validate` package (pip install kubernetes-validate), in strict
   mode (unknown fields are errors), for several Kubernetes versions. A kind
   without a schema is an error here (the package's CLI only warns).
2. Structure: what the deployment relies on and a schema cannot say (headless
   Service publishing not-ready addresses, probes on the right paths, PDB of
   one, non-root / read-only / no capabilities, the secret from a Secret, ...).

No network: every socket connection is refused before the validator is
imported, so a schema that tried to fetch anything would fail here. No cluster
is needed or contacted.

Usage: tests/containers/validate_manifests.py [DIR]   (default deploy/kubernetes)
"""

import glob
import os
import socket
import sys


def _no_network(*_args, **_kwargs):
    raise OSError("validate_manifests.py runs offline: network access attempted")


socket.socket.connect = _no_network
socket.socket.connect_ex = _no_network
socket.create_connection = _no_network
socket.getaddrinfo = _no_network

import yaml  # noqa: E402  (kubernetes-validate depends on PyYAML)
import kubernetes_validate  # noqa: E402
from kubernetes_validate import utils as kv_utils  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
# Oldest and newest Kubernetes this deployment claims, and one in between.
VERSIONS = ["1.27.0", "1.31.0", "1.37.0"]

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def expect(cond, msg):
    if cond:
        print(f"ok   {msg}")
    else:
        fail(msg)


def load(directory):
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    docs.append((os.path.relpath(path, REPO), doc))
    return docs


def schema_check(docs):
    available = kv_utils.all_versions()
    versions = [v for v in VERSIONS if v in available]
    if len(versions) != len(VERSIONS):
        fail(f"kubernetes-validate {kubernetes_validate.__version__} lacks schemas for some of {VERSIONS} (has {sorted(set(available))})")
    for version in versions:
        for path, doc in docs:
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} against Kubernetes {version} (strict)"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                print(f"ok   {name}")
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                fail(f"{name}: {where}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                fail(f"{name}: {e.message}")


def by_kind(docs, kind):
    return [d for _, d in docs if d.get("kind") == kind]


def structure_check(docs):
    sts_list = by_kind(docs, "StatefulSet")
    expect(len(sts_list) == 1, "one StatefulSet")
    if not sts_list:
        return
    sts = sts_list[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["selector"]["matchLabels"]
    container = next(c for c in pod["containers"] if c["name"] == "dynakv")
    env = {e["name"]: e for e in container.get("env", [])}

    services = by_kind(docs, "Service")
    headless = [s for s in services if s["metadata"]["name"] == spec["serviceName"]]
    expect(len(headless) == 1, f"the StatefulSet's serviceName {spec['serviceName']!r} is a Service here")
    if headless:
        h = headless[0]["spec"]
        expect(h.get("clusterIP") == "None", "that Service is headless (clusterIP: None)")
        expect(h.get("publishNotReadyAddresses") is True, "the headless Service publishes not-ready addresses")
        expect(h.get("selector", {}).items() <= spec["template"]["metadata"]["labels"].items(),
               "the headless Service selects the StatefulSet's pods")
    clients = [s for s in services if s["metadata"]["name"] != spec["serviceName"]]
    expect(any(s["spec"].get("clusterIP") != "None" and not s["spec"].get("publishNotReadyAddresses") for s in clients),
           "a client Service that routes to ready pods only")

    expect(spec.get("podManagementPolicy") == "Parallel", "pods start in parallel (readiness needs peers)")
    expect(labels.items() <= spec["template"]["metadata"]["labels"].items(), "the selector matches the pod labels")

    # Node identity, addresses and seeds.
    node_id = env.get("DYNAKV_NODE_ID", {})
    pod_name = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    expect(pod_name == "metadata.name" and node_id.get("value") == "$(POD_NAME)", "the node id is the pod name")
    adv = env.get("DYNAKV_ADVERTISE", {}).get("value", "")
    expect(adv.startswith("http://$(POD_NAME)." + spec["serviceName"] + "."), f"advertises its stable DNS name ({adv})")
    seeds = env.get("DYNAKV_SEEDS", {}).get("value", "").split(",")
    expect(len(seeds) >= 2 and all(s.startswith(f"http://{sts['metadata']['name']}-{i}.{spec['serviceName']}.") for i, s in enumerate(seeds)),
           f"seeds are the stable DNS names of the first pods ({len(seeds)})")
    expect(env.get("DYNAKV_LISTEN", {}).get("value", "0.0.0.0:8080").startswith("0.0.0.0:"), "listens on every interface")
    names = [e["name"] for e in container.get("env", [])]
    for var in ("DYNAKV_NODE_ID", "DYNAKV_ADVERTISE", "DYNAKV_SEEDS"):
        if var in names:
            expect(names.index("POD_NAME") < names.index(var) and names.index("POD_NAMESPACE") < names.index(var),
                   f"{var} comes after the variables it expands")
    expect(pod.get("enableServiceLinks") is False, "no service-link DYNAKV_* variables")

    # The cluster secret from a Secret.
    ref = env.get("DYNAKV_CLUSTER_SECRET", {}).get("valueFrom", {}).get("secretKeyRef", {})
    expect(bool(ref.get("name")) and bool(ref.get("key")) and "value" not in env.get("DYNAKV_CLUSTER_SECRET", {}),
           "DYNAKV_CLUSTER_SECRET comes from a Secret (secretKeyRef)")

    # Probes.
    def probe(name):
        return container.get(name, {}).get("httpGet", {})
    port_names = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    expect(probe("livenessProbe").get("path") == "/health", "liveness on GET /health")
    expect(probe("readinessProbe").get("path") == "/health/ready", "readiness on GET /health/ready")
    expect(probe("startupProbe").get("path") in (None, "/health"), "startup probe (if any) on GET /health")
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        port = probe(name).get("port")
        if port is not None:
            expect(port_names.get(port, port) == 8080, f"{name} on port 8080")

    # Storage: one claim per pod, on the data dir.
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    data_dir = env.get("DYNAKV_DATA_DIR", {}).get("value", "/data")
    expect(any(mounts.get(c) == data_dir for c in claims), f"a PersistentVolumeClaim per pod mounted on the data dir {data_dir}")

    # Security.
    psc = pod.get("securityContext", {})
    csc = container.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "runAsNonRoot")
    expect((csc.get("runAsUser") or psc.get("runAsUser") or 0) != 0, "a non-zero runAsUser")
    expect(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"] and not csc.get("capabilities", {}).get("add"),
           "capabilities: drop ALL, add none")
    expect(pod.get("automountServiceAccountToken") is False, "no service account token")

    # Stopping.
    grace = pod.get("terminationGracePeriodSeconds", 30)
    expect(grace >= 30, f"terminationGracePeriodSeconds {grace} >= 30 (10 s drain, flush, leave)")
    pre = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    expect(pre[:1] == ["dynakv-leave"] and "--only-if" in pre, "preStop leaves only when the pod was marked")
    if "--wait" in pre:
        wait = int(pre[pre.index("--wait") + 1])
        expect(wait < grace, f"the preStop wait ({wait}s) fits in the grace period ({grace}s)")

    # Disruptions.
    pdbs = by_kind(docs, "PodDisruptionBudget")
    expect(len(pdbs) == 1, "one PodDisruptionBudget")
    if pdbs:
        p = pdbs[0]["spec"]
        expect(p.get("maxUnavailable") == 1 and "minAvailable" not in p, "PodDisruptionBudget maxUnavailable: 1")
        expect(p.get("selector", {}).get("matchLabels", {}).items() <= spec["template"]["metadata"]["labels"].items(),
               "the PodDisruptionBudget selects the pods")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "deploy", "kubernetes")
    docs = load(directory)
    if not docs:
        print(f"no manifests in {directory}")
        return 1
    print(f"kubernetes-validate {kubernetes_validate.__version__}: {len(docs)} documents, offline")
    schema_check(docs)
    structure_check(docs)
    print(f"manifests: {len(docs)} documents x {len(VERSIONS)} Kubernetes versions, "
          f"{'all valid' if not failures else f'{len(failures)} failures'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
