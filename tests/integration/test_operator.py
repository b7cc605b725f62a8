"""The real operator (kopf) against KMock's Kubernetes emulator (made faithful) and SeaweedFS S3.

The RayJob status is driven by the test here (KubeRay does not run); test_operator_e2e.py
runs real training behind a KubeRay stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cpt_core.api.progress import TrainingProgress
from cpt_core.api.v1alpha1.status import CheckpointRef, EvalResult, EvaluationStatus, OutputStatus

from devkit.cluster import cluster_job, create_secret, wait_for
from devkit.k8s_emulator import CONFIGMAPS, CPTJOBS, EVENTS, PODS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_checks import phase_is, set_rayjob_status, status, write_progress
from tests.support.operator_runner import OperatorFactory, OperatorThread


@pytest.fixture(scope="module")
def operator(operator_factory: OperatorFactory) -> OperatorThread:
    return operator_factory(log_copy_max_bytes=4096)  # a failed attempt's logs are cut to their last 4 kB


def events_for(cluster: EmulatorThread, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in cluster.list(EVENTS, "ml") if e["involvedObject"]["name"] == name]


def add_pod(cluster: EmulatorThread, rayjob: str, pod: str, labels: dict[str, str], log: Path) -> None:
    """A pod of the RayJob `rayjob` with one container whose log is the file `log` (what KubeRay and the kubelet
    would provide; KubeRay does not run in this module)."""
    owner = cluster.get(RAYJOBS, "ml", rayjob)["metadata"]
    ref = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": rayjob, "uid": owner["uid"]}
    meta = {"name": pod, "namespace": "ml", "labels": labels, "ownerReferences": [ref]}
    cluster.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "c"}]}})
    cluster.emulator.pod_logs[("ml", pod, "c")] = log


def s3_text(s3: SeaweedS3, key: str) -> str:
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode()


def test_create_starts_a_rayjob_and_mirrors_progress_to_success(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "happy"))
    st = wait_for(phase_is(cluster, "happy", "Preparing"), what="Preparing")
    assert st["attempt"] == 1 and st["rayJobName"] == "happy-a1"
    rayjob = cluster.get(RAYJOBS, "ml", "happy-a1")
    assert rayjob is not None
    assert rayjob["spec"]["entrypoint"].startswith("cpt train /etc/cpt/job.yaml --attempt 1 --uid ")
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == cluster.get(CPTJOBS, "ml", "happy")["metadata"]["uid"]
    assert cluster.get(CONFIGMAPS, "ml", "happy-spec") is not None
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["StorageReady"]["status"] == "True" and conditions["Validated"]["status"] == "True"

    set_rayjob_status(cluster, "happy-a1", "Running", "RUNNING", dashboardURL="http://head:8265")
    write_progress(
        cluster,
        s3,
        "happy",
        "running",
        progress=TrainingProgress(step=12, total_steps=30, tokens=12288, loss=3.5, lr=1e-3, updated_at="t"),
        evaluation=EvaluationStatus(
            baseline=EvalResult(step=0, domain_loss=7.6, general_loss=7.6),
            latest=EvalResult(step=10, domain_loss=5.0, general_loss=7.3),
            general_loss_increase=-0.04,
        ),
        checkpoint=CheckpointRef(step=10, uri=f"s3://{s3.bucket}/runs/happy/step-00000010/", time="t", attempt=1),
    )
    st = wait_for(lambda: status(cluster, "happy").get("progress", {}).get("step") == 12 and status(cluster, "happy"))
    assert st["phase"] == "Running" and st["dashboardURL"] == "http://head:8265"
    assert st["evaluation"]["generalLossIncrease"] == -0.04 and st["checkpoint"]["step"] == 10

    write_progress(
        cluster,
        s3,
        "happy",
        "succeeded",
        progress=TrainingProgress(step=30, total_steps=30),
        output=OutputStatus(model_uri=f"s3://{s3.bucket}/runs/happy/final/"),
    )
    set_rayjob_status(cluster, "happy-a1", "Complete", "SUCCEEDED")
    st = wait_for(phase_is(cluster, "happy", "Succeeded"), what="Succeeded")
    assert st["output"]["modelUri"] == f"s3://{s3.bucket}/runs/happy/final/"
    assert ("Normal", "Succeeded") in events_for(cluster, "happy")
    assert operator.metrics.jobs.labels(phase="Succeeded")._value.get() >= 1


def test_missing_secret_blocks_the_rayjob_until_it_exists(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "nosecret", secret="later-secret"))
    st = wait_for(
        lambda: (
            any(
                c["type"] == "StorageReady" and c["reason"] == "SecretNotFound"
                for c in status(cluster, "nosecret").get("conditions", [])
            )
            and status(cluster, "nosecret")
        )
    )
    assert st["phase"] == "Pending" and "kubectl -n ml create secret generic later-secret" in st["message"]
    assert cluster.get(RAYJOBS, "ml", "nosecret-a1") is None
    assert ("Warning", "SecretNotFound") in events_for(cluster, "nosecret")
    assert operator.metrics.preflight_failures.labels(reason="SecretNotFound")._value.get() >= 1
    create_secret(cluster, s3, name="later-secret")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "nosecret-a1"), what="RayJob after the Secret appeared")


def test_wrong_credentials_and_missing_data_are_preflight_failures(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.secret("ml", "wrong-keys", {"AWS_ACCESS_KEY_ID": "AKWRONG", "AWS_SECRET_ACCESS_KEY": "nope"})
    cluster.create(CPTJOBS, cluster_job(s3, "wrongkeys", secret="wrong-keys"))
    create_secret(cluster, s3)
    missing = cluster_job(s3, "nodata")
    missing["spec"]["data"]["sources"][0]["uris"] = [f"s3://{s3.bucket}/data/does-not-exist/"]
    cluster.create(CPTJOBS, missing)

    def reason(name: str) -> str | None:
        return next(
            (c["reason"] for c in status(cluster, name).get("conditions", []) if c["type"] == "StorageReady"), None
        )

    wait_for(lambda: reason("wrongkeys") == "AccessDenied", what="AccessDenied")
    wait_for(lambda: reason("nodata") == "DataNotFound", what="DataNotFound")
    assert "spec.data.sources[0].uris[0]" in status(cluster, "nodata")["message"]
    assert cluster.get(RAYJOBS, "ml", "wrongkeys-a1") is None and cluster.get(RAYJOBS, "ml", "nodata-a1") is None


def test_failed_attempt_restarts_from_the_checkpoint(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread, tmp_path: Path
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "flaky", runPolicy={"maxRestarts": 1}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "flaky-a1"))
    write_progress(
        cluster,
        s3,
        "flaky",
        "running",
        progress=TrainingProgress(step=10, total_steps=30),
        checkpoint=CheckpointRef(step=10, uri="s3://x/step-00000010/", time="t", attempt=1),
    )
    set_rayjob_status(cluster, "flaky-a1", "Running", "RUNNING")
    wait_for(phase_is(cluster, "flaky", "Running"))
    driver_log, head_log = tmp_path / "driver.log", tmp_path / "head.log"
    driver_log.write_text("Traceback (most recent call last):\nRuntimeError: worker node lost\n")
    head_log.write_text("".join(f"head line {i:05d}\n" for i in range(1000)))  # 16 kB, over the 4 kB cap
    add_pod(cluster, "flaky-a1", "flaky-a1-sub12", {"batch.kubernetes.io/job-name": "flaky-a1"}, driver_log)
    head = {"cpt.dev/job": "flaky", "cpt.dev/attempt": "1", "ray.io/node-type": "head"}
    add_pod(cluster, "flaky-a1", "flaky-a1-rc-head-x1", head, head_log)
    set_rayjob_status(cluster, "flaky-a1", "Failed", "FAILED", reason="AppFailed", message="worker node lost")
    st = wait_for(lambda: status(cluster, "flaky").get("attempt") == 2 and status(cluster, "flaky"), what="attempt 2")
    assert st["restarts"] == 1 and st["rayJobName"] == "flaky-a2"
    # The failed attempt's evidence: its pods' logs copied (the head's cut to its last 4 kB, marked). Its RayJob
    # goes (a restart follows: its cluster's GPUs are for attempt 2).
    where = "runs/flaky/logs/attempt-1/"
    assert st["logsUri"] == f"s3://{s3.bucket}/runs/flaky/logs/"
    assert "RuntimeError: worker node lost" in s3_text(s3, where + "driver-flaky-a1-sub12-c.log")
    head_copy = s3_text(s3, where + "head-flaky-a1-rc-head-x1-c.log")
    assert head_copy.startswith("[cpt-operator: log truncated: the first ") and head_copy.endswith("head line 00999\n")
    assert len(head_copy.encode()) < 4096 + 200
    assert json.loads(s3_text(s3, where + "rayjob-status.json"))["status"]["message"] == "worker node lost"
    assert not st.get("keptRayJobs")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "flaky-a1") is None, what="attempt 1's RayJob deleted")
    copied = next(e for e in cluster.list(EVENTS, "ml") if e["reason"] == "LogsCopied")
    assert f"copied to s3://{s3.bucket}/{where}" in copied["message"] and "1 driver, 1 head" in copied["message"]
    assert cluster.get(RAYJOBS, "ml", "flaky-a2")["spec"]["entrypoint"].startswith(
        "cpt train /etc/cpt/job.yaml --attempt 2"
    )
    warnings = [r for t, r in events_for(cluster, "flaky") if t == "Warning"]
    assert "AttemptFailed" in warnings
    event = next(
        e
        for e in cluster.list(EVENTS, "ml")
        if e["reason"] == "AttemptFailed" and e["involvedObject"]["name"] == "flaky"
    )
    assert "worker node lost" in event["message"]
    assert "resumes from the last committed checkpoint (step 10 or later)" in event["message"]
    # Attempt 1's progress (step 10) is never shown as attempt 2's.
    assert status(cluster, "flaky").get("progress", {}).get("step") in (None, 10)

    set_rayjob_status(cluster, "flaky-a2", "Failed", "FAILED", reason="AppFailed", message="again")
    st = wait_for(phase_is(cluster, "flaky", "Failed"), what="Failed after maxRestarts")
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Failed"] == "RestartLimitReached"
    assert [k["name"] for k in st["keptRayJobs"]] == ["flaky-a2"]  # the last attempt: kept for the TTL (1 h)
    assert cluster.get(RAYJOBS, "ml", "flaky-a2") is not None
    assert ("Warning", "LogsNotCopied") in events_for(cluster, "flaky")  # attempt 2 had no pods to copy from


def test_a_kept_rayjob_goes_when_its_ttl_ends_even_after_the_job_failed(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "brief", runPolicy={"maxRestarts": 0, "ttlSecondsAfterFinished": 2}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "brief-a1"))
    set_rayjob_status(cluster, "brief-a1", "Failed", "FAILED", reason="AppFailed", message="boom")
    st = wait_for(phase_is(cluster, "brief", "Failed"), what="Failed")
    assert [k["name"] for k in st["keptRayJobs"]] == ["brief-a1"]
    assert cluster.get(RAYJOBS, "ml", "brief-a1") is not None
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "brief-a1") is None, timeout=15, what="the kept RayJob deleted")
    wait_for(lambda: status(cluster, "brief").get("keptRayJobs") in (None, []), what="keptRayJobs emptied")


def test_suspend_deletes_the_cluster_and_unsuspend_resumes(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "pausable"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "pausable-a1"))
    cluster.patch(CPTJOBS, "ml", "pausable", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(phase_is(cluster, "pausable", "Suspended"), what="Suspended")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "pausable-a1") is None, what="RayJob deleted")
    cluster.patch(CPTJOBS, "ml", "pausable", {"spec": {"runPolicy": {"suspend": False}}})
    st = wait_for(lambda: status(cluster, "pausable").get("attempt") == 2 and status(cluster, "pausable"))
    assert st["restarts"] == 0  # suspension is not a failure
    assert cluster.get(RAYJOBS, "ml", "pausable-a2") is not None


def test_delete_garbage_collects_children_and_keeps_s3_data(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "doomed"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "doomed-a1"))
    write_progress(cluster, s3, "doomed", "running")
    cluster.delete(CPTJOBS, "ml", "doomed")
    wait_for(
        lambda: (
            cluster.get(RAYJOBS, "ml", "doomed-a1") is None and cluster.get(CONFIGMAPS, "ml", "doomed-spec") is None
        ),
        what="children garbage-collected",
    )
    body = s3.client().get_object(Bucket=s3.bucket, Key="runs/doomed/_status/progress.json")["Body"].read()
    assert json.loads(body)["job"] == "doomed"


def test_running_fields_are_immutable_through_the_api(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    import kmock

    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "frozen"))
    with pytest.raises(kmock.KubernetesError) as info:
        cluster.patch(CPTJOBS, "ml", "frozen", {"spec": {"model": {"source": "/elsewhere"}}})
    assert info.value.status == 422 and "spec.model is immutable" in str(info.value.message)
    cluster.patch(CPTJOBS, "ml", "frozen", {"spec": {"runPolicy": {"maxRestarts": 9}}})  # operational: allowed


def test_operator_calls_only_what_the_chart_grants(cluster: EmulatorThread, operator: OperatorThread) -> None:
    """Runs last in this module. The emulator recorded every HTTP call (the tests' own set-up bypasses
    HTTP): each one the operator made, kopf's included, is declared in API_CALLS and granted by the chart."""
    from cpt_operator.controller.io.kube import API_CALLS

    from devkit.chart import granted

    made = cluster.emulator.requests_seen
    assert {("ray.io", "rayjobs", "create"), ("cpt.dev", "cptjobs", "watch")} <= made
    assert made <= API_CALLS, sorted(made - API_CALLS)
    allowed = granted(cluster_wide=True)
    assert all(allowed(call) for call in API_CALLS), [c for c in API_CALLS if not allowed(c)]
