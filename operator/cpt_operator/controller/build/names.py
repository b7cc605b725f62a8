"""Names of the objects the operator creates, within Kubernetes' rules."""

from __future__ import annotations

import hashlib
import re

#: KubeRay derives Service and Pod names from the RayJob name; it rejects names over 47 characters.
RAYJOB_NAME_MAX = 47
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _shorten(base: str, suffix: str, limit: int) -> str:
    """`base` + `suffix`, shortened with a hash of the full name when it would exceed `limit`."""
    full = base + suffix
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def rayjob_name(job: str, attempt: int) -> str:
    """The RayJob of attempt N: DNS-1035 (starts with a letter), at most 47 characters, unique per attempt."""
    base = job if job[:1].isalpha() else f"cpt-{job}"
    name = _shorten(base, f"-a{attempt}", RAYJOB_NAME_MAX)
    assert _DNS1035.match(name), name
    return name


def configmap_name(job: str) -> str:
    """The ConfigMap holding the resolved job spec that the trainer reads."""
    return _shorten(job, "-spec", 63)


def is_dns1035(name: str) -> bool:
    return bool(_DNS1035.match(name)) and len(name) <= 63


def auth_secret_name(job: str) -> str:
    """The Secret holding the job's Ray token (KubeRay's authOptions.secretName), one per job for every attempt."""
    return _shorten(job, "-ray-auth", 63)


def network_policy_name(job: str) -> str:
    """The NetworkPolicy that guards the job's Ray pods, one per job."""
    return _shorten(job, "-ray", 63)
