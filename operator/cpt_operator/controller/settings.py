"""Operator settings: flags of `cpt operator`, each with an environment variable (CPT_OPERATOR_*)."""

from __future__ import annotations

import json
import os
from typing import Literal

from cpt_core import __version__
from pydantic import BaseModel, Field

from cpt_operator.controller.policy.admin import AdminPolicy

ENV_PREFIX = "CPT_OPERATOR_"


class OperatorSettings(BaseModel):
    """Everything the operator needs besides the CPTJobs themselves."""

    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means cluster-wide."""
    trainer_image: str = f"ghcr.io/cpt-operator/cpt-trainer:{__version__}"
    """Default image of the Ray head and workers (spec.cluster.image overrides it)."""
    ray_version: str = "2.60.0"
    """Ray version of the trainer image (KubeRay's rayVersion)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of the Ray pods."""
    image_pull_secrets: list[str] = Field(default_factory=list)
    """Secrets (in each job's namespace) to pull the trainer image with, on every Ray pod; a job adds its
    own with spec.cluster.podOverrides[].imagePullSecrets. Comma-separated in the environment."""
    poll_seconds: float = 10.0
    """How often each active job's RayJob and progress file are read."""
    preflight_backoff_seconds: float = 10.0
    """First retry delay after a failed preflight; doubles up to preflight_backoff_max_seconds."""
    preflight_backoff_max_seconds: float = 300.0
    """Longest delay between preflight retries."""
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint (0 disables it)."""
    health_port: int = 8081
    """Port of the liveness endpoint /healthz (0 disables it)."""
    head_cpu: str = "2"
    """Default CPU of the Ray head (spec.cluster.headResources overrides it)."""
    head_memory: str = "8Gi"
    """Default memory of the Ray head."""
    max_worker_failures: int = 1
    """Ray Train restarts of lost workers inside one attempt, before the attempt fails."""
    s3_connect_timeout_seconds: float = 3.0
    """Seconds the operator waits to connect to an S3 endpoint (preflight, progress file)."""
    s3_read_timeout_seconds: float = 10.0
    """Seconds the operator waits for an S3 response once connected."""
    s3_max_attempts: int = 2
    """Attempts per S3 call the operator makes (the first try plus retries)."""
    storage_threads: int = 32
    """Threads for the operator's S3 calls (boto3 is synchronous)."""
    storage_calls_per_endpoint: int = 8
    """S3 calls in flight per endpoint at most: a dead endpoint holds no more threads than this."""
    storage_breaker_seconds: float = 15.0
    """After an endpoint did not answer, further calls to it fail at once for this long."""
    storage_deadline_seconds: float = 60.0
    """Upper bound on one storage operation (a preflight makes several calls)."""
    api_timeout_seconds: float = 30.0
    """Upper bound on one Kubernetes API call the operator makes besides kopf's own."""
    log_copy_max_bytes: int = 10 * 1024 * 1024
    """Bytes of each container's log copied when an attempt ends (its end; a marker says what was dropped)."""
    log_copy_max_pods: int = 64
    """Containers whose logs are copied per ended attempt at most (driver, head, then workers)."""
    log_copy_timeout_seconds: float = 60.0
    """Upper bound on copying one ended attempt's logs; the RayJob goes (or is kept) after it either way."""
    log_format: Literal["text", "json"] = "text"
    """Log format of the operator: text (one line per record) or json (one JSON object per line, kopf's)."""
    hub_preflight: Literal["check", "skip"] = "check"
    """`check`: before requesting pods, ask the Hugging Face Hub whether each hf:// model exists and the token
    can read it (when the operator cannot reach the Hub, the job goes on with a warning in the log);
    `skip`: never contact the Hub (an operator without egress)."""
    hub_timeout_seconds: float = 10.0
    """Upper bound on the Hub preflight of one job (all its hf:// models)."""
    s3_endpoint: str | None = None
    """S3 endpoint the operator itself uses instead of spec.storage.endpoint (an operator outside the
    cluster network, e.g. a port-forward); the pods always use spec.storage.endpoint."""
    storage_calls_per_namespace: int = 4
    """S3 calls in flight per namespace at most: one tenant's slow endpoints hold no more threads than this."""
    progress_max_bytes: int = 1024 * 1024
    """The largest progress file the operator reads; a larger one is ignored (ProgressUnreadable) unread."""
    policy: AdminPolicy = Field(default_factory=AdminPolicy)
    """What a tenant's CPTJob may make the operator do: storage endpoints and credentials, the Ray pods
    (Helm values `policy`, JSON in the environment). See docs/security.md."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> OperatorSettings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if field.annotation == list[str]:
                values[name] = [v.strip() for v in raw.split(",") if v.strip()]
            elif field.annotation == AdminPolicy or field.annotation == "AdminPolicy":
                values[name] = json.loads(raw or "{}")
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None and v != []})
        return cls.model_validate(values)
