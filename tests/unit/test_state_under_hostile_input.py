"""The state machine's part of the operator under hostile input (no servers; the operator itself is in
tests/integration/test_operator_under_hostile_input.py): invalid specs and their correction, launches
blocked by foreign objects, ignored progress files, damaged status fields, and the status merge patch."""

from __future__ import annotations

from typing import Any

from cpt_core.api.progress import TrainingProgress
from cpt_core.api.v1alpha1 import CPTJob, CPTJobStatus, Phase
from cpt_core.contract.reasons import Reason
from cpt_operator.controller.lifecycle.conditions import is_final, needs_preflight
from cpt_operator.controller.lifecycle.decision import CreateAttempt, DeleteRayJob, Observed, PreflightResult, Problem
from cpt_operator.controller.lifecycle.reconcile import reconcile
from cpt_operator.controller.lifecycle.rejection import reject_spec
from cpt_operator.controller.reconciler import _status_patch, parse_status

from tests.unit.test_state import NOW, job, progress, rayjob

OK = PreflightResult(True)


def conditions(status: CPTJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def with_status(status: CPTJobStatus, **spec: Any) -> CPTJob:
    j = job(**spec)
    j.status = status.model_copy(deep=True)
    return j


# -- an invalid spec stops the attempt; a corrected one resumes the job ----------------------------


def test_an_invalid_spec_stops_the_attempt_with_a_failed_condition() -> None:
    running = job(Phase.Running, 1, restarts=1).status
    theirs = {"metadata": {"name": "legal-a1", "uid": "r-1"}, "status": {}}
    decision = reject_spec(running, "spec.storage.endpoint: must be an http:// URL", 4, theirs, NOW)
    assert decision.status.phase == Phase.Failed
    assert decision.actions == [DeleteRayJob("legal-a1", "r-1")]
    assert conditions(decision.status)["Failed"] == ("True", "InvalidSpec")
    assert conditions(decision.status)["Validated"] == ("False", "InvalidSpec")
    assert "spec.storage.endpoint: must be an http:// URL" in decision.status.message
    assert "checkpoints are kept" in decision.status.message
    assert [e.reason for e in decision.events] == ["InvalidSpec"]
    assert not is_final(decision.status)  # a corrected spec revives it
    again = reject_spec(decision.status, "spec.storage.endpoint: must be an http:// URL", 4, None, NOW)
    assert again.events == [] and again.actions == []


def test_a_corrected_spec_resumes_with_a_new_attempt() -> None:
    rejected = reject_spec(job(Phase.Running, 2, restarts=1).status, "bad", 4, None, NOW).status
    decision = reconcile(with_status(rejected), Observed(None, None, OK, now=NOW))
    assert decision.status.phase == Phase.Preparing
    assert decision.actions == [CreateAttempt(3)]
    assert decision.status.restarts == 1 and decision.status.completion_time is None
    assert [e.reason for e in decision.events] == ["SpecCorrected", "AttemptStarted", "Preparing"]
    assert conditions(decision.status)["Failed"] == ("False", "SpecCorrected")
    assert conditions(decision.status)["Validated"][0] == "True"


def test_a_corrected_spec_waits_for_the_old_rayjob_to_go() -> None:
    rejected = reject_spec(job(Phase.Running, 1).status, "bad", 4, None, NOW).status
    decision = reconcile(with_status(rejected), Observed(rayjob("Running"), None, OK, now=NOW))
    assert decision.actions == [DeleteRayJob("legal-a1")] and decision.status.phase == Phase.Failed


def test_other_failures_stay_final() -> None:
    failed = job(Phase.Failed, 1).status
    assert is_final(failed) and not needs_preflight(with_status(failed), NOW)
    decision = reject_spec(job(Phase.Succeeded, 1).status, "bad", 4, None, NOW)
    assert decision.status.phase == Phase.Succeeded and decision.events == []


# -- a launch blocked by a foreign object or rejected by the API server ----------------------------


def test_a_foreign_child_blocks_the_launch_with_a_condition_and_backoff() -> None:
    blocked = Problem(Reason.ForeignObject, "RayJob ml/legal-a1 exists owned by CPTJob/legal uid old")
    first = reconcile(job(Phase.Pending), Observed(None, None, OK, now=NOW, launch_blocked=blocked))
    assert first.status.phase == Phase.Pending and first.actions == []
    assert conditions(first.status)["ClusterReady"] == ("False", "ForeignObject")
    assert first.status.preflight_failures == 1 and first.status.attempt == 0
    assert [e.reason for e in first.events] == ["ForeignObject"]
    second = reconcile(with_status(first.status), Observed(None, None, OK, now=NOW, launch_blocked=blocked))
    assert second.events == [] and second.status.preflight_failures == 2


def test_a_rejected_rayjob_fails_the_job_once() -> None:
    rejected = Problem(Reason.ValidationFailed, "the API server rejected RayJob legal-a1: spec.x: bad")
    decision = reconcile(job(Phase.Pending), Observed(None, None, OK, now=NOW, launch_blocked=rejected))
    assert decision.status.phase == Phase.Failed and decision.actions == []
    assert conditions(decision.status)["Failed"] == ("True", "ValidationFailed")


def test_a_foreign_rayjob_under_the_current_name_is_left_alone() -> None:
    decision = reconcile(
        job(Phase.Running, 1), Observed(None, None, now=NOW, foreign_rayjob="RayJob ml/legal-a1 is owned by another")
    )
    assert decision.status.phase == Phase.Restarting and decision.actions == []
    assert "owned by another" in decision.status.message or "owned by another" in decision.events[0].message


# -- an ignored progress file is a condition, not a phase change -----------------------------------


def test_an_ignored_progress_file_is_a_condition_not_a_phase_change() -> None:
    problem = Problem(Reason.ProgressUnavailable, "read timeout")
    first = reconcile(job(Phase.Running, 1), Observed(rayjob(), None, now=NOW, progress_problem=problem))
    assert first.status.phase == Phase.Running
    assert conditions(first.status)["ProgressIgnored"] == ("True", "ProgressUnavailable")
    assert [e.reason for e in first.events] == ["ProgressUnavailable"]
    second = reconcile(with_status(first.status), Observed(rayjob(), None, now=NOW, progress_problem=problem))
    assert second.events == [] and second.status.phase == Phase.Running
    back = reconcile(with_status(second.status), Observed(rayjob(), progress(step=20), now=NOW))
    assert conditions(back.status)["ProgressIgnored"] == ("False", "ProgressAccepted")
    assert back.status.progress is not None and back.status.progress.step == 20


def test_preparing_stays_preparing_on_an_ignored_file() -> None:
    problem = Problem(Reason.ProgressForeign, "written by job 'other'")
    decision = reconcile(job(Phase.Preparing, 1), Observed(rayjob(), None, now=NOW, progress_problem=problem))
    assert decision.status.phase == Phase.Preparing


# -- damaged status fields are reset, not fatal ----------------------------------------------------


def test_a_damaged_next_preflight_time_means_due_now() -> None:
    assert needs_preflight(job(Phase.Pending, next_preflight_time="next tuesday"), NOW)


def test_unparsable_status_fields_are_reset_not_fatal() -> None:
    raw = {
        "phase": "Running",
        "attempt": 2,
        "nextPreflightTime": "next tuesday",
        "conditions": [{"type": "Training"}],  # no status, reason, time
        "progress": {"step": -3},
        "kopf": {"progress": {}},
    }
    status, reset = parse_status(raw)
    assert status.phase == Phase.Running and status.attempt == 2
    assert status.conditions == [] and status.progress is None and status.next_preflight_time is None
    assert sorted(reset) == ["conditions", "nextPreflightTime", "progress"]
    assert parse_status("garbage")[0] == CPTJobStatus()


# -- the status patch removes what disappeared, never writes NaN -----------------------------------


def test_the_status_patch_removes_nested_keys_that_disappeared() -> None:
    old = {"progress": {"step": 12, "lr": float("inf"), "loss": 3.0}, "phase": "Running", "kopf": {"x": 1}}
    new = {"progress": {"step": 13, "loss": 2.9}, "phase": "Running"}
    assert _status_patch(old, new) == {"progress": {"step": 13, "lr": None, "loss": 2.9}}
    new_progress = TrainingProgress(step=13, loss=float("nan")).model_dump(by_alias=True, exclude_none=True)
    assert new_progress == {"step": 13, "tokens": 0}  # NaN never reaches a status patch
