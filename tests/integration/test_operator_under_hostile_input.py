"""The operator against an adversarial user and hanging storage, with real components only.

Invalid updates, S3 endpoints that never answer, a job re-applied over its predecessor's run, leftover
objects of another incarnation, a Secret with a binary value, progress files that lie or are damaged,
and a damaged status field: each is refused by the API server or reported on the job it concerns (a
condition, one event), costs only that job, and never stops the operator.

The real operator (kopf, in a thread) against the faithful Kubernetes API emulator, SeaweedFS, and
real TCP endpoints that hang (`devkit.faulty_endpoint`), with short S3 timeouts (1 s).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from cpt_core.api.progress import Progress, TrainingProgress
from cpt_core.api.v1alpha1.status import CheckpointRef
from cpt_core.validation.validate import parse_job
from cpt_operator.controller.build.manifests import build_rayjob

from devkit.cluster import cluster_job, create_secret, wait_for
from devkit.faulty_endpoint import FaultyEndpoint
from devkit.k8s_emulator import CONFIGMAPS, CPTJOBS, RAYJOBS, SECRETS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_checks import (
    condition_is,
    conditions,
    events,
    phase_is,
    reasons,
    set_rayjob_status,
    status,
    write_progress,
    write_raw_progress,
)
from tests.support.operator_runner import OperatorFactory, OperatorThread

# Short S3 timeouts, few attempts and a small bulkhead per endpoint: a hanging endpoint shows within seconds.
STORAGE_LIMITS = {
    "s3_connect_timeout_seconds": 1,
    "s3_read_timeout_seconds": 1,
    "s3_max_attempts": 2,
    "storage_calls_per_endpoint": 2,
    "storage_breaker_seconds": 3,
    "storage_deadline_seconds": 10,
}


@pytest.fixture(scope="module")
def operator(cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory) -> OperatorThread:
    create_secret(cluster, s3)
    return operator_factory(**STORAGE_LIMITS)


@pytest.fixture
def black_hole() -> Iterator[FaultyEndpoint]:
    with FaultyEndpoint() as endpoint:
        yield endpoint


def start_running(cluster: EmulatorThread, s3: SeaweedS3, name: str, **spec: Any) -> dict[str, Any]:
    """Create `name` and drive it to Running at step 12 (RayJob running, the trainer reporting)."""
    cluster.create(CPTJOBS, cluster_job(s3, name, **spec))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", f"{name}-a1"), what=f"RayJob {name}-a1")
    set_rayjob_status(cluster, f"{name}-a1", "Running", "RUNNING")
    write_progress(cluster, s3, name, "running", progress=TrainingProgress(step=12, total_steps=30, tokens=12288))
    return wait_for(phase_is(cluster, name, "Running"), what=f"{name} Running")


def step_of(cluster: EmulatorThread, name: str) -> Any:
    return status(cluster, name).get("progress", {}).get("step")


def stays(check: Any, seconds: float) -> None:
    """`check()` holds for `seconds` (several polls of the operator)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), check
        time.sleep(0.1)


# -- an invalid update: refused by the API server, or it stops the attempt until it is fixed -------


def test_an_endpoint_without_scheme_is_rejected_by_the_api_server(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "noscheme")
    with pytest.raises(kmock.KubernetesError) as info:
        cluster.patch(CPTJOBS, "ml", "noscheme", {"spec": {"storage": {"endpoint": "minio:9000"}}})
    assert info.value.status == 422 and "spec.storage.endpoint: must be an http:// or https:// URL" in str(
        info.value.message
    )
    stays(lambda: status(cluster, "noscheme")["phase"] == "Running", 1.5)
    assert cluster.get(RAYJOBS, "ml", "noscheme-a1") is not None


def test_an_invalid_update_stops_the_attempt_and_a_fix_resumes_the_job(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "midway")
    marker = "runs/midway/step-00000010/COMMITTED"
    s3.client().put_object(Bucket=s3.bucket, Key=marker, Body=b"{}")
    # Credentials inline in deepspeed.config: no CRD rule can see keys of a free-form map, the models can.
    cluster.patch(CPTJOBS, "ml", "midway", {"spec": {"deepspeed": {"config": {"password": "hunter2"}}}})
    st = wait_for(phase_is(cluster, "midway", "Failed"), what="Failed/InvalidSpec")
    failed = conditions(cluster, "midway")["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "InvalidSpec"
    assert "spec.deepspeed.config.password" in failed["message"] and "credentialsSecret" in failed["message"]
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "midway-a1") is None, what="the RayJob torn down")
    assert {conditions(cluster, "midway")[c]["status"] for c in ("Training", "ClusterReady", "Validated")} == {"False"}
    assert s3.client().get_object(Bucket=s3.bucket, Key=marker)["Body"].read() == b"{}"  # checkpoints kept
    assert "hunter2" not in json.dumps(st) + json.dumps(events(cluster, "midway"))

    cluster.patch(CPTJOBS, "ml", "midway", {"spec": {"deepspeed": {"config": {"password": None}}}})
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "midway-a2"), what="a new attempt after the fix")
    st = wait_for(phase_is(cluster, "midway", "Preparing"), what="Preparing")
    assert st["attempt"] == 2 and st["restarts"] == 0 and "completionTime" not in st
    assert conditions(cluster, "midway")["Failed"]["status"] == "False"
    assert reasons(cluster, "midway").count("InvalidSpec") == 1
    assert reasons(cluster, "midway").count("SpecCorrected") == 1


# -- hanging S3 endpoints: they cost only their own jobs, one connection each ----------------------


def test_hanging_endpoints_cost_only_their_own_jobs(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread, black_hole: FaultyEndpoint
) -> None:
    hanging = [f"hang-{i}" for i in range(8)]
    for name in hanging:
        cluster.create(CPTJOBS, cluster_job(s3, name, storage={"endpoint": black_hole.url}))
    wait_for(lambda: black_hole.connections > 0, what="the operator to reach the hanging endpoint")
    started = time.monotonic()
    cluster.create(CPTJOBS, cluster_job(s3, "healthy"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "healthy-a1"), timeout=15, what="the healthy job's RayJob")
    assert time.monotonic() - started < 10
    for name in hanging:
        c = wait_for(condition_is(cluster, name, "StorageReady", "False", "StorageUnreachable"), timeout=30)
        assert black_hole.url in c["message"], c["message"]
        assert cluster.get(RAYJOBS, "ml", f"{name}-a1") is None
    assert "did not answer within 1 s (connect) / 1 s (read), 2 attempt(s)" in " ".join(
        conditions(cluster, n)["StorageReady"]["message"] for n in hanging
    )
    assert black_hole.peak <= operator.settings.storage_calls_per_endpoint, black_hole.peak  # a bulkhead, not 8 threads
    for name in hanging:  # one warning each, not one per retry (events are posted asynchronously)
        wait_for(lambda n=name: "StorageUnreachable" in reasons(cluster, n), what=f"{name}'s warning event")
    time.sleep(1)
    for name in hanging:
        assert reasons(cluster, name).count("StorageUnreachable") == 1, reasons(cluster, name)
        cluster.delete(CPTJOBS, "ml", name)


def test_one_hanging_job_holds_one_connection(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread, black_hole: FaultyEndpoint
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "lonely", storage={"endpoint": black_hole.url}))
    wait_for(condition_is(cluster, "lonely", "StorageReady", "False", "StorageUnreachable"), timeout=30)
    time.sleep(2)  # timer and change handlers keep firing meanwhile
    assert black_hole.peak == 1, black_hole.peak
    cluster.delete(CPTJOBS, "ml", "lonely")


# -- a re-applied job and its predecessor's progress -----------------------------------------------


def test_a_reapplied_job_ignores_its_predecessors_progress(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    # What a deleted incarnation of "again" left behind: attempt 1 failed on NaN at step 10.
    predecessor = Progress(
        job="again",
        uid="0b501e7e-dead-4bad-8bad-000000000001",
        attempt=1,
        state="failed",
        reason="NonFiniteLoss",
        message="loss is NaN",
        progress=TrainingProgress(step=10, total_steps=30),
        checkpoint=CheckpointRef(step=10, uri=f"s3://{s3.bucket}/runs/again/step-00000010/", attempt=1),
    )
    write_raw_progress(s3, "again", predecessor.to_json())
    cluster.create(CPTJOBS, cluster_job(s3, "again", runPolicy={"maxRestarts": 2}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "again-a1"), what="RayJob again-a1")
    stays(lambda: "progress" not in status(cluster, "again") and "checkpoint" not in status(cluster, "again"), 1.5)
    set_rayjob_status(cluster, "again-a1", "Failed", "FAILED", reason="AppFailed", message="node lost")
    st = wait_for(lambda: status(cluster, "again").get("attempt") == 2 and status(cluster, "again"), what="attempt 2")
    assert st["phase"] != "Failed" and st["restarts"] == 1
    assert "NonFiniteLoss" not in json.dumps(st)


# -- leftover children of another incarnation: neither adopted, nor deleted, nor overwritten -------


def test_a_foreign_rayjob_is_neither_adopted_nor_deleted(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    doc = cluster_job(s3, "leftover", runPolicy={"maxRestarts": 0})
    old = parse_job({**doc, "metadata": {**doc["metadata"], "uid": "0b501e7e-dead-4bad-8bad-000000000002"}})
    cluster.create(RAYJOBS, build_rayjob(old, 1, operator.settings))
    set_rayjob_status(cluster, "leftover-a1", "Failed", "FAILED", reason="AppFailed", message="old failure")
    cluster.create(CPTJOBS, doc)
    c = wait_for(condition_is(cluster, "leftover", "ClusterReady", "False", "ForeignObject"), what="ForeignObject")
    assert "kubectl -n ml delete rayjobs leftover-a1" in c["message"] and "0b501e7e-dead" in c["message"]
    stays(lambda: status(cluster, "leftover")["phase"] == "Pending", 2)
    foreign = cluster.get(RAYJOBS, "ml", "leftover-a1")
    assert foreign is not None and foreign["metadata"]["ownerReferences"][0]["uid"].startswith("0b501e7e-dead")
    assert reasons(cluster, "leftover").count("ForeignObject") == 1, reasons(cluster, "leftover")

    cluster.delete(RAYJOBS, "ml", "leftover-a1")  # the user removes the leftover: the job proceeds
    uid = cluster.get(CPTJOBS, "ml", "leftover")["metadata"]["uid"]
    wait_for(
        lambda: (
            (cluster.get(RAYJOBS, "ml", "leftover-a1") or {})
            .get("metadata", {})
            .get("ownerReferences", [{}])[0]
            .get("uid")
            == uid
        ),
        what="its own RayJob",
    )
    assert wait_for(phase_is(cluster, "leftover", "Preparing"))["restarts"] == 0


def test_a_foreign_configmap_is_not_overwritten(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(
        CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "squat-spec", "namespace": "ml"},
            "data": {"a": "b"},
        },
    )
    cluster.create(CPTJOBS, cluster_job(s3, "squat"))
    wait_for(condition_is(cluster, "squat", "ClusterReady", "False", "ForeignObject"), what="ForeignObject")
    assert cluster.get(CONFIGMAPS, "ml", "squat-spec")["data"] == {"a": "b"}
    assert cluster.get(RAYJOBS, "ml", "squat-a1") is None


# -- a Secret with a binary value ------------------------------------------------------------------


def test_a_secret_with_a_binary_value_works(cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread) -> None:
    der = bytes([0x30, 0x82, 0x01, 0x0A, 0xFF, 0xFE, 0x00, 0x9C])  # not UTF-8
    data = {"AWS_ACCESS_KEY_ID": s3.access_key.encode(), "AWS_SECRET_ACCESS_KEY": s3.secret_key.encode(), "ca.der": der}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "with-cert", "namespace": "ml"},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    cluster.create(SECRETS, secret)
    cluster.create(CPTJOBS, cluster_job(s3, "certified", secret="with-cert"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "certified-a1"), what="RayJob despite a binary key")

    secret["metadata"]["name"] = "binary-key"
    secret["data"]["AWS_SECRET_ACCESS_KEY"] = base64.b64encode(der).decode()
    cluster.create(SECRETS, secret)
    cluster.create(CPTJOBS, cluster_job(s3, "garbled", secret="binary-key"))
    c = wait_for(condition_is(cluster, "garbled", "StorageReady", "False", "SecretNotFound"))
    assert "AWS_SECRET_ACCESS_KEY is not UTF-8 text" in c["message"]


# -- what the progress file says: another job's, absurd, shrinking, unreadable ---------------------


def test_progress_of_another_job_is_not_mirrored(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "mine")
    write_progress(cluster, s3, "mine", "running", job="theirs", progress=TrainingProgress(step=25, total_steps=30))
    c = wait_for(condition_is(cluster, "mine", "ProgressIgnored", "True", "ProgressForeign"))
    assert "written by job 'theirs'" in c["message"]
    stays(lambda: step_of(cluster, "mine") == 12 and status(cluster, "mine")["phase"] == "Running", 1.5)


def test_absurd_progress_values_never_reach_the_status(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "absurd")
    uid = cluster.get(CPTJOBS, "ml", "absurd")["metadata"]["uid"]
    head = f'{{"job": "absurd", "uid": "{uid}", "attempt": 1, "state": "running", '
    write_raw_progress(s3, "absurd", head + '"progress": {"step": 14, "totalSteps": 30, "loss": NaN, "lr": Infinity}}')
    wait_for(lambda: step_of(cluster, "absurd") == 14, what="step 14")
    st = status(cluster, "absurd")
    assert "loss" not in st["progress"] and "lr" not in st["progress"]
    json.dumps(cluster.get(CPTJOBS, "ml", "absurd"), allow_nan=False)  # what a real API server would accept

    for body, says in (
        ('"progress": {"step": 40, "totalSteps": 30}}', "step 40 is beyond totalSteps 30"),
        ('"progress": {"step": 15, "tokens": -5}}', "progress.tokens: Input should be greater than or equal to 0"),
    ):
        write_raw_progress(s3, "absurd", head + body)
        ignored = condition_is(cluster, "absurd", "ProgressIgnored", "True", "ProgressUnreadable")
        wait_for(lambda s=says, check=ignored: (c := check()) and s in c["message"], what=says)  # type: ignore[misc]
        stays(lambda: step_of(cluster, "absurd") == 14 and status(cluster, "absurd")["phase"] == "Running", 1)


def test_fields_that_disappear_from_progress_disappear_from_status(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "stale")
    write_progress(cluster, s3, "stale", "running", progress=TrainingProgress(step=13, total_steps=30, lr=1e-3))
    wait_for(lambda: status(cluster, "stale").get("progress", {}).get("lr") == 1e-3, what="lr mirrored")
    write_progress(cluster, s3, "stale", "running", progress=TrainingProgress(step=14, total_steps=30))
    wait_for(lambda: step_of(cluster, "stale") == 14, what="step 14")
    assert "lr" not in status(cluster, "stale")["progress"]


def test_unreadable_progress_never_flips_running_to_preparing(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    host, port = s3.endpoint.removeprefix("http://").split(":")
    with FaultyEndpoint(target=(host, int(port))) as proxy:
        start_running(cluster, s3, "steady", storage={"endpoint": proxy.url})
        write_raw_progress(s3, "steady", '{"job": "steady", "attempt": 1, "state": "runn')  # torn or damaged
        wait_for(condition_is(cluster, "steady", "ProgressIgnored", "True", "ProgressUnreadable"))
        stays(lambda: status(cluster, "steady")["phase"] == "Running", 1)

        proxy.hang()  # S3 stops answering: a transient read failure
        c = wait_for(condition_is(cluster, "steady", "ProgressIgnored", "True", "ProgressUnavailable"), timeout=30)
        assert proxy.url in c["message"]
        stays(lambda: status(cluster, "steady")["phase"] == "Running", 1)

        proxy.heal()
        write_progress(cluster, s3, "steady", "running", progress=TrainingProgress(step=20, total_steps=30))
        wait_for(lambda: step_of(cluster, "steady") == 20, timeout=30, what="step 20 after S3 healed")
        assert conditions(cluster, "steady")["ProgressIgnored"]["status"] == "False"
    seen = reasons(cluster, "steady")
    assert "Preparing" not in seen[seen.index("Running") :], seen
    assert seen.count("Running") == 1, seen


# -- one reconcile per job: one event per transition -----------------------------------------------


def test_each_transition_yields_exactly_one_event(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    start_running(cluster, s3, "once")
    write_progress(cluster, s3, "once", "succeeded", progress=TrainingProgress(step=30, total_steps=30))
    set_rayjob_status(cluster, "once-a1", "Complete", "SUCCEEDED")
    wait_for(phase_is(cluster, "once", "Succeeded"))
    time.sleep(1.5)  # later polls add nothing
    warnings = status(cluster, "once")["warnings"]
    assert len(warnings) == 2  # a high learning rate and a short run: one event each
    assert [e["message"] for e in events(cluster, "once") if e["reason"] == "RecommendedPractice"] == warnings
    assert reasons(cluster, "once") == [
        "RecommendedPractice",
        "RecommendedPractice",
        "Pending",
        "AttemptStarted",
        "Preparing",
        "Running",
        "Succeeded",
    ]


# -- a damaged status field, a missing bucket ------------------------------------------------------


def test_a_damaged_status_field_is_reset_not_fatal(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "damaged", secret="arrives-later"))
    wait_for(condition_is(cluster, "damaged", "StorageReady", "False", "SecretNotFound"))
    cluster.patch(CPTJOBS, "ml", "damaged", {"status": {"nextPreflightTime": "next tuesday"}}, subresource="status")
    create_secret(cluster, s3, name="arrives-later")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "damaged-a1"), what="RayJob despite the damaged field")
    assert status(cluster, "damaged").get("nextPreflightTime") != "next tuesday"


def test_a_missing_bucket_is_named_as_such(cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread) -> None:
    job = cluster_job(s3, "nobucket")
    job["spec"]["data"]["sources"][0]["uris"] = ["s3://no-such-bucket/legal/"]
    cluster.create(CPTJOBS, job)
    c = wait_for(condition_is(cluster, "nobucket", "StorageReady", "False", "BucketUnreachable"))
    assert "bucket 'no-such-bucket' does not exist" in c["message"] and "no such object" not in c["message"]
