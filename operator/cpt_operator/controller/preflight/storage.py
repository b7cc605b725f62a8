"""Preflight: check storage before a single GPU is requested.

1. the credentials Secret exists and has the keys the pods need;
2. every bucket the job uses answers HeadBucket with those credentials;
3. every data URI (and an s3:// model source) lists at least one object;
4. the checkpoint prefix is writable (a probe object is written and deleted).

Local paths (`file://` or plain) refer to the trainer image or a volume and cannot be checked
from the operator; they are skipped. The checks run in a thread (boto3 is synchronous).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import layout
from cpt_core.contract.names import AWS_REGION_ENV, CREDENTIAL_KEYS
from cpt_core.contract.reasons import Reason
from cpt_core.storage import AccessDenied, S3Settings, Storage, StorageError, Unreachable, parse_uri

from cpt_operator.controller.lifecycle.decision import PreflightResult
from cpt_operator.controller.preflight.secrets import secret_problem


def check_secret(job: CPTJob, secret: Mapping[str, str | None] | None) -> PreflightResult | None:
    """None when the credentials Secret is fine (or none is referenced), else the failure (pure)."""
    name = job.spec.storage.credentials_secret
    if not name:
        return None
    keys = {key: "..." for key, _ in CREDENTIAL_KEYS}
    optional = [key for key, is_optional in CREDENTIAL_KEYS if is_optional]
    return secret_problem(job.metadata.namespace, name, "spec.storage.credentialsSecret", secret, keys, optional)


def _failure(exc: StorageError, what: str) -> PreflightResult:
    """AccessDenied for credential problems; BucketUnreachable for everything else (no bucket, odd errors).
    An endpoint that does not answer (`Unreachable`) is not caught here: the caller's storage gate
    must see it (its breaker spares the other jobs on that endpoint)."""
    if isinstance(exc, Unreachable):
        raise exc
    return PreflightResult(
        False, Reason.AccessDenied if isinstance(exc, AccessDenied) else Reason.BucketUnreachable, f"{what}: {exc}"
    )


def check_storage(
    job: CPTJob, secret: Mapping[str, str | None] | None, storage: Storage | None = None
) -> PreflightResult:
    """The full preflight for one job; `secret` is the decoded Secret data (None: not found).

    Raises `Unreachable` when the endpoint does not answer (reported as StorageUnreachable)."""
    failed = check_secret(job, secret)
    if failed is not None:
        return failed
    spec = job.spec.resolved()
    if not spec.checkpoint.uri.startswith("s3://"):
        return PreflightResult(
            False,
            Reason.CheckpointNotOnObjectStorage,
            f"spec.checkpoint.uri {spec.checkpoint.uri} is a local path; on a cluster it must be s3:// (the operator "
            "reads progress from it, and a pod's local disk dies with the pod). Local paths work with `cpt run`",
        )
    env = {k: v for k, v in (secret or {}).items() if v is not None}
    storage = storage or Storage(S3Settings.from_spec(spec.storage, {**env, AWS_REGION_ENV: spec.storage.region}))
    s3_uris = [spec.checkpoint.uri, spec.cache_uri]
    s3_uris += [uri for source in spec.data.sources for uri in source.uris]
    if spec.model.source.startswith("s3://"):
        s3_uris.append(spec.model.source)
    buckets = sorted({parse_uri(uri).bucket for uri in s3_uris if uri.startswith("s3://")})
    for bucket in buckets:
        try:
            storage.check_bucket(f"s3://{bucket}/")
        except StorageError as exc:
            return _failure(exc, f"bucket '{bucket}'")
    for i, source in enumerate(spec.data.sources):
        for j, uri in enumerate(source.uris):
            if not uri.startswith("s3://"):
                continue
            try:
                found = storage.list_objects(uri, limit=1)
            except StorageError as exc:
                return _failure(exc, f"spec.data.sources[{i}].uris[{j}]")
            if not found:
                return PreflightResult(
                    False,
                    Reason.DataNotFound,
                    f"spec.data.sources[{i}].uris[{j}] {uri} lists no objects (source '{source.name}')",
                )
    if spec.model.source.startswith("s3://"):
        try:
            if not storage.list_objects(spec.model.source, limit=1):
                return PreflightResult(
                    False, Reason.DataNotFound, f"spec.model.source {spec.model.source} lists no objects"
                )
        except StorageError as exc:
            return _failure(exc, "spec.model.source")
    if spec.checkpoint.uri.startswith("s3://"):
        probe = parse_uri(spec.checkpoint.uri).as_prefix().join(f"{layout.PREFLIGHT_PROBE}{uuid.uuid4().hex[:8]}")
        try:
            storage.write_bytes(probe, b"preflight")
            storage.delete(probe)
        except StorageError as exc:
            return _failure(exc, f"writing below spec.checkpoint.uri {spec.checkpoint.uri}")
    return PreflightResult(True, Reason.Ready, "storage checked")
