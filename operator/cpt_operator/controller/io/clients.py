"""The operator's S3 clients: one per endpoint and credentials (the job's, never the operator's own unless the
admin policy lends them), with short timeouts, few retries and hard deadlines."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping

from cpt_core.api import v1alpha1 as api
from cpt_core.contract.names import AWS_REGION_ENV
from cpt_core.storage import S3Settings, Storage

from cpt_operator.controller.settings import OperatorSettings

_STORAGE: dict[tuple[str, ...], Storage] = {}


def storage_for(
    spec: api.StorageSpec,
    secret: Mapping[str, str | None] | None,
    settings: OperatorSettings,
    ambient: bool = False,
) -> Storage:
    """The operator's Storage for a job: the job's own credentials (`secret`, the decoded Secret), or with
    `ambient` (only where the admin policy lends it) the operator's own identity; without either -- a Secret
    without an access key included -- unsigned requests: the operator (or `cpt logs`, whose process's own
    credentials these would be) never falls back to its own identity on a job's behalf.

    One Storage per (endpoint, region, credentials): creating a boto3 client costs ~100 ms and ~10 MB,
    so jobs that share a Secret share a client (boto3 clients are thread-safe). The operator's clients
    have short timeouts, few retries and hard deadlines: a dead endpoint must cost seconds, not minutes."""
    if secret is not None:
        env = {k: v for k, v in secret.items() if v is not None}
    else:
        env = dict(os.environ) if ambient else {}
    s3 = S3Settings.from_spec(spec, {**env, AWS_REGION_ENV: spec.region})
    s3 = dataclasses.replace(
        s3,
        endpoint=settings.s3_endpoint or s3.endpoint,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
        # botocore's credential chain (environment, web identity, instance metadata) would find the process's own.
        anonymous=not ambient and (secret is None or not s3.access_key_id),
        hard_deadlines=True,
    )
    key = (
        str(s3.endpoint),
        s3.region,
        s3.addressing_style,
        str(s3.access_key_id),
        hashlib.sha256(str(s3.secret_access_key).encode()).hexdigest(),
        str(s3.session_token),
        f"{s3.connect_timeout}/{s3.read_timeout}/{s3.max_attempts}/{s3.anonymous}",
    )
    storage = _STORAGE.get(key)
    if storage is None:
        if len(_STORAGE) > 64:
            _STORAGE.clear()
        storage = _STORAGE[key] = Storage(s3)
    return storage
