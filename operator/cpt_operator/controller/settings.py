"""Operator settings: flags of `cpt operator`, each with an environment variable (CPT_OPERATOR_*)."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from cpt_core import __version__
from cpt_core.contract import names
from pydantic import BaseModel, Field, field_validator

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
    kuberay_auth: Literal["auto", "token-secret", "token", "off"] = "auto"
    """Token authentication of every job's Ray cluster (KubeRay's rayClusterSpec.authOptions). `auto`: what the
    installed KubeRay supports, read from the rayjobs.ray.io CRD -- `token-secret` where authOptions has
    secretName (KubeRay 1.6+), `token` where it has only mode (1.5.1+), else `off` with a warning on each job; when
    the CRD cannot be read, `token-secret` with a warning. `token-secret`: a random token per job in a Secret the
    operator owns, reused by every attempt; `token`: KubeRay generates a token per Ray cluster; `off`: no
    authentication (only the NetworkPolicy keeps other pods out). An explicit value is used as it is: the CRD is
    not read (the chart then grants no access to it)."""
    kuberay_detect_seconds: float = Field(300.0, gt=0)
    """How long what the rayjobs.ray.io CRD said (kuberay_auth `auto`) is used before it is read again."""
    network_policy: bool = True
    """Create a NetworkPolicy per job that admits to its Ray pods only the job's own Ray pods (every port), the
    current attempt's submitter pod and the KubeRay operator (the dashboard port), plus
    network_policy_extra_ingress. It takes effect where the cluster's network plugin enforces NetworkPolicies."""
    kuberay_namespace: str = "kuberay-system"
    """Namespace of the KubeRay operator, admitted to each Ray head's dashboard port (it polls the job's status)."""
    kuberay_pod_labels: dict[str, str] = Field(default_factory=lambda: {names.APP_NAME_LABEL: "kuberay-operator"})
    """Labels that select the KubeRay operator's pods in kuberay_namespace (the KubeRay Helm chart's default).
    JSON in the environment."""
    network_policy_extra_ingress: list[dict[str, Any]] = Field(default_factory=list)
    """More ingress rules for every job's NetworkPolicy, as Kubernetes writes them (NetworkPolicyIngressRule:
    `from` peers, `ports`), e.g. Prometheus scraping Ray's metrics port. JSON in the environment."""
    policy: AdminPolicy = Field(default_factory=AdminPolicy)
    """What a tenant's CPTJob may make the operator do: storage endpoints and credentials, the Ray pods
    (Helm values `policy`, JSON in the environment). See docs/security.md."""

    @field_validator("network_policy_extra_ingress")
    @classmethod
    def _ingress_rules(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The shape of each rule, checked at start-up: a wrong one would make every job's NetworkPolicy fail."""
        peer_keys = {"podSelector", "namespaceSelector", "ipBlock"}
        for i, rule in enumerate(rules):
            if not set(rule) <= {"from", "ports"}:
                raise ValueError(f"rule {i}: only `from` and `ports` (a NetworkPolicyIngressRule), not {sorted(rule)}")
            for peer in rule.get("from") or []:
                if not isinstance(peer, dict) or not peer or not set(peer) <= peer_keys:
                    raise ValueError(f"rule {i}: each `from` peer has podSelector, namespaceSelector or ipBlock")
            for port in rule.get("ports") or []:
                if not isinstance(port, dict) or not set(port) <= {"port", "endPort", "protocol"}:
                    raise ValueError(f"rule {i}: each of `ports` has port, endPort and protocol only")
        return rules

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
            elif field.annotation in (AdminPolicy, "AdminPolicy", dict[str, str]):
                values[name] = json.loads(raw or "{}")
            elif field.annotation == list[dict[str, Any]]:
                values[name] = json.loads(raw or "[]")
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None and v != []})
        return cls.model_validate(values)
