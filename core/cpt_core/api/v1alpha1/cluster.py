"""`spec.cluster` and `spec.runPolicy`: the Ray cluster the operator requests for each attempt, and the
restarts, deadlines and suspension of attempts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from cpt_core.api.v1alpha1.base import (
    FieldError,
    Quantity,
    _Model,
)
from cpt_core.api.v1alpha1.pods import PodOverride, check_mounts


class Resources(_Model):
    """CPU and memory for a Ray pod (requests = limits)."""

    cpu: Quantity | None = None
    """CPU cores, e.g. "32" or "500m"."""
    memory: Quantity | None = None
    """Memory, e.g. "512Gi"."""


class Toleration(_Model):
    """A pod toleration (as in core/v1)."""

    key: str | None = None
    """Taint key to tolerate; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ClusterSpec(_Model):
    """The Ray cluster the operator requests. Ignored by `cpt run`."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Trainer image for head and workers. Default: the operator's configured trainer image."""
    workers: int = Field(default=1, ge=1, le=4096)
    """Ray worker pods; each runs one training process per GPU (or one on CPU)."""
    gpus_per_worker: int = Field(default=1, ge=0, le=64)
    """`nvidia.com/gpu` per worker pod; 0 trains on CPU."""
    worker_resources: Resources = Field(default_factory=Resources)
    """CPU and memory per worker pod."""
    head_resources: Resources = Field(default_factory=Resources)
    """CPU and memory for the Ray head pod (which does not train)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the worker pods (e.g. for tainted GPU nodes)."""
    priority_class_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """PriorityClass of the Ray pods."""
    service_account_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """ServiceAccount of the Ray pods (e.g. one bound to a cloud IAM role)."""
    shm_size: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm volume (NCCL and data loaders need more than the default 64M)."""
    pod_overrides: list[PodOverride] = Field(default_factory=list, max_length=16)
    """Changes to the Ray pods (env, volumes, affinity, securityContext, extra resources, ...), applied in
    order over what the operator builds; each targets the head, the workers or both. See PodOverride."""

    @model_validator(mode="after")
    def _mounts(self) -> ClusterSpec:
        try:
            check_mounts(self.pod_overrides)
        except FieldError as exc:
            raise FieldError(("podOverrides", *exc.loc), exc.message) from None
        return self


class RunPolicy(_Model):
    """Restarts, deadlines and suspension."""

    max_restarts: int = Field(default=3, ge=0, le=1000)
    """New attempts after a failed one; each resumes from the last committed checkpoint."""
    active_deadline_seconds: int = Field(default=0, ge=0)
    """Fail an attempt that runs longer than this; 0 means no deadline."""
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    """Keep the finished RayJob this long for inspection."""
    suspend: bool = False
    """Suspend the job: the Ray cluster is deleted, checkpoints are kept; setting it back to false
    starts a new attempt that resumes. Compatible with Kueue."""
