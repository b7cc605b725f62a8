"""Pure builders: snapshots, KubeRay v1.7.0 schema validation, names, labels, secrets by reference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cpt_core.contract.names import QUEUE_LABEL
from cpt_core.validation.validate import parse_job
from cpt_operator.controller.build.access import build_auth_secret, build_network_policy
from cpt_operator.controller.build.manifests import RayAuthMode, build_configmap, build_rayjob, dump_yaml
from cpt_operator.controller.build.names import RAYJOB_NAME_MAX, configmap_name, is_dns1035, rayjob_name
from cpt_operator.controller.settings import OperatorSettings

from devkit.cluster import rayjob_schema

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).parent / "snapshots"
SETTINGS = OperatorSettings(trainer_image="ghcr.io/cpt-operator/cpt-trainer:test", ray_version="2.60.0")


def job(example: str = "gpu-8b-instruct.yaml", **meta: Any) -> Any:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["metadata"].setdefault("namespace", "ml-team")
    doc["metadata"].update({"uid": "0f0e0d0c-0000-4000-8000-000000000001", "generation": 1, **meta})
    return parse_job(doc)


def check_snapshot(name: str, objects: list[dict[str, Any]]) -> None:
    text = dump_yaml(*objects)
    path = SNAPSHOTS / name
    if os.environ.get("CPT_UPDATE_SNAPSHOTS") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{path} changed: review the diff, then CPT_UPDATE_SNAPSHOTS=1"


@pytest.mark.parametrize("example", ["gpu-8b-instruct.yaml", "local-tiny.yaml", "cluster-overrides.yaml"])
def test_rendered_objects_match_snapshots(example: str) -> None:
    """What the operator creates for attempt 1 on KubeRay v1.7.0, in order (the token is a fixed stand-in)."""
    j = job(example)
    objects = [
        build_configmap(j),
        build_auth_secret(j, "snapshot-token"),
        build_network_policy(j, 1, SETTINGS),
        build_rayjob(j, 1, SETTINGS, auth="token-secret"),
    ]
    check_snapshot(example.replace(".yaml", ".rendered.yaml"), objects)


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
@pytest.mark.parametrize("attempt", [1, 7])
@pytest.mark.parametrize("auth", ["token-secret", "token", "off"])
def test_every_built_rayjob_is_valid_against_kuberay_v1_7_0(example: str, attempt: int, auth: RayAuthMode) -> None:
    rayjob = build_rayjob(job(example), attempt, SETTINGS, auth=auth)
    errors = sorted(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_rayjob_shape() -> None:
    j = job()
    rayjob = build_rayjob(j, 3, SETTINGS)
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    assert spec["entrypoint"].startswith("cpt train /etc/cpt/job.yaml --attempt 3 --uid 0f0e0d0c-")
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4
    pod = workers["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "ml-training"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert {"name": "job-spec", "mountPath": "/etc/cpt", "readOnly": True} in head["containers"][0]["volumeMounts"]
    assert rayjob["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    assert rayjob["metadata"]["labels"]["cpt.dev/attempt"] == "3"
    owner = rayjob["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "CPTJob" and owner["controller"] and owner["uid"] == j.metadata.uid


def test_credentials_only_by_secret_reference() -> None:
    rayjob = build_rayjob(job(), 1, SETTINGS)
    containers = [
        rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
        rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0],
    ]
    for container in containers:
        creds = {e["name"]: e for e in container["env"] if e["name"].startswith("AWS_")}
        assert set(creds) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
        assert all(
            "value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials" for e in creds.values()
        )


def test_configmap_holds_the_resolved_spec() -> None:
    cm = build_configmap(job("local-smollm2.yaml"))
    document = yaml.safe_load(cm["data"]["job.yaml"])
    assert document["spec"]["training"]["learningRate"] == 1e-4
    assert document["spec"]["data"]["cacheUri"].endswith("_cache/")
    assert document["metadata"]["uid"].startswith("0f0e0d0c")
    assert parse_job(document).spec.total_steps == 16


def test_no_deadline_unless_asked() -> None:
    assert "activeDeadlineSeconds" not in build_rayjob(job(), 1, SETTINGS)["spec"]
    j = job()
    j.spec.run_policy.active_deadline_seconds = 3600
    assert build_rayjob(j, 1, SETTINGS)["spec"]["activeDeadlineSeconds"] == 3600


@pytest.mark.parametrize(
    ("name", "attempt"),
    [
        ("legal", 1),
        ("a" * 63, 12),
        ("7-digits-first", 2),
        ("x" * 44, 100),
        ("legal-cpt-for-the-whole-firm-of-lawyers", 3),
    ],
)
def test_rayjob_names_follow_kuberay_rules(name: str, attempt: int) -> None:
    result = rayjob_name(name, attempt)
    assert len(result) <= RAYJOB_NAME_MAX and is_dns1035(result)
    assert result.endswith(f"-a{attempt}")
    assert rayjob_name(name, attempt) == result  # stable
    assert rayjob_name(name, attempt + 1) != result
    assert len(configmap_name(name)) <= 63


def test_long_names_get_distinct_hashes() -> None:
    a, b = rayjob_name("x" * 60 + "aaa", 1), rayjob_name("x" * 60 + "bbb", 1)
    assert a != b and len(a) == len(b) <= RAYJOB_NAME_MAX


def _render(*args: str, **env: str) -> list[dict[str, Any]]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", "render", *args, str(ROOT / "examples" / "local-tiny.yaml")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return list(yaml.safe_load_all(out.stdout))


def test_cpt_render_prints_every_object() -> None:
    docs = _render()
    assert [d["kind"] for d in docs] == ["ConfigMap", "NetworkPolicy", "RayJob"]
    assert all(d["metadata"]["namespace"] == "default" and "ownerReferences" not in d["metadata"] for d in docs)
    # Standalone, nobody reads KubeRay's CRD: KubeRay makes the token (1.5.1+), so no Secret is printed.
    assert docs[2]["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}


def test_cpt_render_follows_the_operators_ray_auth_setting() -> None:
    docs = _render(CPT_OPERATOR_KUBERAY_AUTH="token-secret", CPT_OPERATOR_NETWORK_POLICY="false")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Secret", "RayJob"]
    secret, rayjob = docs[1], docs[2]
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "local-tiny-ray-auth"}
    assert secret["metadata"]["name"] == "local-tiny-ray-auth" and len(secret["data"]["auth_token"]) > 40
    off = _render(CPT_OPERATOR_KUBERAY_AUTH="off")
    assert "authOptions" not in off[-1]["spec"]["rayClusterSpec"]


def test_tracking_secrets_reach_the_ray_pods_by_reference() -> None:
    from cpt_core.validation.validate import parse_job
    from cpt_operator.controller.build.manifests import build_rayjob
    from cpt_operator.controller.settings import OperatorSettings

    from devkit.jobs import tiny_job_doc

    doc = tiny_job_doc(
        metadata={"name": "tracked", "namespace": "ml"},
        spec={
            "tracking": {
                "mlflow": {"trackingUri": "http://mlflow:5000", "credentialsSecret": "mlflow-token"},
                "wandb": {"project": "cpt", "apiKeySecret": "wandb-key"},
            }
        },
    )
    rayjob = build_rayjob(parse_job(doc), 1, OperatorSettings())
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in head["env"] if "valueFrom" in e}
    assert refs["WANDB_API_KEY"] == {"name": "wandb-key", "key": "WANDB_API_KEY", "optional": True}
    assert refs["MLFLOW_TRACKING_TOKEN"]["name"] == "mlflow-token"
    assert not any("value" in e and e["name"].startswith(("WANDB", "MLFLOW")) for e in head["env"])
