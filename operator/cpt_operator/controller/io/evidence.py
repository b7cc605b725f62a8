"""Failure evidence: an ended attempt's pod logs, copied to `<checkpoint.uri>/logs/attempt-N/` before its RayJob goes.

An attempt's pods are found as KubeRay makes them: the submitter pod of the RayJob's Kubernetes Job
(label `batch.kubernetes.io/job-name=<rayjob>`; in K8sJobMode it runs `ray job submit` and follows
the driver, so its log is the driver's output) and the Ray head and workers (our pod template labels
`cpt.dev/job`, `cpt.dev/attempt`; KubeRay's `ray.io/node-type` says head or worker).

Bounded like every other I/O of the operator: at most `log_copy_max_bytes` per container (its end,
read as a stream, with a truncation marker in front), `log_copy_max_pods` pods, the whole copy
within `log_copy_timeout_seconds`, uploads through the `StorageGate`. A copy that fails never holds
the job: the RayJob is deleted (or kept) anyway and a LogsNotCopied event says what is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import layout, names
from cpt_core.storage import Storage, StorageError

from cpt_operator.controller.io.gate import StorageGate
from cpt_operator.controller.io.kube import ApiError, Kube
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)


def attempt_logs_uri(checkpoint_uri: str, attempt: int) -> str:
    return layout.under(checkpoint_uri, layout.attempt_logs(attempt))


@dataclass(frozen=True)
class PodLog:
    """One container of an attempt's pod: `role` is driver, head or worker."""

    role: str
    pod: str
    container: str
    phase: str | None = None

    @property
    def file(self) -> str:
        return f"{self.role}-{self.pod}-{self.container}.log"


def role_of(pod: dict[str, Any]) -> str:
    labels = pod.get("metadata", {}).get("labels") or {}
    if names.SUBMITTER_JOB_LABEL in labels or names.SUBMITTER_JOB_LABEL_LEGACY in labels:
        return "driver"
    return "head" if labels.get(names.RAY_NODE_TYPE_LABEL) == "head" else "worker"


async def attempt_pods(kube: Kube, namespace: str, job: str, rayjob: str, attempt: int) -> list[PodLog]:
    """The containers of one attempt's pods: driver first, then head, then workers."""
    selectors = (f"{names.SUBMITTER_JOB_LABEL}={rayjob}", f"{names.JOB_LABEL}={job},{names.ATTEMPT_LABEL}={attempt}")
    found: dict[str, PodLog] = {}
    for selector in selectors:
        for pod in await kube.list_objects("", "v1", "pods", namespace, selector):
            name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
            for container in (pod.get("spec") or {}).get("containers") or []:
                found[f"{name}/{container['name']}"] = PodLog(role_of(pod), name, container["name"], phase)
    order = {"driver": 0, "head": 1, "worker": 2}
    return sorted(found.values(), key=lambda p: (order[p.role], p.pod, p.container))


@dataclass
class CopyResult:
    uri: str
    copied: list[PodLog] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        roles = [p.role for p in self.copied]
        parts = [f"{roles.count(r)} {r}" for r in ("driver", "head", "worker") if roles.count(r)]
        return ", ".join(parts) or "no pods"


def truncation_marker(dropped: int, kept: int) -> bytes:
    return f"[cpt-operator: log truncated: the first {dropped} bytes were dropped, the last {kept} follow]\n".encode()


async def copy_attempt_logs(
    kube: Kube,
    gate: StorageGate,
    storage: Storage,
    job: CPTJob,
    rayjob: dict[str, Any] | None,
    rayjob_name: str,
    attempt: int,
    settings: OperatorSettings,
) -> CopyResult:
    """Copy the attempt's pod logs (and the RayJob's last status) to `<checkpoint.uri>/logs/attempt-N/`."""
    namespace = job.metadata.namespace or ""
    result = CopyResult(attempt_logs_uri(job.spec.checkpoint.uri, attempt))

    async def copy() -> None:
        if rayjob is not None:
            doc = {"name": rayjob_name, "attempt": attempt, "status": rayjob.get("status") or {}}
            data = json.dumps(doc, indent=2).encode()
            await gate.run(storage, storage.write_bytes, result.uri + "rayjob-status.json", data)
        pods = await attempt_pods(kube, namespace, job.metadata.name, rayjob_name, attempt)
        if len(pods) > settings.log_copy_max_pods:
            result.problems.append(f"{len(pods) - settings.log_copy_max_pods} containers over the limit skipped")
            pods = pods[: settings.log_copy_max_pods]
        for pod in pods:
            try:
                data, dropped = await kube.pod_log(namespace, pod.pod, pod.container, settings.log_copy_max_bytes)
            except ApiError as exc:
                result.problems.append(f"{pod.pod}/{pod.container}: {exc.message}")
                continue
            if dropped:
                data = truncation_marker(dropped, len(data)) + data
            await gate.run(storage, storage.write_bytes, result.uri + pod.file, data)
            result.copied.append(pod)

    try:
        await asyncio.wait_for(copy(), settings.log_copy_timeout_seconds)
    except asyncio.TimeoutError:
        result.problems.append(f"not finished within {settings.log_copy_timeout_seconds:g} s")
    except (ApiError, StorageError, OSError) as exc:
        result.problems.append(str(exc))
    if not result.copied and not result.problems:
        result.problems.append("no pods of this attempt were found (already deleted?)")
    return result
