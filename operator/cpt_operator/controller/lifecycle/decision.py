"""The vocabulary of a decision: what was observed, and what to do about it.

The vocabulary of a decision: what the handler observed (`Observed`, with a `PreflightResult` when one
was due) and what `reconcile` decided -- the new status, the actions to carry out (`CreateAttempt`,
`DeleteRayJob`) and the events to post. Plain values; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

from cpt_core.api.progress import Progress
from cpt_core.api.v1alpha1 import CPTJobStatus
from cpt_core.contract.clock import UTC
from cpt_core.contract.reasons import Reason

from cpt_operator.controller.build.manifests import RayAuthMode


@dataclass(frozen=True)
class PreflightResult:
    """The outcome of checking storage before any RayJob is requested."""

    ok: bool
    reason: Reason = Reason.Ready
    message: str = ""


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str  # a Reason, or the Phase entered
    message: str


@dataclass(frozen=True)
class CreateAttempt:
    """Create the spec ConfigMap (idempotent) and the RayJob of `attempt`."""

    attempt: int


@dataclass(frozen=True)
class DeleteRayJob:
    """Delete the RayJob `name`; with `uid`, only that object (a namesake created since is never deleted).

    With `logs_of`, first copy that attempt's pod logs to `<checkpoint.uri>/logs/attempt-N/`; with `keep`,
    only copy them: the RayJob stays (listed in status.keptRayJobs) until its TTL ends."""

    name: str
    uid: str | None = None
    logs_of: int | None = None
    keep: bool = False

    @classmethod
    def of(cls, rayjob: dict[str, Any]) -> DeleteRayJob:
        return cls(rayjob["metadata"]["name"], rayjob["metadata"].get("uid"))


Action = CreateAttempt | DeleteRayJob


@dataclass(frozen=True)
class Problem:
    """Something observed that the job cannot use, with the reason and a message that says what to do."""

    reason: Reason
    message: str


@dataclass(frozen=True)
class RayAuth:
    """How the Ray cluster of a new attempt authenticates, and why: what the installed KubeRay supports (read from
    its CRD) or the operator's setting. `reason` is the RayAuth condition's: TokenAuth, RayAuthUnverified (token
    auth asked for, support unknown), RayAuthUnsupported or RayAuthDisabled (none)."""

    mode: RayAuthMode
    reason: Reason
    message: str


@dataclass(frozen=True)
class Observed:
    rayjob: dict[str, Any] | None = None  # the current attempt's RayJob, known to be owned by this CPTJob
    progress: Progress | None = None  # already known to be this incarnation's and this attempt's
    preflight: PreflightResult | None = None
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(UTC))
    progress_problem: Problem | None = None  # the progress file was there but not taken (damaged, foreign, unreadable)
    foreign_rayjob: str | None = None  # the current attempt's RayJob name is held by an object we do not own
    launch_blocked: Problem | None = None  # creating the attempt's children failed (foreign object, rejected)
    ray_auth: RayAuth | None = None  # how a new attempt's Ray cluster authenticates (known when one may start)


@dataclass
class Decision:
    status: CPTJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
