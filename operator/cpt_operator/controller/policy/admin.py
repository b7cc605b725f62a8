"""The admin policy, as the operator reads it (`CPT_OPERATOR_POLICY`: JSON of the Helm values' `policy`).

Defaults are the safe ones: no tenant borrows the operator's identity, storage endpoints that resolve to
loopback, link-local, private or cluster addresses are refused, and Ray pods follow the Pod Security
"restricted" profile with the configured trainer image only.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Addresses a tenant's storage endpoint may not resolve to unless the admin allows it (RFC 6890 specials).
PRIVATE_RANGES = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "::ffff:0:0/96",
    "fc00::/7",
    "fe80::/10",
)


class _Policy(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, extra="forbid", populate_by_name=True, use_attribute_docstrings=True
    )


def matches(value: str, patterns: list[str]) -> bool:
    """`value` matches one of the shell-style `patterns` (`*` within a name, e.g. `registry.example.com/*`)."""
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


class StoragePolicy(_Policy):
    """Which S3 endpoints and whose credentials a job's storage uses."""

    ambient_credentials_namespaces: list[str] = Field(default_factory=list)
    """Namespaces (patterns; `*` for all) whose jobs may leave spec.storage.credentialsSecret unset and have
    the operator (and the Ray pods) use the ambient identity (an IAM role of the ServiceAccount, an instance
    role). Elsewhere a job must name a Secret: the operator never lends its own identity."""
    allowed_endpoints: list[str] = Field(default_factory=list)
    """`host` or `host:port` patterns: when set, the only endpoints a job's spec.storage.endpoint may name (each
    allowed whatever it resolves to). Empty: any endpoint whose addresses are public, and privateEndpoints."""
    private_endpoints: list[str] = Field(default_factory=list)
    """`host` or `host:port` patterns that may resolve to private or cluster addresses (an in-cluster MinIO,
    `minio.minio.svc:9000`) without restricting the other endpoints."""
    forced_endpoint: str | None = None
    """Every job's storage is this endpoint: spec.storage.endpoint must be unset or equal to it."""
    allow_private_endpoints: bool = False
    """Allow endpoints that resolve to loopback, link-local, private or cluster addresses (single-tenant
    clusters, development)."""
    cluster_ranges: list[str] = Field(default_factory=list)
    """The cluster's pod and service CIDRs, refused like private addresses (e.g. `10.96.0.0/12`)."""


def ambient_allowed(namespace: str, policy: StoragePolicy) -> bool:
    """Whether jobs in `namespace` may use the ambient identity (no credentials Secret)."""
    return matches(namespace, policy.ambient_credentials_namespaces)


class PodPolicy(_Policy):
    """What the Ray pods of a job may be: the operator creates them for the tenant, so they may not be more
    than the tenant could create itself."""

    profile: Literal["restricted", "baseline", "privileged"] = "restricted"
    """The Pod Security Standard every Ray pod must meet (the operator's own pods meet `restricted`)."""
    allowed_images: list[str] = Field(default_factory=list)
    """Images (patterns) spec.cluster.image may name. Empty: the operator's trainer image repository, any tag."""
    allowed_capabilities: list[str] = Field(default_factory=list)
    """Linux capabilities a pod override may add beyond the profile's (e.g. IPC_LOCK for RDMA)."""
    allowed_volume_types: list[str] = Field(default_factory=list)
    """Volume types beyond the profile's (`hostPath` needs allowedHostPaths as well)."""
    allowed_host_paths: list[str] = Field(default_factory=list)
    """Path prefixes a hostPath volume may mount, when hostPath is allowed."""
    allowed_service_accounts: list[str] = Field(default_factory=lambda: ["default"])
    """ServiceAccounts (patterns) the Ray pods may run as (spec.cluster.serviceAccountName, podOverrides)."""
    allowed_secrets: list[str] = Field(default_factory=list)
    """Secrets (patterns) pod overrides may read (env valueFrom, envFrom, secret and projected volumes),
    besides the ones the spec names in its own fields (credentialsSecret, tokenSecret, ...)."""
    allowed_priority_classes: list[str] = Field(default_factory=list)
    """PriorityClasses (patterns) the Ray pods may use; `system-*` is refused unless listed."""
    allowed_toleration_keys: list[str] = Field(default_factory=list)
    """Taint keys (patterns) a toleration may name; empty: any key except the control plane's."""
    allowed_scheduler_names: list[str] = Field(default_factory=list)
    """Schedulers (patterns) a pod override may name; empty: any."""


class AdminPolicy(_Policy):
    """The whole policy (Helm values `policy`)."""

    storage: StoragePolicy = Field(default_factory=StoragePolicy)
    """Storage endpoints and credentials."""
    pods: PodPolicy = Field(default_factory=PodPolicy)
    """The Ray pods."""
