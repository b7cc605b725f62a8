"""The operator against the Kubernetes API emulator and SeaweedFS: shared by tests and bench/operator.py."""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from devkit.jobs import ROOT, merge, tiny_job_doc
from devkit.k8s_emulator import CRDS, NAMESPACES, SECRETS, EmulatorThread, cluster_with_cpt_and_kuberay
from devkit.seaweed import SeaweedS3

T = TypeVar("T")


@functools.cache
def kuberay_crd(name: str) -> dict[str, Any]:
    """A KubeRay v1.7.0 CRD from ../shared/kuberay (reference data, read at test time, never copied)."""
    candidates = [
        Path(os.environ.get("CPT_KUBERAY_CRDS", "/nonexistent")),
        ROOT.parent / "shared" / "kuberay" / "v1.7.0",
        Path("/work/shared/kuberay/v1.7.0"),
    ]
    for directory in candidates:
        if (directory / name).exists():
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            return yaml.load((directory / name).read_text(), Loader=loader)
    raise FileNotFoundError(f"KubeRay CRD {name} not found in {[str(c) for c in candidates]}; set CPT_KUBERAY_CRDS")


def kuberay_rayjob_crd(version: str = "1.7.0") -> dict[str, Any]:
    """KubeRay v1.7.0's real RayJob CRD, cut back to what `version` serves for authentication: 1.6.0 and later
    have authOptions.secretName, 1.5.1 and 1.5.2 authOptions.mode only, 1.5.0 and older no authOptions (as their
    published CRDs do)."""
    crd = copy.deepcopy(kuberay_crd("ray.io_rayjobs.yaml"))
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    cluster = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"]
    if version in ("1.5.1", "1.5.2"):
        cluster["authOptions"]["properties"] = {"mode": cluster["authOptions"]["properties"]["mode"]}
    elif version not in ("1.6.0", "1.6.1", "1.6.2", "1.7.0"):
        del cluster["authOptions"]
    return crd


def install_kuberay_crd(cluster: EmulatorThread, version: str) -> None:
    """Replace the served rayjobs.ray.io CRD by `version`'s, as upgrading or downgrading KubeRay would."""
    crd = kuberay_rayjob_crd(version)
    cluster.call(
        cluster.emulator.op_update(
            CRDS, None, crd["metadata"]["name"], None, lambda current: {**crd, "metadata": current["metadata"]}
        )
    )


def rayjob_schema() -> dict[str, Any]:
    crd = kuberay_crd("ray.io_rayjobs.yaml")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def start_cluster() -> EmulatorThread:
    """The emulator with the CRDs a cluster with KubeRay v1.7.0 and cpt-operator has, served as objects too."""
    from cpt_core.schema.crd import crd

    emulator = EmulatorThread(cluster_with_cpt_and_kuberay(rayjob_schema())).start()
    for definition in (crd(), kuberay_crd("ray.io_rayjobs.yaml"), kuberay_crd("ray.io_rayclusters.yaml")):
        emulator.create(CRDS, copy.deepcopy(definition))
    return emulator


def wait_for(check: Callable[[], T], timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> T:
    """Poll until `check()` returns a truthy value; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def upload_example_data(s3: SeaweedS3, prefix: str = "data") -> str:
    client = s3.client()
    for path in (ROOT / "examples" / "data").rglob("*.jsonl"):
        client.upload_file(str(path), s3.bucket, f"{prefix}/{path.relative_to(ROOT / 'examples' / 'data')}")
    return f"s3://{s3.bucket}/{prefix}/"


def cluster_job(
    s3: SeaweedS3, name: str, namespace: str = "ml", secret: str | None = "s3-credentials", **spec: Any
) -> dict[str, Any]:
    """A tiny CPU CPTJob whose data and checkpoints live on the SeaweedFS server."""
    data = f"s3://{s3.bucket}/data/"
    doc = tiny_job_doc(
        metadata={"name": name, "namespace": namespace},
        spec={
            "data": {
                "sources": [
                    {"name": "veloria", "role": "domain", "uris": [data + "veloria/"], "weight": 90},
                    {"name": "general", "role": "replay", "uris": [data + "general/"], "weight": 10},
                ],
                "cacheUri": f"s3://{s3.bucket}/cache/",
            },
            "checkpoint": {"uri": f"s3://{s3.bucket}/runs/{name}/"},
            "storage": {"endpoint": s3.endpoint, **({"credentialsSecret": secret} if secret else {})},
            "cluster": {"workers": 1, "gpusPerWorker": 0},
        },
    )
    merge(doc["spec"], spec)
    return copy.deepcopy(doc)


def ensure_namespace(cluster: EmulatorThread, namespace: str) -> None:
    """A Namespace object, as a real cluster has (kopf watching given namespaces waits for them)."""
    if cluster.get(NAMESPACES, None, namespace) is None:
        cluster.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})


def create_secret(cluster: EmulatorThread, s3: SeaweedS3, namespace: str = "ml", name: str = "s3-credentials") -> None:
    ensure_namespace(cluster, namespace)
    if cluster.get(SECRETS, namespace, name) is None:
        cluster.secret(namespace, name, {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
