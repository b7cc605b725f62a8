"""What operator tests read and write around the real operator: status, conditions, events, progress files."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cpt_core.api.progress import Progress

from devkit.k8s_emulator import CPTJOBS, EVENTS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3


def status(cluster: EmulatorThread, name: str, ns: str = "ml") -> dict[str, Any]:
    obj = cluster.get(CPTJOBS, ns, name)
    return (obj or {}).get("status") or {}


def conditions(cluster: EmulatorThread, name: str, ns: str = "ml") -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status(cluster, name, ns).get("conditions", [])}


def condition_is(
    cluster: EmulatorThread, name: str, type_: str, value: str, reason: str, ns: str = "ml"
) -> Callable[[], Any]:
    def check() -> Any:
        c = conditions(cluster, name, ns).get(type_)
        return c is not None and c["status"] == value and c["reason"] == reason and c

    return check


def phase_is(cluster: EmulatorThread, name: str, phase: str, ns: str = "ml") -> Callable[[], Any]:
    return lambda: status(cluster, name, ns).get("phase") == phase and status(cluster, name, ns)


def events(cluster: EmulatorThread, name: str, ns: str = "ml") -> list[dict[str, Any]]:
    """The job's events in the order they were posted."""
    found = [e for e in cluster.list(EVENTS, ns) if e["involvedObject"]["name"] == name]
    return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))


def reasons(cluster: EmulatorThread, name: str) -> list[str]:
    return [e["reason"] for e in events(cluster, name)]


def write_progress(
    cluster: EmulatorThread, s3: SeaweedS3, name: str, state: str, attempt: int = 1, ns: str = "ml", **fields: Any
) -> None:
    """What the trainer of `name`'s current incarnation would write (job, uid and attempt are its own
    unless given)."""
    uid = fields.pop("uid", None) or cluster.get(CPTJOBS, ns, name)["metadata"]["uid"]
    job = fields.pop("job", name)
    progress = Progress(job=job, uid=uid, attempt=attempt, state=state, **fields)  # type: ignore[arg-type]
    write_raw_progress(s3, name, progress.to_json())


def write_raw_progress(s3: SeaweedS3, name: str, text: str) -> None:
    s3.client().put_object(Bucket=s3.bucket, Key=f"runs/{name}/_status/progress.json", Body=text.encode())


def set_rayjob_status(
    cluster: EmulatorThread, name: str, deployment: str, job_status: str, ns: str = "ml", **extra: Any
) -> None:
    cluster.patch(
        RAYJOBS,
        ns,
        name,
        {"status": {"jobDeploymentStatus": deployment, "jobStatus": job_status, **extra}},
        subresource="status",
    )
