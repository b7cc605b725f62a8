"""Apply `spec.cluster.podOverrides` and the operator's imagePullSecrets to a built Ray pod template (pure).

Precedence: the operator's pod < spec.cluster shorthands < overrides in list order. Lists append
(env and volumes by name, mounts by path: a later entry replaces an earlier one), maps merge (security
contexts too, key by key), single values replace. What the operator must own (image, command, CPT_* env,
Secret-fed env, the spec mount, CPU/memory/GPU, its labels) is rejected earlier, by the API models
(`cpt_core.api.v1alpha1.pods`); what the cluster's admin does not allow, by `controller.policy.pods`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from cpt_core.api.v1alpha1 import PodOverride, PodTarget
from cpt_core.contract import names


def _upsert(items: list[dict[str, Any]], new: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    out = list(items)
    for item in new:
        index = next((i for i, old in enumerate(out) if old.get(key) == item.get(key)), None)
        if index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = copy.deepcopy(item)
    return out


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged over `base`, maps recursively (a securityContext keeps the operator's settings it
    does not mention: overriding fsGroup keeps runAsNonRoot)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merged(out[key], value) if both else copy.deepcopy(value)
    return out


def pull_secrets(names: Iterable[str]) -> list[dict[str, str]]:
    return [{"name": name} for name in dict.fromkeys(names)]


def apply_overrides(
    template: dict[str, Any], overrides: list[PodOverride], target: PodTarget, image_pull_secrets: list[str]
) -> dict[str, Any]:
    """The pod template with the operator's pull secrets and the overrides aimed at `target` applied."""
    out = copy.deepcopy(template)
    metadata, spec = out.setdefault("metadata", {}), out["spec"]
    container = spec["containers"][0]
    operator_labels = dict(metadata.get("labels", {}))
    if image_pull_secrets:
        spec["imagePullSecrets"] = pull_secrets(image_pull_secrets)
    for override in overrides:
        if target not in override.targets:
            continue
        if override.labels:
            metadata["labels"] = {**metadata.get("labels", {}), **override.labels, **operator_labels}
        if override.annotations:
            metadata["annotations"] = {**metadata.get("annotations", {}), **override.annotations}
        if override.env:
            container["env"] = _upsert(container.get("env", []), override.env, "name")
        if override.env_from:
            container["envFrom"] = [*container.get("envFrom", []), *copy.deepcopy(override.env_from)]
        if override.volumes:
            spec["volumes"] = _upsert(spec.get("volumes", []), override.volumes, "name")
        if override.volume_mounts:
            container["volumeMounts"] = _upsert(container.get("volumeMounts", []), override.volume_mounts, "mountPath")
        if override.resources:
            resources = container.setdefault("resources", {})
            for kind in ("requests", "limits"):
                resources[kind] = {**resources.get(kind, {}), **{k: str(v) for k, v in override.resources.items()}}
        if override.node_selector:
            spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **override.node_selector}
        if override.affinity is not None:
            spec["affinity"] = copy.deepcopy(override.affinity)
        if override.tolerations:
            spec["tolerations"] = [*spec.get("tolerations", []), *copy.deepcopy(override.tolerations)]
        if override.topology_spread_constraints:
            spec["topologySpreadConstraints"] = [
                *spec.get("topologySpreadConstraints", []),
                *copy.deepcopy(override.topology_spread_constraints),
            ]
        if override.security_context is not None:
            spec["securityContext"] = _merged(spec.get("securityContext") or {}, override.security_context)
        if override.container_security_context is not None:
            container["securityContext"] = _merged(
                container.get("securityContext") or {}, override.container_security_context
            )
        for field, key in (
            ("scheduler_name", "schedulerName"),
            ("service_account_name", "serviceAccountName"),
            ("priority_class_name", "priorityClassName"),
        ):
            value = getattr(override, field)
            if value is not None:
                spec[key] = value
        if override.image_pull_secrets:
            existing = [s["name"] for s in spec.get("imagePullSecrets", [])]
            spec["imagePullSecrets"] = pull_secrets([*existing, *(s["name"] for s in override.image_pull_secrets)])
    # An operator volume whose mount a user mount replaced (e.g. a PVC at /var/cache/cpt) is dropped.
    mounted = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
    spec["volumes"] = [
        v
        for v in spec.get("volumes", [])
        if v["name"] in mounted or v["name"] not in (names.SHM_VOLUME, names.CACHE_VOLUME)
    ]
    return out
