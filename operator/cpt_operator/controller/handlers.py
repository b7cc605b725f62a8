"""kopf handlers: observe, call the pure `state.reconcile`, carry out its actions. Nothing else.

Every CPTJob is reconciled on create/resume/update and by a timer every `poll_seconds`: the
timer reads the current attempt's RayJob and the trainer's progress file (fenced to the
current attempt), and runs the storage preflight when an attempt is due.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from typing import Any

import kopf
from cpt_core.api import v1alpha1 as api
from cpt_core.api.progress import UnreadableProgress, read_progress
from cpt_core.api.validation import validate
from cpt_core.reasons import Reason
from cpt_core.storage import S3Settings, Storage, StorageError

from .builders import build_configmap, build_rayjob
from .kube import Kube
from .metrics import Metrics
from .preflight import check_storage
from .settings import OperatorSettings
from .state import CreateAttempt, DeleteRayJob, Observed, needs_preflight, preflight_backoff, reconcile

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


_STORAGE: dict[tuple[str, ...], Storage] = {}


def storage_for(spec: api.StorageSpec, secret: dict[str, str] | None, endpoint: str | None = None) -> Storage:
    """A Storage per (endpoint, region, credentials): creating a boto3 client costs ~100 ms and ~10 MB,
    so jobs that share a Secret share a client (boto3 clients are thread-safe)."""
    env = dict(secret) if secret is not None else dict(os.environ)
    settings = S3Settings.from_spec(spec, {**env, "AWS_REGION": spec.region})
    if endpoint:
        settings = dataclasses.replace(settings, endpoint=endpoint)
    key = (
        str(settings.endpoint),
        settings.region,
        settings.addressing_style,
        str(settings.access_key_id),
        hashlib.sha256(str(settings.secret_access_key).encode()).hexdigest(),
        str(settings.session_token),
    )
    storage = _STORAGE.get(key)
    if storage is None:
        if len(_STORAGE) > 64:
            _STORAGE.clear()
        storage = _STORAGE[key] = Storage(settings)
    return storage


async def reconcile_job(
    body: kopf.Body, patch: kopf.Patch, kube: Kube, settings: OperatorSettings, metrics: Metrics
) -> None:
    started = time.monotonic()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if body["metadata"].get("deletionTimestamp"):
        return  # being deleted: children go with it (garbage collection); never create new ones
    now = dt.datetime.now(dt.timezone.utc)
    raw = json.loads(json.dumps(dict(body), default=dict))  # kopf's views -> plain JSON
    document = {k: v for k, v in raw.items() if k in ("apiVersion", "kind", "metadata", "spec", "status")}
    status_doc = dict(document.get("status") or {})
    known = {field.alias or key for key, field in api.CPTJobStatus.model_fields.items()}
    document["status"] = {k: v for k, v in status_doc.items() if k in known}
    report = validate(document, server_checked=True)
    if report.job is None:
        # The CRD schema admits it but the models do not (e.g. a semantic rule): fail once, visibly.
        message = "; ".join(str(e) for e in report.errors)
        if status_doc.get("phase") != api.Phase.Failed.value:
            kopf.event(body, type="Warning", reason=Reason.InvalidSpec.value, message=message)
            patch.status.update({"phase": api.Phase.Failed.value, "message": f"invalid spec: {message}"})
            metrics.set_phase(namespace, name, api.Phase.Failed.value)
        return
    job = report.job
    job.metadata.namespace = namespace
    status = job.status or api.CPTJobStatus()
    if status.phase in (api.Phase.Succeeded, api.Phase.Failed):
        metrics.set_phase(namespace, name, status.phase.value)
        return

    spec = job.spec
    secret_name = spec.storage.credentials_secret
    secret = await kube.secret_data(namespace, secret_name) if secret_name else None
    rayjob = await kube.get("ray.io", "v1", "rayjobs", namespace, status.ray_job_name) if status.ray_job_name else None

    storage = storage_for(spec.storage, secret if secret_name else None, settings.s3_endpoint)
    progress = None
    if status.attempt > 0 and (secret is not None or not secret_name):
        try:
            progress = await asyncio.to_thread(
                read_progress,
                storage,
                spec.resolved().checkpoint.uri,
                job=name,
                uid=job.metadata.uid,
                attempt=status.attempt,
            )
        except (StorageError, UnreadableProgress) as exc:
            log.warning("%s/%s: cannot read progress: %s", namespace, name, exc)

    preflight = None
    if rayjob is None and needs_preflight(job, now):
        preflight = await asyncio.to_thread(check_storage, job, secret, storage)
        if not preflight.ok:
            metrics.preflight_failures.labels(reason=preflight.reason).inc()

    decision = reconcile(job, Observed(rayjob, progress, preflight, now), warnings=[str(w) for w in report.warnings])
    if preflight is not None and not preflight.ok:
        delay = preflight_backoff(
            decision.status.preflight_failures,
            settings.preflight_backoff_seconds,
            settings.preflight_backoff_max_seconds,
        )
        decision.status.next_preflight_time = (now + dt.timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")

    for action in decision.actions:
        if isinstance(action, CreateAttempt):
            await kube.apply_configmap(build_configmap(job))
            await kube.create(build_rayjob(job, action.attempt, settings))
            metrics.rayjobs_created.inc()
            if action.attempt > 1:
                metrics.restarts.inc()
        elif isinstance(action, DeleteRayJob):
            await kube.delete("ray.io", "v1", "rayjobs", namespace, action.name)
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])

    new_status = decision.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    changes = _status_patch(document["status"], new_status)
    if changes:
        patch.status.update(changes)
    metrics.set_phase(namespace, name, decision.status.phase.value if decision.status.phase else None)
    metrics.reconcile_seconds.observe(time.monotonic() - started)


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, metrics: Metrics, login: Any = None) -> None:
    """Register the operator's handlers on `registry`."""
    resource = (api.GROUP, api.VERSION, api.PLURAL)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Handler bookkeeping goes to annotations: the CRD's status schema has no place for it.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="cpt.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="cpt.dev", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING  # our own events only, not kopf's handler chatter
        settings.watching.server_timeout = 300
        settings.execution.max_workers = 20

    @kopf.on.login(registry=registry)
    def authenticate(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login or kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None and memo.get("kube") is None:
            memo["kube"] = Kube(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        if memo.get("kube") is not None:
            await memo["kube"].close()

    async def handle(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        try:
            await reconcile_job(body, patch, memo["kube"], settings, metrics)
        except Exception:
            metrics.reconcile_errors.inc()
            raise

    for decorator in (
        kopf.on.create(*resource, registry=registry),
        kopf.on.resume(*resource, registry=registry),
        kopf.on.update(*resource, field="spec", registry=registry),
        kopf.timer(*resource, interval=settings.poll_seconds, registry=registry),
    ):
        decorator(handle)

    @kopf.on.event(*resource, registry=registry)
    def forget_deleted(type: str, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            metrics.set_phase(body["metadata"]["namespace"], body["metadata"]["name"], None)
