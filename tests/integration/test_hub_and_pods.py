"""Hub models and pod overrides through the real operator (kopf) against the Kubernetes emulator and SeaweedFS.

The operator runs with `hub_preflight: skip`: tests never contact the Hugging Face Hub (the Hub answers
themselves are covered offline by tests/unit/test_hub_models.py). What runs for real here: the token
Secret check in the preflight, the S3 mirror listed by the storage preflight and read by the trainer's
model resolution, and podOverrides reaching the RayJob the emulator stores (validated against KubeRay
v1.7.0's CRD schema on create).
"""

from __future__ import annotations

from typing import Any

import pytest
from cpt_core.storage import S3Settings, Storage
from cpt_core.validation.validate import parse_job

from devkit.cluster import ROOT, cluster_job, create_secret, wait_for
from devkit.k8s_emulator import CPTJOBS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_runner import OperatorFactory, OperatorThread


@pytest.fixture(scope="module")
def operator(operator_factory: OperatorFactory) -> OperatorThread:
    return operator_factory(image_pull_secrets=["ghcr-pull"], hub_preflight="skip")


def condition(cluster: EmulatorThread, name: str, kind: str = "StorageReady") -> dict[str, Any]:
    status = (cluster.get(CPTJOBS, "ml", name) or {}).get("status") or {}
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def templates(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"], spec["workerGroupSpecs"][0]["template"]]


def test_token_secret_is_checked_then_reaches_the_pods_by_reference(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    job = cluster_job(
        s3,
        "hubtoken",
        model={"source": "hf://org/tiny-llama", "tokenSecret": {"name": "hf-token"}},
        cluster={
            "podOverrides": [
                {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}], "labels": {"team": "nlp"}},
                {
                    "targets": ["workers"],
                    "resources": {"rdma/hca": 1},
                    "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
                    "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                },
            ]
        },
    )
    cluster.create(CPTJOBS, job)
    found = wait_for(
        lambda: condition(cluster, "hubtoken").get("reason") == "SecretNotFound" and condition(cluster, "hubtoken")
    )
    assert "spec.model.tokenSecret" in found["message"] and "create secret generic hf-token" in found["message"]
    assert cluster.get(RAYJOBS, "ml", "hubtoken-a1") is None
    cluster.secret("ml", "hf-token", {"HF_TOKEN": "hf_not_a_real_token"})
    rayjob = wait_for(lambda: cluster.get(RAYJOBS, "ml", "hubtoken-a1"), what="RayJob once the token Secret exists")
    head, workers = templates(rayjob)
    for template in (head, workers):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
        assert "HF_HUB_OFFLINE" not in env and env["NCCL_DEBUG"]["value"] == "INFO"
        assert template["metadata"]["labels"]["team"] == "nlp"
        assert template["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}]
    assert "hf_not_a_real_token" not in str(rayjob)
    worker = workers["spec"]["containers"][0]
    assert worker["resources"]["limits"]["rdma/hca"] == "1"
    assert {"name": "shm", "mountPath": "/dev/shm"} in worker["volumeMounts"]
    assert "rdma/hca" not in head["spec"]["containers"][0]["resources"].get("limits", {})


def test_mirror_is_checked_by_the_preflight_and_read_by_the_trainer(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cpt_trainer.model.source import resolve

    create_secret(cluster, s3)
    mirror = f"s3://{s3.bucket}/hf-mirror/"
    job = cluster_job(s3, "hubmirror", model={"source": "hf://org/tiny-llama", "mirror": mirror})
    cluster.create(CPTJOBS, job)
    found = wait_for(
        lambda: condition(cluster, "hubmirror").get("reason") == "DataNotFound" and condition(cluster, "hubmirror")
    )
    assert f"{mirror}org/tiny-llama/" in found["message"]
    client = s3.client()
    for path in (ROOT / "examples" / "models" / "tiny-llama").iterdir():
        client.upload_file(str(path), s3.bucket, f"hf-mirror/org/tiny-llama/{path.name}")
    rayjob = wait_for(lambda: cluster.get(RAYJOBS, "ml", "hubmirror-a1"), what="RayJob once the mirror has the model")
    for template in templates(rayjob):
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
    # What the trainer does with the resolved spec it reads from the ConfigMap: a download from the mirror.
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path))
    spec = parse_job(job).spec.resolved()
    storage = Storage(S3Settings.from_spec(spec.storage, s3.env()))
    resolved = resolve(spec.model.source, storage)
    assert (resolved.directory / "config.json").exists() and str(resolved.directory).startswith(str(tmp_path))
