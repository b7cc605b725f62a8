"""Pod customisation of the Ray head and workers: `spec.cluster.podOverrides`.

Shaped after Kubeflow Trainer v2's PodTemplateOverrides (a list of overrides, each aimed at some
pods), flattened because a Ray pod has exactly one container the user may touch. The Kubernetes
shapes (EnvVar, Volume, Affinity, ...) are not re-typed here: they are Kubernetes' own schemas,
taken from KubeRay v1.7.0's RayJob CRD (`k8s_pod_schema.json`, written by
`hack/vendor_pod_schema.py`). The generated CPTJob CRD embeds them, and these models check values
against them (stricter: unknown keys are errors, not silently pruned), so a CPTJob the API accepts
renders to a RayJob that KubeRay's CRD accepts.

Precedence (documented in docs/user-guide.md): the operator's pod (image, command, CPT_* env,
credentials, spec ConfigMap, GPU/CPU/memory, its labels) < spec.cluster shorthands (nodeSelector,
tolerations, ...) < podOverrides in list order. What the operator must own cannot be overridden:
such values are rejected with a one-line error naming the field.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, GetJsonSchemaHandler, StringConstraints, model_validator

from cpt_core.api.v1alpha1.base import FieldError, _Model
from cpt_core.contract import names

#: Environment variables the operator fills from Secret references in the spec (name -> that field).
SECRET_ENV: dict[str, str] = {
    **{key: "spec.storage.credentialsSecret" for key, _ in names.CREDENTIAL_KEYS},
    names.HF_TOKEN: "spec.model.tokenSecret",
    **{key: "spec.tracking.mlflow.credentialsSecret" for key in names.TRACKING_KEYS["mlflow"]},
    **{key: "spec.tracking.wandb.apiKeySecret" for key in names.TRACKING_KEYS["wandb"]},
}
#: Label keys the operator sets on every Ray pod (it selects its pods by them), and prefixes it owns.
OPERATOR_LABELS = names.APP_LABELS
OPERATOR_LABEL_PREFIXES = (names.LABEL_PREFIX, names.RAY_LABEL_PREFIX)
#: Resources the spec sets elsewhere (name -> the field to use).
OWNED_RESOURCES = {
    "cpu": "spec.cluster.workerResources / headResources",
    "memory": "spec.cluster.workerResources / headResources",
    "nvidia.com/gpu": "spec.cluster.gpusPerWorker",
}

#: Container fields a user may reasonably try that the operator must own (key -> what to do instead).
OWNED_CONTAINER_FIELDS = {
    "image": "set spec.cluster.image",
    "command": "it runs `cpt train` on the head and Ray on the workers; not overridable",
    "args": "it runs `cpt train` on the head and Ray on the workers; not overridable",
    "containers": "pod overrides change the one Ray container through env, volumeMounts, resources, "
    "containerSecurityContext",
}

_SCHEMA_FILE = Path(__file__).with_name("k8s_pod_schema.json")


@functools.lru_cache(maxsize=1)
def k8s_definitions() -> dict[str, Any]:
    """The vendored core/v1 schemas, keyed by type name (structural, as in KubeRay's CRD)."""
    definitions: dict[str, Any] = json.loads(_SCHEMA_FILE.read_text())["definitions"]
    return definitions


def _strict(node: Any) -> Any:
    """A copy in which objects with declared properties reject unknown keys (the API server would
    prune them silently: a misspelt `medum: Memory` would vanish)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    open_ended = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not open_ended:
        out["additionalProperties"] = False
    return out


@functools.cache
def _validator(kind: str) -> Any:
    import jsonschema

    return jsonschema.Draft4Validator(_strict(k8s_definitions()[kind]))


def _message(err: Any) -> str:
    if err.validator == "pattern" and "KMGTPE" in str(err.validator_value):
        return f'must be a Kubernetes quantity such as 1, "500m" or "16Gi" (got {err.instance!r})'
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        known = ", ".join(sorted(err.schema.get("properties", {})))
        return f"unknown field {', '.join(repr(e) for e in extra)} (known: {known})"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required")
    return str(err.message)


def _checked(kind: str) -> Any:
    def check(value: Any) -> Any:
        errors = sorted(_validator(kind).iter_errors(value), key=lambda e: (len(e.absolute_path), str(e.path)))
        if errors:
            err = errors[0]
            raise FieldError(tuple(err.absolute_path), f"{_message(err)} (a core/v1 {kind})")
        return value

    return check


@dataclass(frozen=True)
class K8sShape:
    """Marks a value as the core/v1 type `kind` in the CRD (that type's schema); `_checked` validates it."""

    kind: str

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"type": "string" if self.kind == "Quantity" else "object", "x-cpt-k8s": self.kind}


EnvVar = Annotated[dict[str, Any], AfterValidator(_checked("EnvVar")), K8sShape("EnvVar")]
EnvFromSource = Annotated[dict[str, Any], AfterValidator(_checked("EnvFromSource")), K8sShape("EnvFromSource")]
Volume = Annotated[dict[str, Any], AfterValidator(_checked("Volume")), K8sShape("Volume")]
VolumeMount = Annotated[dict[str, Any], AfterValidator(_checked("VolumeMount")), K8sShape("VolumeMount")]
Affinity = Annotated[dict[str, Any], AfterValidator(_checked("Affinity")), K8sShape("Affinity")]
K8sToleration = Annotated[dict[str, Any], AfterValidator(_checked("Toleration")), K8sShape("Toleration")]
TopologySpreadConstraint = Annotated[
    dict[str, Any], AfterValidator(_checked("TopologySpreadConstraint")), K8sShape("TopologySpreadConstraint")
]
PodSecurityContext = Annotated[
    dict[str, Any], AfterValidator(_checked("PodSecurityContext")), K8sShape("PodSecurityContext")
]
SecurityContext = Annotated[dict[str, Any], AfterValidator(_checked("SecurityContext")), K8sShape("SecurityContext")]
LocalObjectReference = Annotated[
    dict[str, Any], AfterValidator(_checked("LocalObjectReference")), K8sShape("LocalObjectReference")
]
#: A resource quantity, a number or a string ("4", "500m", 1); as core/v1 ResourceList values.
ResourceQuantity = Annotated[int | str, AfterValidator(_checked("Quantity")), K8sShape("Quantity")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class PodTarget(str, Enum):
    head = "head"
    workers = "workers"


class PodOverride(_Model):
    """Changes to the Ray pods, applied over what the operator builds (see the precedence in the
    user guide). Every field is optional; lists append, maps merge, single values replace."""

    targets: list[PodTarget] = Field(
        default_factory=lambda: [PodTarget.head, PodTarget.workers], min_length=1, max_length=2
    )
    """Which pods this override changes: `head`, `workers` or both (the default)."""
    labels: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(default_factory=dict)
    """Pod labels, merged over the operator's (whose keys, and `cpt.dev/`/`ray.io/` ones, are reserved)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Pod annotations (e.g. a CNI network attachment, a sidecar opt-out)."""
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    """Environment variables of the Ray container (core/v1 EnvVar: value or valueFrom), e.g. NCCL settings
    or proxies. A name already set replaces that entry; `CPT_*` names and those the operator fills from a
    Secret reference of the spec are reserved."""
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=64)
    """Whole ConfigMaps or Secrets as environment (core/v1 EnvFromSource). `env` wins over these."""
    volumes: list[Volume] = Field(default_factory=list, max_length=64)
    """Pod volumes (core/v1 Volume): PVCs, ConfigMaps, Secrets, emptyDirs, CSI. A volume with the name of an
    earlier override's replaces it; the names `dshm`, `cache` and `job-spec` are the operator's."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=64)
    """Mounts into the Ray container (core/v1 VolumeMount). A mount at /dev/shm or /var/cache/cpt replaces
    the operator's memory-backed /dev/shm or its emptyDir model/data cache; /etc/cpt is reserved."""
    resources: dict[Annotated[str, StringConstraints(min_length=1, max_length=253)], ResourceQuantity] = Field(
        default_factory=dict, max_length=16
    )
    """Extra resources of the Ray container, requested and limited alike: e.g. `rdma/hca: 1`,
    `vpc.amazonaws.com/efa: 4`, `hugepages-2Mi: 1Gi`. CPU, memory and GPUs come from spec.cluster."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the pods must match, merged over spec.cluster.nodeSelector."""
    affinity: Affinity | None = None
    """Node, pod and anti-pod affinity (core/v1 Affinity); replaces an earlier one."""
    tolerations: list[K8sToleration] = Field(default_factory=list, max_length=64)
    """Tolerations (core/v1 Toleration), appended to spec.cluster.tolerations."""
    topology_spread_constraints: list[TopologySpreadConstraint] = Field(default_factory=list, max_length=16)
    """How the pods spread over zones or nodes (core/v1 TopologySpreadConstraint)."""
    security_context: PodSecurityContext | None = None
    """The pod's securityContext (core/v1 PodSecurityContext: runAsUser, fsGroup, seccompProfile, ...)."""
    container_security_context: SecurityContext | None = None
    """The Ray container's securityContext (core/v1 SecurityContext: capabilities such as IPC_LOCK for
    RDMA, readOnlyRootFilesystem, ...)."""
    scheduler_name: Name | None = None
    """A scheduler other than the default (e.g. volcano, a gang scheduler)."""
    service_account_name: Name | None = None
    """ServiceAccount of the pods (e.g. one bound to a cloud IAM role); replaces spec.cluster.serviceAccountName."""
    priority_class_name: Name | None = None
    """PriorityClass of the pods; replaces spec.cluster.priorityClassName."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets to pull the trainer image with, added to the operator's (`imagePullSecrets` in the chart)."""

    @model_validator(mode="before")
    @classmethod
    def _container_owned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, hint in OWNED_CONTAINER_FIELDS.items():
                if key in data:
                    raise FieldError((key,), f"the operator owns the Ray container's {key}; {hint}")
        return data

    @model_validator(mode="after")
    def _operator_owned(self) -> PodOverride:
        if len(set(self.targets)) != len(self.targets):
            raise FieldError(("targets",), "lists a pod kind twice; use head, workers or both once")
        for key in self.labels:
            if key in OPERATOR_LABELS or key.startswith(OPERATOR_LABEL_PREFIXES):
                raise FieldError(("labels", key), "is set by the operator (it selects its pods by it); use another key")
        for i, var in enumerate(self.env):
            name = var["name"]
            if name.startswith(names.ENV_PREFIX):
                raise FieldError(
                    ("env", i, "name"), f"{name}: {names.ENV_PREFIX}* variables are set by the operator; remove it"
                )
            if name.startswith(names.RAY_AUTH_ENV_PREFIX) or name == names.RAY_K8S_TOKEN_AUTH_ENV:
                raise FieldError(
                    ("env", i, "name"),
                    f"{name}: Ray's authentication is set up by KubeRay from the job's token (a pod's own value would "
                    "replace it and could turn it off); remove it",
                )
            if name in SECRET_ENV:
                raise FieldError(
                    ("env", i, "name"),
                    f"{name} is set by the operator from {SECRET_ENV[name]} (a Secret reference); "
                    "set that field instead",
                )
        for i, volume in enumerate(self.volumes):
            if volume["name"] in names.OPERATOR_VOLUMES:
                raise FieldError(
                    ("volumes", i, "name"),
                    f"'{volume['name']}' is a volume of the operator ({', '.join(names.OPERATOR_VOLUMES)}); "
                    "choose another name",
                )
        for i, mount in enumerate(self.volume_mounts):
            if mount["mountPath"].rstrip("/") == names.SPEC_MOUNT:
                raise FieldError(
                    ("volumeMounts", i, "mountPath"),
                    f"{names.SPEC_MOUNT} holds the job spec the operator mounts; use another path",
                )
        for name in self.resources:
            if name in OWNED_RESOURCES:
                raise FieldError(("resources", name), f"set by the operator; use {OWNED_RESOURCES[name]}")
        return self


def check_mounts(overrides: list[PodOverride]) -> None:
    """Every volumeMount names a volume that the pod it lands in has (the API server would reject the pod
    only when KubeRay creates it, after the GPUs were requested)."""
    for target in PodTarget:
        volumes = {names.SHM_VOLUME, names.CACHE_VOLUME} | ({names.SPEC_VOLUME} if target == PodTarget.head else set())
        for override in overrides:
            if target in override.targets:
                volumes |= {v["name"] for v in override.volumes}
        for i, override in enumerate(overrides):
            if target not in override.targets:
                continue
            for j, mount in enumerate(override.volume_mounts):
                if mount["name"] not in volumes:
                    raise FieldError(
                        (i, "volumeMounts", j, "name"),
                        f"no volume '{mount['name']}' in the {target.value} pod; add it to volumes of an override "
                        f"that targets {target.value}",
                    )


def structural(kind: str) -> dict[str, Any]:
    """The CRD schema of a core/v1 type (a copy; the CRD generator embeds it)."""
    return copy.deepcopy(k8s_definitions()[kind])
