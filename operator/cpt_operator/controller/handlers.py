"""kopf handlers: register the triggers and hand every one to the `Reconciler`. Nothing else.

Every CPTJob is reconciled on create/resume/update (a kick: the reconciliation runs in a task of
its own, so kopf's per-object worker, deletion included, never waits for it) and by a timer every
`poll_seconds` (given up when the job is deleted); all of them go through one `Reconciler`
(`reconciler.py`), which runs one reconciliation per job at a time on a fresh read of the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import kopf
from cpt_core.contract.names import CPTJOBS, GROUP

from cpt_operator.controller.io.kube import Kube
from cpt_operator.controller.lifecycle.conditions import (
    is_final,
)
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.reconciler import Reconciler, parse_status
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)


async def _until(flag: Any) -> None:
    await flag.wait()  # kopf's async DaemonStopped: `await flag` itself raises


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, metrics: Metrics, login: Any = None) -> None:
    """Register the operator's handlers on `registry`."""
    resource = CPTJOBS
    holder: dict[str, Reconciler] = {}

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Handler bookkeeping goes to annotations: the CRD's status schema has no place for it.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own events only, not kopf's handler chatter
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 20
        # A deleted job's finalizer goes when its timer has returned; kopf checks that every
        # `cancellation_polling` seconds (default 60) unless the timer exits "instantly".
        settings.background.instant_exit_timeout = 0.2
        settings.background.cancellation_polling = 1

    @kopf.on.login(registry=registry)
    def authenticate(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login or kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None and "reconciler" not in holder:
            holder["reconciler"] = Reconciler(Kube(info, timeout=settings.api_timeout_seconds), settings, metrics)
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if "reconciler" in holder:
            await holder.pop("reconciler").close()

    def active(body: kopf.Body) -> Reconciler | None:
        """The reconciler, unless the operator is stopping or the job is finished (final is final: kopf's
        copy suffices, no fresh read per poll of a finished job)."""
        meta = body["metadata"]
        reconciler = holder.get("reconciler")
        known = parse_status(json.loads(json.dumps(body.get("status") or {}, default=dict)))[0]
        if is_final(known) and not known.kept_ray_jobs:  # kept RayJobs are deleted when their time is up
            metrics.set_phase(meta["namespace"], meta["name"], known.phase.value if known.phase else None)
            metrics.observe_job(meta["namespace"], meta["name"], known)
            return None
        return reconciler

    async def handle(body: kopf.Body, **_: Any) -> None:
        reconciler = active(body)
        if reconciler is not None:
            meta = body["metadata"]
            try:
                await reconciler(meta["namespace"], meta["name"], meta["uid"])
            except Exception:
                metrics.reconcile_errors.inc()
                raise  # transient (API or network trouble): the timer comes back at the next poll

    async def kick(body: kopf.Body, **_: Any) -> None:
        reconciler = active(body)
        if reconciler is not None:
            reconciler.kick(body["metadata"]["namespace"], body["metadata"]["name"], body["metadata"]["uid"])

    for decorator in (
        kopf.on.create(*resource, registry=registry),
        kopf.on.resume(*resource, registry=registry),
        kopf.on.update(*resource, field="spec", registry=registry),
    ):
        decorator(kick)

    @kopf.timer(*resource, interval=settings.poll_seconds, registry=registry)
    async def poll(body: kopf.Body, **kwargs: Any) -> None:
        """`handle`, given up once the job is deleted or the operator stops: kopf lets a deleted object go
        only after its timer returned, and a reconciliation waiting on a dead endpoint must not hold it."""
        work = asyncio.ensure_future(handle(body))
        halt = asyncio.ensure_future(_until(kwargs["stopped"]))
        try:
            await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halt.cancel()
            if not work.done():
                work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    @kopf.on.event(*resource, registry=registry)
    def forget_deleted(type: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            metrics.set_phase(body["metadata"]["namespace"], body["metadata"]["name"], None)
            metrics.forget_job(body["metadata"]["namespace"], body["metadata"]["name"])
            if "reconciler" in holder:
                holder["reconciler"].forget(body["metadata"]["uid"])
