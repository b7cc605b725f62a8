"""End to end without a cluster: operator -> RayJob -> real training -> status, and a restart.

The operator runs for real against the Kubernetes API emulator; a KubeRay stand-in runs each
RayJob's entrypoint (`cpt train`, real Ray + DeepSpeed on CPU) on this machine with the spec
ConfigMap as a file; data, checkpoints, progress and the model live on SeaweedFS S3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devkit.cluster import cluster_job, create_secret, wait_for
from devkit.k8s_emulator import CPTJOBS, EVENTS, RAYJOBS, EmulatorThread
from devkit.kuberay_standin import KubeRayStandIn
from devkit.seaweed import SeaweedS3
from tests.support.faults import fault_env
from tests.support.operator_runner import OperatorFactory

pytestmark = [pytest.mark.slow, pytest.mark.trainer]  # the KubeRay stand-in runs `cpt train` (torch, Ray)


@pytest.fixture(scope="module")
def stack(
    cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmulatorThread, KubeRayStandIn]]:
    """The emulator, a KubeRay stand-in that runs each RayJob's entrypoint here, and the operator (1 s polls)."""
    # Attempt 1 of "resilient" crashes at step 24 (after committing step 16), also after Ray Train's
    # in-attempt worker restart: the attempt fails and the operator must start attempt 2.
    faults = {"resilient-a1": fault_env("raise_at_step=24"), "poisoned-a1": fault_env("nan_at_step=6")}
    standin = KubeRayStandIn(cluster, tmp_path_factory.mktemp("kuberay"), extra_env=faults).start()
    operator = operator_factory(poll_seconds=1)
    create_secret(cluster, s3)
    yield cluster, standin
    operator.stop()  # before the stand-in that runs its RayJobs
    standin.stop()


def _exists(s3: SeaweedS3, key: str) -> bool:
    try:
        s3.client().head_object(Bucket=s3.bucket, Key=key)
        return True
    except Exception:
        return False


def e2e_job(s3: SeaweedS3, name: str, steps: int = 20) -> dict:
    return cluster_job(
        s3,
        name,
        training={"steps": steps, "globalBatchTokens": 512, "microBatchSize": 4},
        checkpoint={"intervalSteps": 8, "keepLast": 2, "export": {"dtype": "float32"}},
        evaluation={"intervalSteps": 10, "maxBatches": 2},
    )


def _status(cluster: EmulatorThread, name: str) -> dict:
    return (cluster.get(CPTJOBS, "ml", name) or {}).get("status") or {}


def _until_terminal(cluster: EmulatorThread, standin: KubeRayStandIn, name: str, timeout: float) -> dict:
    """The status once the job is Succeeded or Failed; on timeout, fail with its attempts' logs."""
    try:
        return wait_for(
            lambda: _status(cluster, name).get("phase") in ("Succeeded", "Failed") and _status(cluster, name),
            timeout=timeout,
            what=f"a terminal phase of {name}",
        )
    except AssertionError:
        logs = [_log(standin, run) for run in sorted(standin.runs) if run.startswith(f"{name}-a")]
        raise AssertionError("\n-----\n".join(logs)) from None


def _log(standin: KubeRayStandIn, name: str, tail: int = 4000) -> str:
    return standin.runs[name].log.read_text(errors="replace")[-tail:] if name in standin.runs else "(not started)"


def test_cptjob_trains_to_success_through_the_operator(
    stack: tuple[EmulatorThread, KubeRayStandIn], s3: SeaweedS3
) -> None:
    cluster, standin = stack
    cluster.create(CPTJOBS, e2e_job(s3, "tiny-e2e"))
    seen_running = wait_for(
        lambda: _status(cluster, "tiny-e2e").get("progress", {}).get("step"),
        timeout=240,
        what="progress mirrored into the status",
    )
    assert seen_running >= 1
    st = _until_terminal(cluster, standin, "tiny-e2e", timeout=300)
    assert st["phase"] == "Succeeded", (st, _log(standin, "tiny-e2e-a1"))
    assert st["progress"]["step"] == 20 and st["progress"]["loss"] > 0
    assert st["checkpoint"]["step"] == 20 and st["checkpoint"]["uri"].endswith("step-00000020/")
    assert st["evaluation"]["latest"]["domainLoss"] < st["evaluation"]["baseline"]["domainLoss"]
    assert st["output"]["modelUri"] == f"s3://{s3.bucket}/runs/tiny-e2e/final/"
    assert _exists(s3, "runs/tiny-e2e/final/model.safetensors")
    assert {s["name"] for s in st["data"]["sources"]} == {"veloria", "general"}
    assert st["restarts"] == 0 and st["attempt"] == 1
    # It trained on a Ray cluster with token authentication, the job's own token as KubeRay hands it out.
    rayjob = cluster.get(RAYJOBS, "ml", "tiny-e2e-a1")
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "tiny-e2e-ray-auth"}
    assert standin.runs["tiny-e2e-a1"].auth_mode == "token"


def test_failed_attempt_resumes_from_its_checkpoint(
    stack: tuple[EmulatorThread, KubeRayStandIn], s3: SeaweedS3
) -> None:
    cluster, standin = stack
    cluster.create(CPTJOBS, e2e_job(s3, "resilient", steps=40))
    st = _until_terminal(cluster, standin, "resilient", timeout=420)
    assert st["phase"] == "Succeeded", (st, _log(standin, "resilient-a2"))
    assert st["restarts"] == 1 and st["attempt"] == 2
    log1 = _log(standin, "resilient-a1", tail=10**7)
    assert "injected fault after step 24" in log1 and "checkpoint step 16 committed" in log1
    events = [e for e in cluster.list(EVENTS, "ml") if e["involvedObject"]["name"] == "resilient"]
    failed = next(e for e in events if e["reason"] == "AttemptFailed")
    assert "attempt 1 failed" in failed["message"] and "restart 1 of" in failed["message"]
    log2 = _log(standin, "resilient-a2", tail=10**7)
    assert f"resuming from s3://{s3.bucket}/runs/resilient/step-00000016/" in log2, log2[-4000:]
    progress = json.loads(
        s3.client().get_object(Bucket=s3.bucket, Key="runs/resilient/_status/progress.json")["Body"].read()
    )
    assert progress["attempt"] == 2 and progress["state"] == "succeeded"

    # Failure evidence: attempt 1's pods' logs were copied before its RayJob was deleted (a restart followed:
    # the cluster's resources went to attempt 2; only a job's last attempt is kept for the TTL).
    where = "runs/resilient/logs/attempt-1/"
    keys = _keys(s3, where)
    [driver] = [k for k in keys if k.startswith(where + "driver-resilient-a1-")]
    assert "injected fault after step 24" in _text(s3, driver)
    assert any(k.startswith(where + "head-") for k in keys) and any(k.startswith(where + "worker-") for k in keys)
    assert json.loads(_text(s3, where + "rayjob-status.json"))["status"]["jobDeploymentStatus"] == "Failed"
    copied = next(e for e in events if e["reason"] == "LogsCopied")
    assert "logs of attempt 1 (1 driver, 1 head, 1 worker) copied to" in copied["message"]
    assert st["logsUri"] == f"s3://{s3.bucket}/runs/resilient/logs/"
    assert not st.get("keptRayJobs")
    assert cluster.get(RAYJOBS, "ml", "resilient-a1") is None


def test_a_failed_job_keeps_its_report_and_logs_and_its_rayjob_for_the_ttl(
    stack: tuple[EmulatorThread, KubeRayStandIn], s3: SeaweedS3
) -> None:
    cluster, standin = stack
    doc = e2e_job(s3, "poisoned")
    doc["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 5}
    cluster.create(CPTJOBS, doc)
    st = _until_terminal(cluster, standin, "poisoned", timeout=300)
    assert st["phase"] == "Failed", (st, _log(standin, "poisoned-a1"))
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Failed"] == "NonFiniteLoss"
    # report/ on failure: the curves up to the failure, and the status says where.
    assert st["output"]["reportUri"] == f"s3://{s3.bucket}/runs/poisoned/report/"
    assert json.loads(_text(s3, "runs/poisoned/report/summary.json"))["state"] == "failed"
    assert _exists(s3, "runs/poisoned/report/loss.png") and _exists(s3, "runs/poisoned/report/metrics.jsonl")
    assert any(k.startswith("runs/poisoned/logs/attempt-1/driver-") for k in _keys(s3, "runs/poisoned/logs/"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "poisoned-a1") is None, timeout=30, what="RayJob deleted after its TTL")


def _keys(s3: SeaweedS3, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def _text(s3: SeaweedS3, key: str) -> str:
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode(errors="replace")
