"""What the operator does with a CPTJob whose spec the API server admitted but the models reject (pure).

The CRD carries every check it can (schema, patterns, CEL), so this is rare: a check CEL cannot
express (e.g. credentials inline in `spec.deepspeed.config`), or an object stored before a rule
existed. The job's attempt is stopped (its RayJob deleted, checkpoints kept) and it is Failed
with the field and the fix; `state.reconcile` revives it once the spec is valid again.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from cpt_core.api.v1alpha1 import CPTJobStatus, Phase
from cpt_core.contract.reasons import ConditionType, Reason

from cpt_operator.controller.lifecycle.conditions import condition, set_condition, spec_rejected
from cpt_operator.controller.lifecycle.decision import Decision, DeleteRayJob, Event


def reject_spec(
    job_status: CPTJobStatus | None,
    problems: str,
    generation: int | None,
    rayjob: dict[str, Any] | None,
    now: dt.datetime,
    reason: Reason = Reason.InvalidSpec,
) -> Decision:
    """The spec fails the semantic checks (the API server admitted it) or the admin policy (`reason`
    RefusedByPolicy): stop the attempt, keep checkpoints.

    Failed with a Failed=True/`reason` condition that names the field and the fix; one event.
    `reconcile` revives the job once the spec is valid again (`spec_rejected`)."""
    status = (job_status or CPTJobStatus()).model_copy(deep=True)
    decision = Decision(status)
    if rayjob is not None:
        decision.actions.append(DeleteRayJob.of(rayjob))
    if status.phase == Phase.Succeeded or (status.phase == Phase.Failed and not spec_rejected(status)):
        return decision  # a finished job stays finished
    kept = " (checkpoints are kept)" if status.attempt else ""
    what = "invalid spec" if reason == Reason.InvalidSpec else "refused by the cluster's admin policy"
    where = "(`cpt validate` shows the same) " if reason == Reason.InvalidSpec else ""
    message = f"{what} (generation {generation}): {problems}. Fix it {where}and apply it again: the job resumes{kept}"
    status.observed_generation = generation

    def set_(type_: ConditionType, value: Literal["True", "False"]) -> None:
        set_condition(status, type_, value, reason, message, now, generation)

    set_(ConditionType.Validated, "False")
    set_(ConditionType.Failed, "True")
    set_(ConditionType.Succeeded, "False")
    if condition(status, ConditionType.Training) is not None:
        set_(ConditionType.Training, "False")
    if condition(status, ConditionType.ClusterReady) is not None:
        set_(ConditionType.ClusterReady, "False")
    if status.phase != Phase.Failed or status.message != message:
        decision.events.append(Event("Warning", reason.value, message))
    status.phase = Phase.Failed
    status.message = message
    status.completion_time = status.completion_time or now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return decision
