"""The lifecycle state machine, table-driven: phase x RayJob status x progress state."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pytest
from cpt_core.api.progress import Progress, TrainingProgress
from cpt_core.api.v1alpha1 import CPTJob, CPTJobStatus, Phase
from cpt_core.api.v1alpha1.status import (
    CheckpointRef,
    EvalResult,
    EvaluationStatus,
    OutputStatus,
    ProbeScores,
    StageStatus,
)
from cpt_core.contract.reasons import Reason
from cpt_operator.controller.lifecycle.conditions import needs_preflight, preflight_backoff
from cpt_operator.controller.lifecycle.decision import CreateAttempt, DeleteRayJob, Observed, PreflightResult
from cpt_operator.controller.lifecycle.reconcile import reconcile

from devkit.jobs import tiny_job

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
OK = PreflightResult(True)


def job(
    phase: Phase | None = None,
    attempt: int = 0,
    restarts: int = 0,
    suspend: bool = False,
    max_restarts: int = 2,
    **status: Any,
) -> CPTJob:
    j = tiny_job(
        metadata={"name": "legal", "namespace": "ml", "uid": "u-1", "generation": 3},
        spec={"runPolicy": {"suspend": suspend, "maxRestarts": max_restarts}},
    )
    j.status = CPTJobStatus(
        phase=phase, attempt=attempt, restarts=restarts, ray_job_name=f"legal-a{attempt}" if attempt else None, **status
    )
    return j


def rayjob(
    deployment: str = "Running", job_status: str = "RUNNING", name: str = "legal-a1", **extra: Any
) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"jobDeploymentStatus": deployment, "jobStatus": job_status, **extra}}


def progress(state: str = "running", attempt: int = 1, **extra: Any) -> Progress:
    training = TrainingProgress(
        step=extra.pop("step", 12),
        total_steps=30,
        tokens=12288,
        loss=3.2,
        tokens_per_second=extra.pop("tokens_per_second", None),
        eta_seconds=extra.pop("eta_seconds", None),
        updated_at="2026-11-27T12:00:00Z",
    )
    if "model_uri" in extra:
        extra["output"] = OutputStatus(model_uri=extra.pop("model_uri"))
    return Progress(job="legal", uid="u-1", attempt=attempt, state=state, progress=training, **extra)  # type: ignore[arg-type]


@dataclass
class Case:
    name: str
    job: CPTJob
    observed: Observed
    phase: Phase | None
    actions: list[Any] = field(default_factory=list)
    event_reasons: list[str] = field(default_factory=list)
    attempt: int | None = None
    restarts: int | None = None


CHECKPOINTED = {"checkpoint": {"step": 10, "uri": "s3://b/run/step-00000010/"}}

CASES = [
    Case("new job waits for preflight", job(), Observed(now=NOW), Phase.Pending, event_reasons=["Pending"]),
    Case(
        "preflight fails",
        job(Phase.Pending),
        Observed(preflight=PreflightResult(False, Reason.SecretNotFound, "no secret"), now=NOW),
        Phase.Pending,
        event_reasons=["SecretNotFound"],
    ),
    Case(
        "preflight ok launches attempt 1",
        job(Phase.Pending),
        Observed(preflight=OK, now=NOW),
        Phase.Preparing,
        [CreateAttempt(1)],
        ["AttemptStarted", "Preparing"],
        attempt=1,
    ),
    Case("cluster starting", job(Phase.Preparing, 1), Observed(rayjob("Initializing", ""), now=NOW), Phase.Preparing),
    Case(
        "data preparing", job(Phase.Preparing, 1), Observed(rayjob(), progress("preparing"), now=NOW), Phase.Preparing
    ),
    Case(
        "training",
        job(Phase.Preparing, 1),
        Observed(rayjob(), progress(), now=NOW),
        Phase.Running,
        event_reasons=["Running"],
    ),
    Case(
        "succeeded",
        job(Phase.Running, 1),
        Observed(rayjob("Complete", "SUCCEEDED"), progress("succeeded", model_uri="s3://b/run/final/"), now=NOW),
        Phase.Succeeded,
        event_reasons=["Succeeded"],
    ),
    Case(
        "crash restarts from checkpoint",
        job(Phase.Running, 1, **CHECKPOINTED),
        Observed(rayjob("Failed", "FAILED"), progress(), now=NOW),
        Phase.Restarting,
        [DeleteRayJob("legal-a1", logs_of=1, keep=False)],  # logs copied, then it goes: GPUs for attempt 2
        ["AttemptFailed", "Restarting"],
        attempt=1,
        restarts=1,
    ),
    Case(
        "restart launches the next attempt",
        job(Phase.Restarting, 1, restarts=1),
        Observed(None, progress(), OK, now=NOW),
        Phase.Preparing,
        [CreateAttempt(2)],
        ["AttemptStarted", "Preparing"],
        attempt=2,
        restarts=1,
    ),
    Case(
        "restart limit",
        job(Phase.Running, 3, restarts=2),
        Observed(rayjob("Failed", "FAILED", name="legal-a3"), progress(attempt=3), now=NOW),
        Phase.Failed,
        [DeleteRayJob("legal-a3", logs_of=3, keep=True)],
        ["Failed"],
        restarts=2,
    ),
    Case(
        "non-finite loss is terminal",
        job(Phase.Running, 1),
        Observed(rayjob("Failed", "FAILED"), progress("failed", reason="NonFiniteLoss", message="NaN"), now=NOW),
        Phase.Failed,
        [DeleteRayJob("legal-a1", logs_of=1, keep=True)],
        ["Failed"],
        restarts=0,
    ),
    Case(
        "an interrupted attempt (SIGTERM: eviction, preemption) restarts",
        job(Phase.Running, 1, **CHECKPOINTED),
        Observed(
            rayjob("Failed", "FAILED"),
            progress("interrupted", reason="Interrupted", message="interrupted by SIGTERM after step 7"),
            now=NOW,
        ),
        Phase.Restarting,
        [DeleteRayJob("legal-a1", logs_of=1, keep=False)],  # logs copied, then it goes: GPUs for attempt 2
        ["AttemptFailed", "Restarting"],
        restarts=1,
    ),
    Case(
        "an interrupted attempt whose RayJob completed restarts too",
        job(Phase.Running, 1, **CHECKPOINTED),
        Observed(rayjob("Complete", "SUCCEEDED"), progress("interrupted", reason="Interrupted"), now=NOW),
        Phase.Restarting,
        [DeleteRayJob("legal-a1", logs_of=1, keep=False)],  # logs copied, then it goes: GPUs for attempt 2
        ["AttemptFailed", "Restarting"],
        restarts=1,
    ),
    Case(
        "forgetting stop is terminal",
        job(Phase.Running, 1),
        Observed(rayjob("Complete", "SUCCEEDED"), progress("stopped", reason="ForgettingDetected"), now=NOW),
        Phase.Failed,
        [DeleteRayJob("legal-a1", logs_of=1, keep=True)],
        ["Failed"],
    ),
    Case(
        "deadline exceeded is terminal",
        job(Phase.Running, 1),
        Observed(rayjob("Failed", "FAILED", reason="DeadlineExceeded"), None, now=NOW),
        Phase.Failed,
        [DeleteRayJob("legal-a1", logs_of=1, keep=True)],
        ["Failed"],
    ),
    Case(
        "vanished RayJob restarts",
        job(Phase.Running, 1),
        Observed(None, progress(), now=NOW),
        Phase.Restarting,
        [],
        ["AttemptFailed", "Restarting"],
        restarts=1,
    ),
    Case(
        "suspend deletes the cluster",
        job(Phase.Running, 1, suspend=True),
        Observed(rayjob(), progress(), now=NOW),
        Phase.Suspended,
        [DeleteRayJob("legal-a1", logs_of=1)],
        ["Suspended"],
    ),
    Case(
        "suspended stays suspended",
        job(Phase.Suspended, 1, suspend=True),
        Observed(None, None, now=NOW),
        Phase.Suspended,
    ),
    Case(
        "unsuspend resumes with a new attempt",
        job(Phase.Suspended, 1, **CHECKPOINTED),
        Observed(None, None, OK, now=NOW),
        Phase.Preparing,
        [CreateAttempt(2)],
        ["Resumed", "AttemptStarted", "Preparing"],
        attempt=2,
        restarts=0,
    ),
    Case(
        "terminal stays terminal",
        job(Phase.Succeeded, 1),
        Observed(rayjob("Complete", "SUCCEEDED"), progress("succeeded"), OK, now=NOW),
        Phase.Succeeded,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_transitions(case: Case) -> None:
    decision = reconcile(case.job, case.observed)
    assert decision.status.phase == case.phase
    assert decision.actions == case.actions
    assert [e.reason for e in decision.events] == case.event_reasons
    if case.attempt is not None:
        assert decision.status.attempt == case.attempt
        assert decision.status.ray_job_name == (f"legal-a{case.attempt}" if case.attempt else None)
    if case.restarts is not None:
        assert decision.status.restarts == case.restarts
    assert decision.status.observed_generation == 3
    assert case.job.status is None or case.job.status.phase != case.phase or case.job.status is not decision.status


def conditions(decision: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in decision.status.conditions}


def test_progress_is_mirrored_into_status() -> None:
    p = progress(
        tokens_per_second=1000.0,
        eta_seconds=60,
        evaluation=EvaluationStatus(
            general_loss_increase=0.02,
            baseline=EvalResult(step=0, domain_loss=4.0, general_loss=3.0),
            latest=EvalResult(step=10, domain_loss=2.0, general_loss=3.06),
        ),
        checkpoint=CheckpointRef(step=10, uri="s3://b/run/step-00000010/", time="t", attempt=1),
    )
    decision = reconcile(job(Phase.Preparing, 1), Observed(rayjob(), p, now=NOW))
    s = decision.status
    assert (s.progress.step, s.progress.total_steps, s.progress.loss) == (12, 30, 3.2)
    # The status sections are the progress file's sections, as they are.
    assert s.progress == p.progress and s.evaluation == p.evaluation and s.checkpoint == p.checkpoint
    assert (
        s.evaluation.baseline.domain_loss,
        s.evaluation.latest.general_loss,
        s.evaluation.general_loss_increase,
    ) == (
        4.0,
        3.06,
        0.02,
    )
    assert s.checkpoint.step == 10 and s.checkpoint.attempt == 1
    assert conditions(decision)["Training"] == ("True", "Training")
    assert conditions(decision)["ClusterReady"] == ("True", "Running")


def test_progress_of_an_older_attempt_is_ignored() -> None:
    decision = reconcile(job(Phase.Preparing, 2), Observed(rayjob(name="legal-a2"), progress(attempt=1), now=NOW))
    assert decision.status.progress is None and decision.status.phase == Phase.Preparing


def test_forgetting_is_flagged_once() -> None:
    p = progress(
        evaluation=EvaluationStatus(
            forgetting_detected=True,
            general_loss_increase=0.2,
            baseline=EvalResult(step=0, general_loss=3.0),
            latest=EvalResult(step=10, general_loss=3.6),
        )
    )
    first = reconcile(job(Phase.Running, 1), Observed(rayjob(), p, now=NOW))
    assert conditions(first)["ForgettingDetected"] == ("True", "GeneralLossIncreased")
    assert "ForgettingDetected" in [e.reason for e in first.events]
    again = job(Phase.Running, 1)
    again.status = first.status
    assert "ForgettingDetected" not in [e.reason for e in reconcile(again, Observed(rayjob(), p, now=NOW)).events]


def test_repeated_preflight_failure_warns_once_and_backs_off() -> None:
    failed = PreflightResult(False, Reason.BucketUnreachable, "down")
    first = reconcile(job(Phase.Pending), Observed(preflight=failed, now=NOW))
    second_job = job(Phase.Pending)
    second_job.status = first.status
    second = reconcile(second_job, Observed(preflight=failed, now=NOW))
    assert [e.reason for e in second.events] == []
    assert second.status.preflight_failures == 2
    assert conditions(second)["StorageReady"] == ("False", "BucketUnreachable")
    assert [preflight_backoff(n, 10, 300) for n in (1, 2, 3, 6, 10)] == [10, 20, 40, 300, 300]


def test_preflight_is_due_only_before_an_attempt_and_after_its_backoff() -> None:
    assert needs_preflight(job(), NOW)
    assert needs_preflight(job(Phase.Restarting, 1), NOW)
    assert not needs_preflight(job(Phase.Running, 1), NOW)
    assert not needs_preflight(job(Phase.Pending, suspend=True), NOW)
    later = (NOW + dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert not needs_preflight(job(Phase.Pending, next_preflight_time=later), NOW)
    assert needs_preflight(job(Phase.Pending, next_preflight_time=later), NOW + dt.timedelta(seconds=31))


def test_warnings_become_a_condition_message_and_events() -> None:
    decision = reconcile(job(), Observed(now=NOW), warnings=["spec.data.sources: no replay"])
    assert conditions(decision)["Validated"] == ("True", "ValidWithWarnings")
    assert "RecommendedPractice" in [e.reason for e in decision.events]
    assert decision.status.warnings == ["spec.data.sources: no replay"]


def test_condition_transition_time_only_changes_with_status() -> None:
    first = reconcile(job(Phase.Preparing, 1), Observed(rayjob(), progress(), now=NOW))
    j = job(Phase.Running, 1)
    j.status = first.status
    later = reconcile(j, Observed(rayjob(), progress(step=20), now=NOW + dt.timedelta(minutes=5)))
    before = {c.type: c.last_transition_time for c in first.status.conditions}
    after = {c.type: c.last_transition_time for c in later.status.conditions}
    assert before["Training"] == after["Training"]


def staged_progress(stage: str, step: int) -> Progress:
    stages = [
        StageStatus(name="qa", phase="Succeeded" if step >= 4 else "Running", total_steps=4),
        StageStatus(name="cpt", phase="Running" if step >= 4 else "Pending", total_steps=26),
    ]
    p = progress(step=step)
    return p.model_copy(update={"stage": stage, "stages": stages})


def test_each_stage_transition_is_one_event() -> None:
    first = reconcile(job(Phase.Running, 1), Observed(rayjob(), staged_progress("qa", 2), now=NOW))
    assert [e.message for e in first.events if e.reason == "StageStarted"] == ["stage qa (1/2) at step 2"]
    assert first.status.stage == "qa" and [s.name for s in first.status.stages] == ["qa", "cpt"]
    again = job(Phase.Running, 1)
    again.status = first.status
    same = reconcile(again, Observed(rayjob(), staged_progress("qa", 3), now=NOW))
    assert not [e for e in same.events if e.reason == "StageStarted"]
    again.status = same.status
    moved = reconcile(again, Observed(rayjob(), staged_progress("cpt", 5), now=NOW))
    assert [e.message for e in moved.events if e.reason == "StageStarted"] == ["stage cpt (2/2) at step 5"]
    assert moved.status.stages[0].phase == "Succeeded"


def test_probe_target_sets_a_condition() -> None:
    j = job(Phase.Running, 1)
    j.spec.evaluation.probe_target_f1 = 0.5
    latest = EvalResult(step=10, probes=ProbeScores(exact_match=0.2, f1=0.4, count=40))
    p = progress(evaluation=EvaluationStatus(baseline=latest, latest=latest))
    missed = reconcile(j, Observed(rayjob(), p, now=NOW))
    assert conditions(missed)["ProbesPassed"] == ("False", "ProbeTargetMissed")
    hit = latest.model_copy(update={"probes": ProbeScores(exact_match=0.5, f1=0.6, count=40)})
    met = reconcile(j, Observed(rayjob(), progress(evaluation=EvaluationStatus(baseline=latest, latest=hit)), now=NOW))
    assert conditions(met)["ProbesPassed"] == ("True", "ProbeTargetMet")
