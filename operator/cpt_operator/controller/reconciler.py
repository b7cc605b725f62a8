"""The Reconciler: one reconciliation per job at a time -- observe, decide with the pure `reconcile`, act,
write the status, then post the decision's events.

A reconciliation reads the current attempt's RayJob (only when this CPTJob owns it) and the
trainer's progress file (only this incarnation's and attempt's), runs the storage preflight when
an attempt is due (on the `StorageGate`: bounded, never on asyncio's default pool), decides, acts,
writes the status, then posts the decision's events. The kopf handlers (`handlers.py`) only call it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from typing import Any, cast

import kopf
from cpt_core.api import v1alpha1 as api
from cpt_core.api.progress import Progress
from cpt_core.contract import layout, names
from cpt_core.contract.clock import timestamp
from cpt_core.contract.names import CPTJOBS, CREDENTIAL_KEYS, RAYJOBS
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Storage, StorageError, Unreachable
from cpt_core.storage.progress import UnreadableProgress, load_progress
from cpt_core.validation.validate import Report, validate
from pydantic import ValidationError

from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.io.clients import storage_for
from cpt_operator.controller.io.evidence import copy_attempt_logs
from cpt_operator.controller.io.gate import StorageGate
from cpt_operator.controller.io.kube import ForeignObject, Kube
from cpt_operator.controller.io.kuberay import KubeRayFeatures
from cpt_operator.controller.launch import create_attempt
from cpt_operator.controller.lifecycle.conditions import (
    current_rayjob_name,
    expire_kept,
    is_final,
    needs_preflight,
    parse_time,
    preflight_backoff,
)
from cpt_operator.controller.lifecycle.decision import (
    CreateAttempt,
    Decision,
    DeleteRayJob,
    Event,
    Observed,
    PreflightResult,
    Problem,
    RayAuth,
)
from cpt_operator.controller.lifecycle.reconcile import reconcile
from cpt_operator.controller.lifecycle.rejection import reject_spec
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.policy.admin import ambient_allowed
from cpt_operator.controller.policy.endpoints import EndpointResolver, name_problem, uses_s3
from cpt_operator.controller.policy.pods import pod_problems
from cpt_operator.controller.preflight.hub import hub_preflight
from cpt_operator.controller.preflight.storage import check_storage
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)


def _status_patch(old: dict[str, Any], new: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) from `old` to `new`: only what changed, nested fields that
    disappeared become null (a merge patch of a whole object would keep stale nested keys)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = _status_patch(before, value, top=False)
            if nested:
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    for key in old:
        if key not in new and not (top and key == "kopf"):
            patch[key] = None
    return patch


_STATUS_FIELDS = {field.alias or key for key, field in api.CPTJobStatus.model_fields.items()}


def parse_status(raw: Any) -> tuple[api.CPTJobStatus, list[str]]:
    """The status as the models read it. A field the operator cannot parse (damaged by hand, or written by
    another version) is reset and named in the returned list: never fatal, never an InvalidSpec."""
    doc = {k: v for k, v in raw.items() if k in _STATUS_FIELDS} if isinstance(raw, dict) else {}
    reset: list[str] = []
    while True:
        try:
            status = api.CPTJobStatus.model_validate(doc)
            break
        except ValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]} & set(doc)
            if not bad:
                status, reset = api.CPTJobStatus(), reset + list(doc)
                break
            for key in sorted(bad):
                doc.pop(key)
                reset.append(key)
    if status.next_preflight_time is not None and parse_time(status.next_preflight_time) is None:
        status.next_preflight_time = None
        reset.append("nextPreflightTime")
    return status, reset


class Reconciler:
    """One reconciliation per job at a time.

    kopf runs the create/resume/update handlers (kicks) and the timer of one object concurrently.
    Each call takes the job's lock, then reads the object afresh (a queued call must not decide on a
    status an earlier call already changed), decides, acts and writes the status itself before it
    releases the lock. So every transition is decided once: one status write and one event."""

    def __init__(self, kube: Kube, settings: OperatorSettings, metrics: Metrics) -> None:
        self.kube, self.settings, self.metrics = kube, settings, metrics
        self.gate = StorageGate(
            threads=settings.storage_threads,
            per_endpoint=settings.storage_calls_per_endpoint,
            cooldown=settings.storage_breaker_seconds,
            deadline=settings.storage_deadline_seconds,
            per_tenant=settings.storage_calls_per_namespace,
        )
        self.resolver = EndpointResolver(timeout=settings.s3_connect_timeout_seconds)
        self.kuberay = KubeRayFeatures(kube, settings)
        self._locks: dict[str, asyncio.Lock] = {}
        self._queued: set[str] = set()
        self._kicked: set[asyncio.Task[None]] = set()

    async def __call__(self, namespace: str, name: str, uid: str) -> None:
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            self._queued.discard(uid)  # from here on, a new kick queues another run: it may carry a newer spec
            body = await self.kube.get(*CPTJOBS, namespace, name)
            if body is None or body["metadata"].get("uid") != uid:
                return  # deleted, or a new incarnation with its own lock
            await self.reconcile(body)

    def kick(self, namespace: str, name: str, uid: str) -> None:
        """Reconcile soon, in a task of our own. kopf's change handlers cannot be cancelled and hold the
        object's worker (its deletion included) while they run; a kick returns at once. Kicks coalesce:
        one queued run reads the newest object anyway."""
        if uid in self._queued:
            return
        self._queued.add(uid)
        task = asyncio.ensure_future(self._run_kicked(namespace, name, uid))
        self._kicked.add(task)
        task.add_done_callback(self._kicked.discard)

    async def _run_kicked(self, namespace: str, name: str, uid: str) -> None:
        try:
            await self(namespace, name, uid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the poll timer retries; a traceback helps nobody here
            self.metrics.reconcile_errors.inc()
            log.warning("%s/%s: reconciliation failed, retried at the next poll: %s", namespace, name, exc)
        finally:
            self._queued.discard(uid)

    def forget(self, uid: str) -> None:
        """The job is gone: drop its lock (the operator's memory stays flat as jobs come and go)."""
        self._locks.pop(uid, None)
        self._queued.discard(uid)

    async def close(self) -> None:
        for task in list(self._kicked):
            task.cancel()
        await asyncio.gather(*self._kicked, return_exceptions=True)
        await self.kube.close()
        self.gate.close()

    # -- one reconciliation ----------------------------------------------------------------

    async def reconcile(self, body: dict[str, Any]) -> None:
        """Observe one CPTJob, decide with the pure state machine, act, write the status, post events."""
        started = time.monotonic()
        meta = body["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        if meta.get("deletionTimestamp"):
            return  # being deleted: children go with it (garbage collection); never create new ones
        now = dt.datetime.now(dt.timezone.utc)
        raw_status: dict[str, Any] = body["status"] if isinstance(body.get("status"), dict) else {}
        status, reset = parse_status(raw_status)
        if reset:
            log.warning("%s/%s: reset status field(s) it cannot parse: %s", namespace, name, ", ".join(reset))
        report = validate({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}, server_checked=True)
        if report.job is None:
            # The API server admitted it but the models do not: stop the attempt, keep checkpoints, say what to fix.
            rayjob, _ = await self._rayjob(namespace, status.ray_job_name, uid)
            problems = "; ".join(str(e) for e in report.errors)
            decision = reject_spec(status, problems, meta.get("generation"), rayjob, now)
            await self._delete_rayjobs(decision, namespace)
        else:
            job = report.job
            job.metadata.namespace = namespace
            job.status = status
            if is_final(status) and not reset:
                self.metrics.set_phase(namespace, name, status.phase.value if status.phase else None)
                self.metrics.observe_job(namespace, name, status)
                for deletion in expire_kept(status, now):  # its kept RayJobs still go when their time is up
                    await self.kube.delete(*RAYJOBS, namespace, deletion.name, uid=deletion.uid)
                    await self.kube.patch_status(*CPTJOBS, namespace, name, {"keptRayJobs": _kept(status)})
                return
            refused, endpoint = await self._policy(job)
            if refused:
                # The admin policy does not allow what the job asks for: stop the attempt, say which field and rule.
                rayjob, _ = await self._rayjob(namespace, status.ray_job_name, uid)
                problems = "; ".join(refused)
                decision = reject_spec(status, problems, meta.get("generation"), rayjob, now, Reason.RefusedByPolicy)
                await self._delete_rayjobs(decision, namespace)
            else:
                decision = await self._decide(job, report, now, endpoint)
        new_status = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        changes = _status_patch(raw_status, new_status)
        if changes:
            await self.kube.patch_status(*CPTJOBS, namespace, name, changes)
        for event in decision.events:  # after the status write: a failed write is retried without duplicate events
            kopf.event(cast(kopf.Body, body), type=event.type, reason=event.reason, message=event.message[:1000])
        self.metrics.set_phase(namespace, name, decision.status.phase.value if decision.status.phase else None)
        self.metrics.observe_job(namespace, name, decision.status)
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    async def _policy(self, job: api.CPTJob) -> tuple[list[str], str | None]:
        """What the admin policy refuses in `job` (one line each), and the key of its storage endpoint (where it
        resolves) for the gate's bulkhead."""
        policy, settings = self.settings.policy, self.settings
        spec, namespace = job.spec, job.metadata.namespace or ""
        refused = []
        if uses_s3(spec) and not spec.storage.credentials_secret and not ambient_allowed(namespace, policy.storage):
            refused.append(
                f"spec.storage.credentialsSecret: required in namespace {namespace}: the operator does not lend its "
                "own identity (or the pods') to jobs here; create a Secret with "
                f"{names.ACCESS_KEY_ID} and {names.SECRET_ACCESS_KEY} and name it"
            )
        endpoint = None
        named = name_problem(spec.storage.endpoint, policy.storage)
        if named is not None:
            refused.append(named)
        elif spec.storage.endpoint and not settings.s3_endpoint and uses_s3(spec):
            problem, endpoint = await self.resolver.check(spec.storage.endpoint, policy.storage)
            if problem is not None:
                refused.append(problem)
        rayjob = build_rayjob(job, max(1, (job.status.attempt if job.status else 0) or 1), settings)
        refused += pod_problems(job, rayjob, policy.pods, settings.trainer_image)
        return refused, endpoint

    async def _decide(self, job: api.CPTJob, report: Report, now: dt.datetime, endpoint: str | None) -> Decision:
        spec, meta, status = job.spec, job.metadata, job.status or api.CPTJobStatus()
        namespace = meta.namespace or ""
        secret_name = spec.storage.credentials_secret
        keys = [key for key, _ in CREDENTIAL_KEYS]
        secret = await self.kube.secret_data(namespace, secret_name, keys) if secret_name else None
        rayjob, foreign = await self._rayjob(namespace, current_rayjob_name(status), meta.uid)
        ambient = not secret_name and ambient_allowed(namespace, self.settings.policy.storage)
        storage = storage_for(spec.storage, secret, self.settings, ambient=ambient)
        bounded: dict[str, Any] = {"tenant": namespace, "endpoint": endpoint}

        progress, problem = None, None
        if status.attempt > 0 and (secret is not None or not secret_name):
            progress, problem = await _observe_progress(
                self.gate, storage, spec.checkpoint.uri, job, status.attempt, self.settings.progress_max_bytes, bounded
            )

        preflight = None
        if rayjob is None and needs_preflight(job, now):
            try:
                preflight = await self.gate.run(storage, check_storage, job, secret, storage, **bounded)
            except Unreachable as exc:
                preflight = PreflightResult(False, Reason.StorageUnreachable, str(exc))
            if preflight.ok:
                preflight = await hub_preflight(self.kube, job, self.settings) or preflight
            if not preflight.ok:
                self.metrics.preflight_failures.labels(reason=preflight.reason).inc()

        warnings = [str(w) for w in report.warnings]
        auth = await self.kuberay.auth() if preflight is not None and preflight.ok else None  # an attempt may start
        observed = Observed(
            rayjob, progress, preflight, now, progress_problem=problem, foreign_rayjob=foreign, ray_auth=auth
        )
        decision = reconcile(job, observed, warnings=warnings)
        blocked = await self._act(decision, job, storage, rayjob, auth)
        if blocked is not None:  # the attempt could not be created: decide again knowing why
            decision = reconcile(job, dataclasses.replace(observed, launch_blocked=blocked), warnings=warnings)
            await self._act(decision, job, storage, rayjob, auth)
        if decision.status.preflight_failures and decision.status.next_preflight_time is None:
            delay = preflight_backoff(
                decision.status.preflight_failures,
                self.settings.preflight_backoff_seconds,
                self.settings.preflight_backoff_max_seconds,
            )
            decision.status.next_preflight_time = timestamp(now + dt.timedelta(seconds=delay))
        return decision

    async def _rayjob(self, namespace: str, name: str | None, uid: str | None) -> tuple[Any, str | None]:
        """The current attempt's RayJob when this CPTJob owns it; else None, and why when a namesake holds the name."""
        if not name:
            return None, None
        try:
            return await self.kube.get_owned(*RAYJOBS, namespace, name, uid), None
        except ForeignObject as exc:
            return None, str(exc)

    async def _act(
        self,
        decision: Decision,
        job: api.CPTJob,
        storage: Storage,
        rayjob: dict[str, Any] | None,
        auth: RayAuth | None = None,
    ) -> Problem | None:
        """Carry out the decision's actions. A launch that cannot happen returns why (see `launch.create_attempt`)."""
        namespace = job.metadata.namespace or ""
        for action in decision.actions:  # an ended attempt's logs first: deleting its RayJob deletes its pods
            if isinstance(action, DeleteRayJob) and action.logs_of is not None:
                current = rayjob if rayjob is not None and rayjob["metadata"]["name"] == action.name else None
                decision.events.append(await self._copy_logs(job, storage, current, action))
        await self._delete_rayjobs(decision, namespace)
        for action in decision.actions:
            if not isinstance(action, CreateAttempt):
                continue
            problem = await create_attempt(
                self.kube, job, action.attempt, self.settings, auth or await self.kuberay.auth()
            )
            if problem is not None:
                return problem
            self.metrics.rayjobs_created.inc()
            if action.attempt > 1:
                self.metrics.restarts.inc()
        return None

    async def _copy_logs(
        self, job: api.CPTJob, storage: Storage, rayjob: dict[str, Any] | None, action: DeleteRayJob
    ) -> Event:
        attempt = action.logs_of or 0
        result = await copy_attempt_logs(
            self.kube, self.gate, storage, job, rayjob, action.name, attempt, self.settings
        )
        kept = f"; RayJob {action.name} is kept for runPolicy.ttlSecondsAfterFinished" if action.keep else ""
        if result.problems:
            self.metrics.log_copy_failures.inc()
            copied = f" ({result.summary()} copied)" if result.copied else ""
            message = (
                f"logs of attempt {attempt} not fully copied to {result.uri}{copied}: {'; '.join(result.problems)}"
            )
            return Event("Warning", Reason.LogsNotCopied.value, message + kept)
        return Event(
            "Normal",
            Reason.LogsCopied.value,
            f"logs of attempt {attempt} ({result.summary()}) copied to {result.uri}{kept}",
        )

    async def _delete_rayjobs(self, decision: Decision, namespace: str) -> None:
        for action in decision.actions:
            if isinstance(action, DeleteRayJob) and not action.keep:
                await self.kube.delete(*RAYJOBS, namespace, action.name, uid=action.uid)


def _kept(status: api.CPTJobStatus) -> list[dict[str, Any]]:
    return [k.model_dump(by_alias=True, exclude_none=True) for k in status.kept_ray_jobs]


async def _observe_progress(
    gate: StorageGate,
    storage: Storage,
    uri: str,
    job: api.CPTJob,
    attempt: int,
    max_bytes: int,
    bounded: dict[str, Any],
) -> tuple[Progress | None, Problem | None]:
    """The current attempt's progress file, or why the file that is there was not taken.

    A predecessor's file (same name, another uid) or another attempt's is expected until the trainer
    writes: ignored silently. Another job's, a damaged one or a failed read: a problem (a warning
    condition), never a phase change."""
    name = job.metadata.name
    try:
        found = await gate.run(storage, load_progress, storage, uri, max_bytes, **bounded)
    except UnreadableProgress as exc:
        return None, Problem(Reason.ProgressUnreadable, str(exc))
    except StorageError as exc:
        return None, Problem(Reason.ProgressUnavailable, str(exc))
    if found is None:
        return None, None
    if found.job != name:
        where = layout.under(uri, layout.PROGRESS)
        return None, Problem(
            Reason.ProgressForeign,
            f"{where} was written by job '{found.job}', not '{name}'; give each job its own spec.checkpoint.uri",
        )
    if not found.belongs_to(name, job.metadata.uid, attempt):
        return None, None
    return found, None
