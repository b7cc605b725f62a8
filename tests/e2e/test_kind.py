"""End to end on a real Kubernetes cluster (kind), with the operator in-process via kopf.testing.KopfRunner.

Prerequisites are what `hack/kind-e2e.sh` sets up (run it with KEEP=1 E2E_PYTEST=1): KubeRay, the
`cpt-trainer:e2e` image loaded into the nodes, an S3 server in namespace `s3` with the example
data, and the `s3-credentials` Secret in `ml-team`. Without a reachable cluster every test here
is skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _kubectl(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=check, timeout=timeout)


def _cluster_problem() -> str | None:
    if shutil.which("kubectl") is None:
        return "kubectl is not installed"
    try:
        version = _kubectl("version", "--request-timeout=5s", "-o", "json", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        return "no Kubernetes cluster reachable (kubectl version timed out)"
    if version.returncode != 0 or "serverVersion" not in version.stdout:
        return "no Kubernetes cluster reachable (kubectl version failed); run hack/kind-e2e.sh on a machine with Docker"
    if _kubectl("get", "crd", "rayjobs.ray.io", check=False).returncode != 0:
        return "the cluster has no KubeRay (rayjobs.ray.io); run hack/kind-e2e.sh with KEEP=1"
    if _kubectl("-n", "ml-team", "get", "secret", "s3-credentials", check=False).returncode != 0:
        return "namespace ml-team has no s3-credentials Secret; run hack/kind-e2e.sh with KEEP=1"
    return None


PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]


@pytest.fixture(scope="module")
def s3_port_forward() -> Iterator[str]:
    """The operator runs on this machine: it reaches the in-cluster S3 server through a port-forward."""
    process = subprocess.Popen(
        ["kubectl", "-n", "s3", "port-forward", "svc/seaweedfs", "18333:8333"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    yield "http://127.0.0.1:18333"
    process.terminate()


def test_tiny_job_succeeds_with_an_in_process_operator(s3_port_forward: str) -> None:
    from kopf.testing import KopfRunner

    _kubectl("apply", "-f", str(ROOT / "manifests" / "crds" / "cpt.dev_cptjobs.yaml"))
    _kubectl("-n", "ml-team", "delete", "cptjob", "tiny-pytest", "--ignore-not-found", "--wait=true", timeout=120)
    manifest = (ROOT / "hack" / "kind" / "tiny-cptjob.yaml").read_text()
    manifest = manifest.replace("name: tiny\n", "name: tiny-pytest\n").replace("runs/tiny/", "runs/tiny-pytest/")
    os.environ.update(
        {
            "CPT_OPERATOR_S3_ENDPOINT": s3_port_forward,
            "CPT_OPERATOR_TRAINER_IMAGE": os.environ.get("CPT_E2E_TRAINER_IMAGE", "cpt-trainer:e2e"),
            "CPT_OPERATOR_IMAGE_PULL_POLICY": "Never",
            "CPT_OPERATOR_POLL_SECONDS": "5",
        }
    )
    args = ["run", "--standalone", "--namespace=ml-team", "-m", "tests.support.kopf_main"]
    with KopfRunner(args, timeout=60) as runner:
        subprocess.run(["kubectl", "apply", "-f", "-"], input=manifest, text=True, check=True)
        deadline = time.monotonic() + 1800
        status: dict = {}
        while time.monotonic() < deadline:
            out = _kubectl("-n", "ml-team", "get", "cptjob", "tiny-pytest", "-o", "jsonpath={.status}", check=False)
            status = json.loads(out.stdout or "{}")
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(10)
    assert runner.exception is None, runner.output[-3000:]
    assert status.get("phase") == "Succeeded", json.dumps(status, indent=2)
    assert status["progress"]["step"] == 30 and status["output"]["modelUri"].endswith("/final/")
