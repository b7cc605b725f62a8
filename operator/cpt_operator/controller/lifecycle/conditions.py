"""Reading and writing a CPTJob's status and conditions (pure).

Reading and writing a CPTJob's status (pure): conditions upserted metav1-style, whether a job is final
or was failed for its spec, when a preflight is due and its backoff, the RayJob to observe, and the kept
RayJobs whose time is up.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from cpt_core.api.v1alpha1 import Condition, CPTJob, CPTJobStatus, Phase
from cpt_core.contract.clock import parse_time, timestamp
from cpt_core.contract.reasons import ConditionType, Reason

from cpt_operator.controller.lifecycle.decision import DeleteRayJob


def set_condition(
    status: CPTJobStatus,
    type_: ConditionType,
    value: Literal["True", "False", "Unknown"],
    reason: Reason | str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> None:
    """Upsert a condition; lastTransitionTime changes only when the status value changes."""
    previous = condition(status, type_)
    updated = Condition(
        type=type_.value,
        status=value,
        reason=str(reason),
        message=message,
        last_transition_time=previous.last_transition_time
        if previous is not None and previous.status == value
        else timestamp(now),
        observed_generation=generation,
    )
    if previous is None:
        status.conditions.append(updated)
    else:
        status.conditions[status.conditions.index(previous)] = updated


def condition(status: CPTJobStatus, type_: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_.value), None)


def spec_rejected(status: CPTJobStatus) -> bool:
    """Failed because the spec was invalid or refused by the admin policy: a corrected spec revives the job (every
    other Failed is final)."""
    failed = condition(status, ConditionType.Failed)
    return (
        status.phase == Phase.Failed
        and failed is not None
        and failed.status == "True"
        and failed.reason in (Reason.InvalidSpec.value, Reason.RefusedByPolicy.value)
    )


def is_final(status: CPTJobStatus) -> bool:
    return status.phase == Phase.Succeeded or (status.phase == Phase.Failed and not spec_rejected(status))


def needs_preflight(job: CPTJob, now: dt.datetime) -> bool:
    """Whether the handler must run a preflight before calling `reconcile` (pure)."""
    status = job.status or CPTJobStatus()
    if job.spec.run_policy.suspend or is_final(status) or status.phase in (Phase.Preparing, Phase.Running):
        return False
    if status.phase in (Phase.Suspended, Phase.Failed):
        return True  # unsuspended, or the spec was corrected: the next attempt needs a fresh preflight
    due = parse_time(status.next_preflight_time)
    return due is None or now >= due


def preflight_backoff(failures: int, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(0, failures - 1)))


def current_rayjob_name(status: CPTJobStatus) -> str | None:
    """The RayJob to observe: the current attempt's, unless it ended and is only kept for inspection."""
    kept = {k.name for k in status.kept_ray_jobs}
    return status.ray_job_name if status.ray_job_name not in kept else None


def expire_kept(status: CPTJobStatus, now: dt.datetime, everything: bool = False) -> list[DeleteRayJob]:
    """Deletions of the kept RayJobs whose time is up (all of them with `everything`); drops them from status."""
    due = [k for k in status.kept_ray_jobs if everything or (parse_time(k.delete_after) or now) <= now]
    status.kept_ray_jobs = [k for k in status.kept_ray_jobs if k not in due]
    return [DeleteRayJob(k.name, k.uid) for k in due]
