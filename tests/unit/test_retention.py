"""An ended attempt's RayJob: its logs copied first, then deleted -- or, for a job's last attempt, kept for
runPolicy.ttlSecondsAfterFinished (pure part)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob, CPTJobStatus, KeptRayJob, Phase
from cpt_operator.controller.io.evidence import PodLog, role_of, truncation_marker
from cpt_operator.controller.lifecycle.conditions import current_rayjob_name
from cpt_operator.controller.lifecycle.decision import CreateAttempt, DeleteRayJob, Observed, PreflightResult
from cpt_operator.controller.lifecycle.reconcile import reconcile

from devkit.jobs import tiny_job

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)


def job(phase: Phase, attempt: int = 1, ttl: int = 3600, suspend: bool = False, **status: Any) -> CPTJob:
    j = tiny_job(
        metadata={"name": "legal", "namespace": "ml", "uid": "u-1", "generation": 1},
        spec={
            "runPolicy": {"maxRestarts": 2, "ttlSecondsAfterFinished": ttl, "suspend": suspend},
            "checkpoint": {"uri": "s3://bucket/runs/legal/"},
        },
    )
    j.status = CPTJobStatus(phase=phase, attempt=attempt, ray_job_name=f"legal-a{attempt}", **status)
    return j


def failed_rayjob(name: str = "legal-a1") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": "r-1"},
        "status": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"},
    }


def test_a_failed_attempt_that_restarts_goes_with_its_logs_copied_first() -> None:
    decision = reconcile(job(Phase.Running), Observed(failed_rayjob(), now=NOW))
    assert decision.status.phase == Phase.Restarting
    assert decision.actions == [DeleteRayJob("legal-a1", "r-1", logs_of=1, keep=False)]
    assert decision.status.logs_uri == "s3://bucket/runs/legal/logs/"
    assert decision.status.kept_ray_jobs == []  # its cluster's GPUs are for the next attempt


def test_the_last_failed_attempt_is_kept_for_the_ttl_with_its_logs_copied_first() -> None:
    last = job(Phase.Running, attempt=3, restarts=2)  # maxRestarts 2 used: this failure is final
    decision = reconcile(last, Observed(failed_rayjob("legal-a3"), now=NOW))
    assert decision.status.phase == Phase.Failed
    assert decision.actions == [DeleteRayJob("legal-a3", "r-1", logs_of=3, keep=True)]
    assert decision.status.kept_ray_jobs == [
        KeptRayJob(name="legal-a3", uid="r-1", delete_after="2026-11-27T13:00:00Z")
    ]
    # The kept RayJob is no longer the one observed.
    assert current_rayjob_name(decision.status) is None


def test_a_kept_rayjob_does_not_stop_a_new_attempt_beside_it() -> None:
    kept = [KeptRayJob(name="legal-a1", uid="r-1", delete_after="2026-11-27T13:00:00Z")]
    nxt = job(Phase.Restarting, **{"kept_ray_jobs": kept, "restarts": 1})
    launched = reconcile(nxt, Observed(None, preflight=PreflightResult(True), now=NOW + dt.timedelta(seconds=5)))
    assert launched.actions == [CreateAttempt(2)] and launched.status.ray_job_name == "legal-a2"
    assert current_rayjob_name(launched.status) == "legal-a2"


def test_a_kept_rayjob_is_deleted_when_its_time_is_up() -> None:
    kept = [KeptRayJob(name="legal-a1", uid="r-1", delete_after="2026-11-27T12:30:00Z")]
    early = reconcile(job(Phase.Running, 2, kept_ray_jobs=list(kept)), Observed(None, now=NOW))
    assert not any(isinstance(a, DeleteRayJob) for a in early.actions) and early.status.kept_ray_jobs == kept
    late = reconcile(
        job(Phase.Running, 2, kept_ray_jobs=list(kept)), Observed(None, now=NOW + dt.timedelta(minutes=31))
    )
    assert DeleteRayJob("legal-a1", "r-1") in late.actions and late.status.kept_ray_jobs == []


def test_without_a_ttl_even_the_last_attempt_goes_at_once_after_the_copy() -> None:
    last = job(Phase.Running, attempt=3, ttl=0, restarts=2)
    decision = reconcile(last, Observed(failed_rayjob("legal-a3"), now=NOW))
    assert decision.status.phase == Phase.Failed
    assert decision.actions == [DeleteRayJob("legal-a3", "r-1", logs_of=3, keep=False)]
    assert decision.status.kept_ray_jobs == []


def test_suspension_copies_the_logs_and_frees_every_cluster() -> None:
    kept = [KeptRayJob(name="legal-a1", uid="r-1", delete_after="2026-11-27T13:00:00Z")]
    running = {"metadata": {"name": "legal-a2", "uid": "r-2"}, "status": {"jobDeploymentStatus": "Running"}}
    decision = reconcile(job(Phase.Running, 2, suspend=True, kept_ray_jobs=kept), Observed(running, now=NOW))
    assert decision.status.phase == Phase.Suspended
    assert DeleteRayJob("legal-a1", "r-1") in decision.actions
    assert DeleteRayJob("legal-a2", "r-2", logs_of=2, keep=False) in decision.actions


def test_pods_are_told_apart_as_kuberay_labels_them() -> None:
    assert role_of({"metadata": {"labels": {"batch.kubernetes.io/job-name": "legal-a1"}}}) == "driver"
    assert role_of({"metadata": {"labels": {"ray.io/node-type": "head"}}}) == "head"
    assert role_of({"metadata": {"labels": {"ray.io/node-type": "worker"}}}) == "worker"
    assert PodLog("head", "legal-a1-x-head-abcde", "ray-head").file == "head-legal-a1-x-head-abcde-ray-head.log"
    assert b"first 10 bytes were dropped" in truncation_marker(10, 5)
