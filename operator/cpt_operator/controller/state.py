"""The CPTJob lifecycle as one pure function: `reconcile(job, observed) -> Decision`.

Inputs are what the handler observed (the current attempt's RayJob, the fenced progress file,
a preflight result when one was due, the time); the output is the new status plus the actions
and events the handler must carry out. No I/O here: every transition is unit-tested as a table.

    (new) ─► Pending ─preflight ok─► Preparing ─RayJob Running + progress─► Running ─► Succeeded
               ▲  │ preflight fails: StorageReady=False, retry with backoff                   │
               │  ▼                                                                         ▼
          Suspended ◄── runPolicy.suspend (RayJob deleted, checkpoints kept)        attempt failed
               │                                                                            │
               └── unsuspend ─► Restarting ─preflight ok─► new RayJob (attempt N+1) ◄─ restarts < max
                                                                                          else Failed
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from ..api.progress import Progress
from ..api.v1alpha1 import (
    CheckpointStatus,
    Condition,
    CPTJob,
    CPTJobStatus,
    DataStatus,
    EvaluationStatus,
    OutputStatus,
    Phase,
    ProbeScores,
    ProgressStatus,
    SourceDataStatus,
)
from .names import rayjob_name

#: Failures that a restart cannot fix: the job fails at once.
TERMINAL_REASONS = {
    "NonFiniteLoss",
    "DataError",
    "ModelSourceError",
    "CheckpointOwnedByAnotherJob",
    "ResumeMismatch",
    "DeadlineExceeded",
    "ForgettingDetected",
    "ValidationFailed",
    "InvalidSpec",
}
FINISHED_DEPLOYMENT = {"Complete"}
FAILED_DEPLOYMENT = {"Failed", "ValidationFailed"}
FAILED_JOB = {"FAILED", "STOPPED"}


@dataclass(frozen=True)
class PreflightResult:
    """The outcome of checking storage before any RayJob is requested."""

    ok: bool
    reason: str = "Ready"
    message: str = ""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class CreateAttempt:
    """Create the spec ConfigMap (idempotent) and the RayJob of `attempt`."""

    attempt: int


@dataclass(frozen=True)
class DeleteRayJob:
    name: str


Action = CreateAttempt | DeleteRayJob


@dataclass(frozen=True)
class Observed:
    rayjob: dict[str, Any] | None = None
    progress: Progress | None = None
    preflight: PreflightResult | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass
class Decision:
    status: CPTJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    @property
    def needs_preflight(self) -> bool:
        """The job waits for a preflight result before it can launch an attempt."""
        return self.status.phase in (Phase.Pending, Phase.Restarting) and not any(
            isinstance(a, CreateAttempt) for a in self.actions
        )


def _ts(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    status: CPTJobStatus,
    type_: str,
    value: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> None:
    """Upsert a condition; lastTransitionTime changes only when the status value changes."""
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            changed = cond.status != value
            status.conditions[i] = Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=_ts(now) if changed else cond.last_transition_time,
                observed_generation=generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=_ts(now),
            observed_generation=generation,
        )
    )


def condition(status: CPTJobStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def needs_preflight(job: CPTJob, now: dt.datetime) -> bool:
    """Whether the handler must run a preflight before calling `reconcile` (pure)."""
    status = job.status or CPTJobStatus()
    if job.spec.run_policy.suspend or status.phase in (Phase.Succeeded, Phase.Failed, Phase.Preparing, Phase.Running):
        return False
    if status.phase == Phase.Suspended:
        return True  # unsuspended: the next attempt needs a fresh preflight
    if status.next_preflight_time:
        due = dt.datetime.strptime(status.next_preflight_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        if now < due:
            return False
    return True


def preflight_backoff(failures: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def mirror_progress(status: CPTJobStatus, progress: Progress, job: CPTJob) -> None:
    """Copy the trainer's progress file (already fenced to this attempt) into the status."""
    status.progress = ProgressStatus(
        step=progress.step,
        total_steps=progress.total_steps or job.spec.total_steps,
        tokens=progress.tokens,
        tokens_per_second=progress.tokens_per_second,
        loss=progress.loss,
        lr=progress.lr,
        eta_seconds=progress.eta_seconds,
        updated_at=progress.updated_at,
    )
    if progress.evaluation:
        base, last = progress.baseline, progress.evaluation
        status.evaluation = EvaluationStatus(
            step=last.step,
            domain_loss=last.domain_loss,
            domain_loss_baseline=base.domain_loss if base else None,
            general_loss=last.general_loss,
            general_loss_baseline=base.general_loss if base else None,
            general_loss_increase=progress.general_loss_increase,
            forgetting_detected=progress.forgetting_detected,
            probes_before=ProbeScores(exact_match=progress.probes_before.exact_match, f1=progress.probes_before.f1)
            if progress.probes_before
            else None,
            probes_after=ProbeScores(exact_match=progress.probes_after.exact_match, f1=progress.probes_after.f1)
            if progress.probes_after
            else None,
        )
    if progress.checkpoint:
        c = progress.checkpoint
        status.checkpoint = CheckpointStatus(step=c.step, uri=c.uri, time=c.time, attempt=c.attempt)
    if progress.data:
        status.data = DataStatus(
            sources=[
                SourceDataStatus(
                    name=s.name, tokens_available=s.tokens_available, tokens_consumed=s.tokens_consumed, epochs=s.epochs
                )
                for s in progress.data
            ],
            resumed_with_changes=progress.resumed_with_changes,
        )
    if progress.model_uri or progress.report_uri:
        status.output = OutputStatus(model_uri=progress.model_uri, report_uri=progress.report_uri)


def reconcile(job: CPTJob, observed: Observed, warnings: list[str] | None = None) -> Decision:
    """The next status, actions and events for `job` given what was observed."""
    spec, meta = job.spec, job.metadata
    status = (job.status or CPTJobStatus()).model_copy(deep=True)
    decision = Decision(status)
    now, generation = observed.now, meta.generation
    old_phase = status.phase
    status.observed_generation = generation
    status.warnings = list(warnings or [])
    validated = condition(status, "Validated")
    if validated is None or validated.observed_generation != generation:
        message = "; ".join(status.warnings) if status.warnings else "the spec is valid"
        set_condition(
            status, "Validated", "True", "ValidWithWarnings" if status.warnings else "Valid", message, now, generation
        )
        for warning in status.warnings:
            decision.events.append(Event("Warning", "RecommendedPractice", warning))

    def transition(phase: Phase, message: str, event_type: Literal["Normal", "Warning"] = "Normal") -> None:
        status.phase = phase
        status.message = message
        if phase != old_phase:
            decision.events.append(Event(event_type, phase.value, message))

    def finish(phase: Phase, reason: str, message: str) -> None:
        status.completion_time = status.completion_time or _ts(now)
        succeeded = phase == Phase.Succeeded
        set_condition(status, "Succeeded", "True" if succeeded else "False", reason, message, now, generation)
        if not succeeded:
            set_condition(status, "Failed", "True", reason, message, now, generation)
        set_condition(status, "Training", "False", reason, message, now, generation)
        transition(phase, message, "Normal" if succeeded else "Warning")

    if status.phase in (Phase.Succeeded, Phase.Failed):
        return decision  # terminal: nothing changes any more

    rayjob = observed.rayjob
    progress = observed.progress
    if progress is not None and progress.attempt == status.attempt:
        mirror_progress(status, progress, job)
        flagged = condition(status, "ForgettingDetected")
        if progress.forgetting_detected and (flagged is None or flagged.status != "True"):
            message = (
                f"general loss is {100 * (progress.general_loss_increase or 0):.1f} % above its baseline "
                f"(limit {100 * spec.evaluation.forgetting.max_general_loss_increase:.1f} %)"
            )
            set_condition(status, "ForgettingDetected", "True", "GeneralLossIncreased", message, now, generation)
            decision.events.append(Event("Warning", "ForgettingDetected", message))

    # -- suspension ------------------------------------------------------------------------
    if spec.run_policy.suspend:
        if rayjob is not None:
            decision.actions.append(DeleteRayJob(rayjob["metadata"]["name"]))
        if status.phase != Phase.Suspended:
            set_condition(status, "Training", "False", "Suspended", "runPolicy.suspend is true", now, generation)
            set_condition(status, "ClusterReady", "False", "Suspended", "the Ray cluster was deleted", now, generation)
            transition(Phase.Suspended, "suspended: the RayJob is deleted, checkpoints are kept")
        return decision
    if status.phase == Phase.Suspended:
        status.phase = Phase.Restarting
        status.message = "resuming after suspension from the last committed checkpoint"
        decision.events.append(Event("Normal", "Resumed", status.message))

    # -- launching an attempt --------------------------------------------------------------
    if status.phase in (None, Phase.Pending, Phase.Restarting) and rayjob is None:
        if status.phase is None:
            transition(Phase.Pending, "checking storage before requesting a Ray cluster")
        result = observed.preflight
        if result is None:
            return decision  # the handler runs the preflight when it is due
        if not result.ok:
            status.preflight_failures += 1
            status.next_preflight_time = None  # the handler sets it from its backoff settings
            previous = condition(status, "StorageReady")
            set_condition(status, "StorageReady", "False", result.reason, result.message, now, generation)
            if previous is None or previous.reason != result.reason or previous.status != "False":
                decision.events.append(Event("Warning", result.reason, result.message))
            status.message = f"{result.reason}: {result.message}"
            return decision
        status.preflight_failures = 0
        status.next_preflight_time = None
        set_condition(
            status,
            "StorageReady",
            "True",
            "Ready",
            "credentials, bucket, data and checkpoint prefix checked",
            now,
            generation,
        )
        status.attempt += 1
        status.ray_job_name = rayjob_name(meta.name, status.attempt)
        status.start_time = status.start_time or _ts(now)
        status.dashboard_url = None
        decision.actions.append(CreateAttempt(status.attempt))
        set_condition(
            status, "ClusterReady", "False", "Creating", f"RayJob {status.ray_job_name} created", now, generation
        )
        resume = f", resuming from checkpoint step {status.checkpoint.step}" if status.checkpoint else ""
        decision.events.append(
            Event(
                "Normal", "AttemptStarted", f"created RayJob {status.ray_job_name} (attempt {status.attempt}{resume})"
            )
        )
        transition(Phase.Preparing, f"attempt {status.attempt}: starting the Ray cluster{resume}")
        return decision

    # -- observing the current attempt -----------------------------------------------------
    ray_status = (rayjob or {}).get("status") or {}
    deployment = ray_status.get("jobDeploymentStatus", "")
    job_status = ray_status.get("jobStatus", "")
    if ray_status.get("dashboardURL"):
        status.dashboard_url = ray_status["dashboardURL"]
    ours = progress if progress is not None and progress.attempt == status.attempt else None

    failure: tuple[str, str] | None = None
    if rayjob is None:
        failure = ("RayJobMissing", f"RayJob {status.ray_job_name} disappeared")
    elif deployment in FINISHED_DEPLOYMENT or (job_status == "SUCCEEDED" and deployment not in FAILED_DEPLOYMENT):
        if ours is not None and ours.state == "succeeded":
            finish(Phase.Succeeded, "Completed", f"trained {ours.step} steps; model at {ours.model_uri}")
            return decision
        if ours is not None and ours.state in ("stopped", "failed"):
            failure = (ours.reason or "TrainingFailed", ours.message or "")
        elif deployment in FINISHED_DEPLOYMENT:
            failure = ("NoResult", "the RayJob completed but the trainer reported no final state")
    elif deployment in FAILED_DEPLOYMENT or job_status in FAILED_JOB:
        if ours is not None and ours.state in ("failed", "stopped") and ours.reason:
            failure = (ours.reason, ours.message or "")
        else:
            failure = (
                ray_status.get("reason") or "RayJobFailed",
                ray_status.get("message") or f"jobStatus {job_status}",
            )

    if failure is not None:
        reason, message = failure
        if rayjob is not None:
            decision.actions.append(DeleteRayJob(rayjob["metadata"]["name"]))
        if reason in TERMINAL_REASONS:
            finish(Phase.Failed, reason, message)
            return decision
        if status.restarts >= spec.run_policy.max_restarts:
            finish(
                Phase.Failed,
                "RestartLimitReached",
                f"attempt {status.attempt} failed ({reason}: {message}); {status.restarts} restarts used of "
                f"runPolicy.maxRestarts {spec.run_policy.max_restarts}",
            )
            return decision
        status.restarts += 1
        where = (
            f"the last committed checkpoint (step {status.checkpoint.step} or later)"
            if status.checkpoint
            else "the last committed checkpoint, if any"
        )
        set_condition(status, "Training", "False", reason, message, now, generation)
        decision.events.append(
            Event(
                "Warning",
                "AttemptFailed",
                f"attempt {status.attempt} failed ({reason}: {message}); restart {status.restarts} of "
                f"{spec.run_policy.max_restarts} resumes from {where}",
            )
        )
        transition(Phase.Restarting, f"attempt {status.attempt} failed ({reason}); restarting from {where}", "Warning")
        return decision

    if deployment == "Running":
        set_condition(status, "ClusterReady", "True", "Running", "the Ray cluster is up", now, generation)
    if ours is not None and ours.state == "running":
        set_condition(status, "Training", "True", "Training", f"step {ours.step}/{ours.total_steps}", now, generation)
        transition(Phase.Running, f"attempt {status.attempt}: training")
    else:
        transition(Phase.Preparing, status.message or f"attempt {status.attempt}: starting")
    return decision
