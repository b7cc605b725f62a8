"""Pure builders of the objects the operator creates: the spec ConfigMap and the RayJob.

Each takes the typed CPTJob plus explicit settings and returns a plain dict (snapshot-tested,
and validated against KubeRay's v1.7.0 CRD schema in the tests). Credentials appear only as
`secretKeyRef`s; the Ray cluster's token only as the name of its Secret (`authOptions`), and no
built container sets Ray's authentication variables (KubeRay keeps a value it finds there).
"""

from __future__ import annotations

import copy
import shlex
from typing import Any, Literal

import yaml
from cpt_core.api.v1alpha1 import CPTJob, PodTarget, Resources
from cpt_core.contract import names

from cpt_operator.controller.build.names import auth_secret_name, configmap_name, rayjob_name
from cpt_operator.controller.build.overrides import apply_overrides
from cpt_operator.controller.policy.pods import RESTRICTED_CONTAINER_CONTEXT, RESTRICTED_POD_CONTEXT
from cpt_operator.controller.settings import OperatorSettings

__all__ = ["RayAuthMode", "build_configmap", "build_rayjob", "dump_yaml", "labels", "owner_reference"]

#: How an attempt's Ray cluster authenticates (KubeRay's rayClusterSpec.authOptions): `token-secret`, with the
#: job's token in the Secret the operator owns (KubeRay 1.6+); `token`, with a token KubeRay generates per Ray
#: cluster (1.5.1+); `off`, none.
RayAuthMode = Literal["token-secret", "token", "off"]


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so rendered ConfigMaps stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump_yaml(*documents: Any) -> str:
    return yaml.dump_all(documents, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=120)


def owner_reference(job: CPTJob) -> dict[str, Any]:
    """Makes the CPTJob the controller of a child, so deleting the job garbage-collects it."""
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: CPTJob, attempt: int | None = None) -> dict[str, str]:
    out = {
        names.APP_NAME_LABEL: "cpt-trainer",
        names.APP_INSTANCE_LABEL: job.metadata.name,
        names.APP_COMPONENT_LABEL: "training",
        names.APP_PART_OF_LABEL: "cpt-operator",
        names.APP_MANAGED_BY_LABEL: "cpt-operator",
        names.JOB_LABEL: job.metadata.name,
    }
    if attempt is not None:
        out[names.ATTEMPT_LABEL] = str(attempt)
    return out


def build_configmap(job: CPTJob) -> dict[str, Any]:
    """The resolved job (every default explicit) that `cpt train` reads on the Ray head."""
    metadata = {"name": job.metadata.name, "namespace": job.metadata.namespace, "uid": job.metadata.uid}
    document = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {k: v for k, v in metadata.items() if v},
        "spec": job.spec.resolved().wire(),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": labels(job),
            "ownerReferences": [owner_reference(job)],
        },
        "data": {names.SPEC_KEY: dump_yaml(document)},
    }


def _resources(
    res: Resources, gpus: int = 0, default_cpu: str | None = None, default_memory: str | None = None
) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if res.cpu or default_cpu:
        amounts["cpu"] = res.cpu or default_cpu or ""
    if res.memory or default_memory:
        amounts["memory"] = res.memory or default_memory or ""
    limits: dict[str, Any] = dict(amounts)
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    out: dict[str, Any] = {}
    if amounts:
        out["requests"] = dict(amounts)
    if limits:
        out["limits"] = limits
    return out


def _env(job: CPTJob) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The model cache; hub downloads land in it too (<cache>/huggingface), so a PVC there keeps them.
        {"name": names.CACHE_DIR_ENV, "value": names.CACHE_DIR},
    ]
    if not job.spec.hub_models():
        # Nothing to fetch from the Hugging Face Hub: a stray lookup must not hang on a cluster without egress.
        env.append({"name": names.HF_OFFLINE_ENV, "value": "1"})
    env.append({"name": "TOKENIZERS_PARALLELISM", "value": "false"})
    token = job.spec.model.token_secret
    if token is not None:
        env.append({"name": names.HF_TOKEN, "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    secret = job.spec.storage.credentials_secret
    if secret:
        for key, optional in names.CREDENTIAL_KEYS:
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    tracking = job.spec.tracking
    sinks = [
        (tracking.mlflow.credentials_secret if tracking.mlflow else None, names.TRACKING_KEYS["mlflow"]),
        (tracking.wandb.api_key_secret if tracking.wandb else None, names.TRACKING_KEYS["wandb"]),
    ]
    for name, keys in sinks:
        for key in keys if name else ():
            ref = {"name": name, "key": key, "optional": True}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    push = job.spec.checkpoint.export.push
    if push is not None and push.token_secret:  # the Hub write token for `export.push` (issue 15)
        ref = {"name": push.token_secret, "key": push.TOKEN_KEY}
        env.append({"name": push.TOKEN_ENV, "valueFrom": {"secretKeyRef": ref}})
    return env


def _pod_template(
    job: CPTJob, settings: OperatorSettings, container: str, resources: dict[str, Any], head: bool, attempt: int
) -> dict[str, Any]:
    cluster = job.spec.cluster
    mounts: list[dict[str, Any]] = [
        {"name": names.SHM_VOLUME, "mountPath": names.SHM_DIR},
        {"name": names.CACHE_VOLUME, "mountPath": names.CACHE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": names.SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}},
        {"name": names.CACHE_VOLUME, "emptyDir": {}},
    ]
    if head:
        mounts.append({"name": names.SPEC_VOLUME, "mountPath": names.SPEC_MOUNT, "readOnly": True})
        volumes.append({"name": names.SPEC_VOLUME, "configMap": {"name": configmap_name(job.metadata.name)}})
    ray_container: dict[str, Any] = {
        "name": container,
        "image": cluster.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": _env(job),
        "resources": resources,
        "volumeMounts": mounts,
    }
    spec: dict[str, Any] = {"containers": [ray_container], "volumes": volumes}
    if settings.policy.pods.profile == "restricted":  # the pods meet the Pod Security profile they are held to
        spec["securityContext"] = copy.deepcopy(RESTRICTED_POD_CONTEXT)
        ray_container["securityContext"] = copy.deepcopy(RESTRICTED_CONTAINER_CONTEXT)
    if not head:
        if cluster.node_selector:
            spec["nodeSelector"] = dict(cluster.node_selector)
        if cluster.tolerations:
            spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in cluster.tolerations]
    if cluster.priority_class_name:
        spec["priorityClassName"] = cluster.priority_class_name
    if cluster.service_account_name:
        spec["serviceAccountName"] = cluster.service_account_name
    template = {"metadata": {"labels": labels(job, attempt)}, "spec": spec}
    target = PodTarget.head if head else PodTarget.workers
    return apply_overrides(template, cluster.pod_overrides, target, settings.image_pull_secrets)


def entrypoint(job: CPTJob, attempt: int, settings: OperatorSettings) -> str:
    args = ["cpt", "train", f"{names.SPEC_MOUNT}/{names.SPEC_KEY}", "--attempt", str(attempt)]
    if job.metadata.uid:
        args += ["--uid", job.metadata.uid]
    args += ["--max-worker-failures", str(settings.max_worker_failures)]
    return shlex.join(args)


def auth_options(job: CPTJob, auth: RayAuthMode) -> dict[str, Any] | None:
    """KubeRay's rayClusterSpec.authOptions for `auth` (None: none at all, for a KubeRay without them)."""
    if auth == "token-secret":
        return {"mode": "token", "secretName": auth_secret_name(job.metadata.name)}
    if auth == "token":
        return {"mode": "token"}
    return None


def build_rayjob(job: CPTJob, attempt: int, settings: OperatorSettings, auth: RayAuthMode = "off") -> dict[str, Any]:
    """The RayJob of one attempt: a head that runs `cpt train` and one worker group that trains; with `auth`,
    a Ray cluster that requires a token (the operator passes what the installed KubeRay supports)."""
    cluster = job.spec.cluster
    policy = job.spec.run_policy
    meta_labels = labels(job, attempt)
    queue = job.metadata.labels.get(names.QUEUE_LABEL)
    if queue:
        meta_labels[names.QUEUE_LABEL] = queue
    head_resources = _resources(cluster.head_resources, 0, settings.head_cpu, settings.head_memory)
    worker_resources = _resources(cluster.worker_resources, cluster.gpus_per_worker)
    spec: dict[str, Any] = {
        "entrypoint": entrypoint(job, attempt, settings),
        # The operator owns retries (each one resumes from a checkpoint); KubeRay must not retry.
        "backoffLimit": 0,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            "headGroupSpec": {
                # The head runs the driver only: no training or data tasks land on it.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": _pod_template(job, settings, "ray-head", head_resources, head=True, attempt=attempt),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "trainers",
                    "replicas": cluster.workers,
                    "minReplicas": cluster.workers,
                    "maxReplicas": cluster.workers,
                    "rayStartParams": {},
                    "template": _pod_template(
                        job, settings, "ray-worker", worker_resources, head=False, attempt=attempt
                    ),
                }
            ],
        },
    }
    options = auth_options(job, auth)
    if options is not None:
        spec["rayClusterSpec"]["authOptions"] = options
    if policy.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    return {
        "apiVersion": names.RAYJOB_API_VERSION,
        "kind": names.RAYJOB_KIND,
        "metadata": {
            "name": rayjob_name(job.metadata.name, attempt),
            "namespace": job.metadata.namespace,
            "labels": meta_labels,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": spec,
    }
