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

import copy
import datetime as dt
from typing import Any, Literal

from cpt_core.api.progress import Progress
from cpt_core.api.v1alpha1 import CPTJob, CPTJobStatus, KeptRayJob, Phase
from cpt_core.api.v1alpha1.status import STATUS_SECTIONS
from cpt_core.contract import layout
from cpt_core.contract.clock import timestamp
from cpt_core.contract.reasons import ConditionType, Reason

from cpt_operator.controller.build.names import rayjob_name
from cpt_operator.controller.lifecycle.conditions import condition, expire_kept, is_final, set_condition, spec_rejected
from cpt_operator.controller.lifecycle.decision import CreateAttempt, Decision, DeleteRayJob, Event, Observed

FINISHED_DEPLOYMENT = {"Complete"}
FAILED_DEPLOYMENT = {"Failed", "ValidationFailed"}
FAILED_JOB = {"FAILED", "STOPPED"}
# Trainer states that end an attempt before success. `interrupted` (SIGINT/SIGTERM) carries the
# non-terminal reason Interrupted, so it restarts like any other non-terminal failure.
ENDED_EARLY = ("failed", "stopped", "interrupted")


def mirror_progress(status: CPTJobStatus, progress: Progress) -> None:
    """Take the trainer's sections into the status as they are (they are the status types)."""
    for section in STATUS_SECTIONS:
        value = getattr(progress, section)
        if value is not None:
            setattr(status, section, copy.deepcopy(value))


def retire(decision: Decision, job: CPTJob, rayjob: dict[str, Any], now: dt.datetime, keep: bool) -> None:
    """An attempt ended: copy its logs, then delete its RayJob now, or keep it for runPolicy.ttlSecondsAfterFinished."""
    status, ttl = decision.status, job.spec.run_policy.ttl_seconds_after_finished
    keep = keep and ttl > 0
    status.logs_uri = layout.under(job.spec.checkpoint.uri, layout.LOGS)
    name, uid = rayjob["metadata"]["name"], rayjob["metadata"].get("uid")
    if keep and all(k.name != name for k in status.kept_ray_jobs):
        until = timestamp(now + dt.timedelta(seconds=ttl))
        status.kept_ray_jobs.append(KeptRayJob(name=name, uid=uid, delete_after=until))
    decision.actions.append(DeleteRayJob(name, uid, logs_of=status.attempt, keep=keep))


def reconcile(job: CPTJob, observed: Observed, warnings: list[str] | None = None) -> Decision:
    """The next status, actions and events for `job` given what was observed."""
    spec, meta = job.spec, job.metadata
    status = (job.status or CPTJobStatus()).model_copy(deep=True)
    decision = Decision(status)
    now, generation = observed.now, meta.generation
    old_phase = status.phase
    status.observed_generation = generation
    status.warnings = list(warnings or [])

    def set_(type_: ConditionType, value: Literal["True", "False", "Unknown"], reason: Reason | str, msg: str) -> None:
        set_condition(status, type_, value, reason, msg, now, generation)

    validated = condition(status, ConditionType.Validated)
    if validated is None or validated.observed_generation != generation or validated.status != "True":
        message = "; ".join(status.warnings) if status.warnings else "the spec is valid"
        set_(ConditionType.Validated, "True", Reason.ValidWithWarnings if status.warnings else Reason.Valid, message)
        for warning in status.warnings:
            decision.events.append(Event("Warning", Reason.RecommendedPractice.value, warning))

    def transition(phase: Phase, message: str, event_type: Literal["Normal", "Warning"] = "Normal") -> None:
        status.phase = phase
        status.message = message
        if phase != old_phase:
            decision.events.append(Event(event_type, phase.value, message))

    def finish(phase: Phase, reason: Reason | str, message: str) -> None:
        status.completion_time = status.completion_time or timestamp(now)
        succeeded = phase == Phase.Succeeded
        set_(ConditionType.Succeeded, "True" if succeeded else "False", reason, message)
        if not succeeded:
            set_(ConditionType.Failed, "True", reason, message)
        set_(ConditionType.Training, "False", reason, message)
        transition(phase, message, "Normal" if succeeded else "Warning")

    rayjob = observed.rayjob
    if spec_rejected(status):
        # The spec is valid again (reconcile only sees valid specs): revive the job with a new attempt.
        if rayjob is not None:
            decision.actions.append(DeleteRayJob.of(rayjob))
            return decision  # the old attempt's RayJob must be gone before a new one starts
        message = f"the spec is valid again (generation {generation}); a new attempt resumes from the last checkpoint"
        set_(ConditionType.Failed, "False", Reason.SpecCorrected, message)
        set_(ConditionType.Succeeded, "False", Reason.SpecCorrected, message)
        status.completion_time = None
        status.phase = Phase.Restarting if status.attempt else Phase.Pending
        status.message = message
        decision.events.append(Event("Normal", Reason.SpecCorrected.value, message))
    decision.actions.extend(expire_kept(status, now, everything=bool(spec.run_policy.suspend)))
    if is_final(status):
        return decision  # terminal: nothing changes any more

    ours = observed.progress if observed.progress is not None and observed.progress.attempt == status.attempt else None
    ignored = condition(status, ConditionType.ProgressIgnored)
    problem = observed.progress_problem
    if problem is not None:
        if ignored is None or ignored.status != "True" or ignored.reason != problem.reason.value:
            decision.events.append(Event("Warning", problem.reason.value, problem.message))
        set_(ConditionType.ProgressIgnored, "True", problem.reason, problem.message)
    elif ours is not None and ignored is not None and ignored.status == "True":
        set_(ConditionType.ProgressIgnored, "False", Reason.ProgressAccepted, "the progress file is read again")
    if ours is not None:
        previous_stage = status.stage
        mirror_progress(status, ours)
        stages = ours.stages or []
        if len(stages) > 1 and ours.stage and ours.stage != previous_stage and ours.state == "running":
            index = next(i for i, s in enumerate(stages) if s.name == ours.stage)
            message = f"stage {ours.stage} ({index + 1}/{len(stages)}) at step {ours.progress.step}"
            decision.events.append(Event("Normal", Reason.StageStarted.value, message))
        target = spec.evaluation.probe_target_f1
        latest = ours.evaluation.latest if ours.evaluation else None
        if target is not None and latest is not None and latest.probes is not None:
            met = latest.probes.f1 >= target
            set_(
                ConditionType.ProbesPassed,
                "True" if met else "False",
                Reason.ProbeTargetMet if met else Reason.ProbeTargetMissed,
                f"probe F1 {latest.probes.f1:.3f} at step {latest.step} (target {target:.3f})",
            )
        flagged = condition(status, ConditionType.ForgettingDetected)
        evaluation = ours.evaluation
        if evaluation is not None and evaluation.forgetting_detected and (flagged is None or flagged.status != "True"):
            message = (
                f"general loss is {100 * (evaluation.general_loss_increase or 0):.1f} % above its baseline "
                f"(limit {100 * spec.evaluation.forgetting.max_general_loss_increase:.1f} %)"
            )
            set_(ConditionType.ForgettingDetected, "True", Reason.GeneralLossIncreased, message)
            decision.events.append(Event("Warning", Reason.ForgettingDetected.value, message))

    # -- suspension ------------------------------------------------------------------------
    if spec.run_policy.suspend:
        if rayjob is not None:
            retire(decision, job, rayjob, now, keep=False)  # suspension frees the cluster at once
        if status.phase != Phase.Suspended:
            set_(ConditionType.Training, "False", Reason.Suspended, "runPolicy.suspend is true")
            set_(ConditionType.ClusterReady, "False", Reason.Suspended, "the Ray cluster was deleted")
            transition(Phase.Suspended, "suspended: the RayJob is deleted, checkpoints are kept")
        return decision
    if status.phase == Phase.Suspended:
        status.phase = Phase.Restarting
        status.message = "resuming after suspension from the last committed checkpoint"
        decision.events.append(Event("Normal", Reason.Resumed.value, status.message))

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
            previous = condition(status, ConditionType.StorageReady)
            set_(ConditionType.StorageReady, "False", result.reason, result.message)
            if previous is None or previous.reason != result.reason.value or previous.status != "False":
                decision.events.append(Event("Warning", result.reason.value, result.message))
            status.message = f"{result.reason.value}: {result.message}"
            return decision
        set_(
            ConditionType.StorageReady, "True", Reason.Ready, "credentials, bucket, data and checkpoint prefix checked"
        )
        blocked = observed.launch_blocked
        if blocked is not None:
            if blocked.reason.terminal:
                finish(Phase.Failed, blocked.reason, blocked.message)
                return decision
            status.preflight_failures += 1  # retried with the preflight's backoff
            status.next_preflight_time = None
            previous = condition(status, ConditionType.ClusterReady)
            set_(ConditionType.ClusterReady, "False", blocked.reason, blocked.message)
            if previous is None or previous.reason != blocked.reason.value or previous.message != blocked.message:
                decision.events.append(Event("Warning", blocked.reason.value, blocked.message))
            status.message = f"{blocked.reason.value}: {blocked.message}"
            return decision
        status.preflight_failures = 0
        status.next_preflight_time = None
        status.attempt += 1
        status.ray_job_name = rayjob_name(meta.name, status.attempt)
        status.start_time = status.start_time or timestamp(now)
        status.dashboard_url = None
        decision.actions.append(CreateAttempt(status.attempt))
        set_(ConditionType.ClusterReady, "False", Reason.Creating, f"RayJob {status.ray_job_name} created")
        auth = observed.ray_auth
        if auth is not None:
            previous = condition(status, ConditionType.RayAuth)
            value: Literal["True", "False", "Unknown"] = (
                "False" if auth.mode == "off" else "Unknown" if auth.reason == Reason.RayAuthUnverified else "True"
            )
            set_(ConditionType.RayAuth, value, auth.reason, auth.message)
            warn = auth.reason in (Reason.RayAuthUnsupported, Reason.RayAuthUnverified)
            if warn and (previous is None or previous.reason != auth.reason.value):  # once, not every attempt
                decision.events.append(Event("Warning", auth.reason.value, auth.message))
        resume = f", resuming from checkpoint step {status.checkpoint.step}" if status.checkpoint else ""
        decision.events.append(
            Event(
                "Normal",
                Reason.AttemptStarted.value,
                f"created RayJob {status.ray_job_name} (attempt {status.attempt}{resume})",
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

    failure: tuple[str, str] | None = None
    if rayjob is None and observed.foreign_rayjob:
        failure = (Reason.RayJobMissing.value, observed.foreign_rayjob)
    elif rayjob is None:
        failure = (Reason.RayJobMissing.value, f"RayJob {status.ray_job_name} disappeared")
    elif deployment in FINISHED_DEPLOYMENT or (job_status == "SUCCEEDED" and deployment not in FAILED_DEPLOYMENT):
        if ours is not None and ours.state == "succeeded":
            model = ours.output.model_uri if ours.output else None
            finish(Phase.Succeeded, Reason.Completed, f"trained {ours.progress.step} steps; model at {model}")
            return decision
        if ours is not None and ours.state in ENDED_EARLY:
            failure = (ours.reason or Reason.TrainingFailed.value, ours.message or "")
        elif deployment in FINISHED_DEPLOYMENT:
            failure = (Reason.NoResult.value, "the RayJob completed but the trainer reported no final state")
    elif deployment in FAILED_DEPLOYMENT or job_status in FAILED_JOB:
        if ours is not None and ours.state in ENDED_EARLY and ours.reason:
            failure = (ours.reason, ours.message or "")
        else:
            failure = (
                ray_status.get("reason") or Reason.RayJobFailed.value,
                ray_status.get("message") or f"jobStatus {job_status}",
            )

    if failure is not None:
        reason, message = failure
        final = Reason.is_terminal(reason) or status.restarts >= spec.run_policy.max_restarts
        if rayjob is not None:
            # Logs are copied either way. The RayJob of a job's last attempt is kept for inspection; one
            # followed by a restart goes at once, so its cluster's GPUs go to the next attempt.
            retire(decision, job, rayjob, now, keep=final)
        if Reason.is_terminal(reason):
            finish(Phase.Failed, reason, message)
            return decision
        if status.restarts >= spec.run_policy.max_restarts:
            finish(
                Phase.Failed,
                Reason.RestartLimitReached,
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
        set_(ConditionType.Training, "False", reason, message)
        decision.events.append(
            Event(
                "Warning",
                Reason.AttemptFailed.value,
                f"attempt {status.attempt} failed ({reason}: {message}); restart {status.restarts} of "
                f"{spec.run_policy.max_restarts} resumes from {where}",
            )
        )
        transition(Phase.Restarting, f"attempt {status.attempt} failed ({reason}); restarting from {where}", "Warning")
        return decision

    if deployment == "Running":
        set_(ConditionType.ClusterReady, "True", Reason.Running, "the Ray cluster is up")
    if ours is not None and ours.state == "running":
        step = f"step {ours.progress.step}/{ours.progress.total_steps}"
        set_(ConditionType.Training, "True", Reason.Training, step)
        transition(Phase.Running, f"attempt {status.attempt}: training")
    elif status.phase != Phase.Running:
        transition(Phase.Preparing, status.message or f"attempt {status.attempt}: starting")
    return decision
