"""What the installed KubeRay supports, read from its RayJob CRD: token authentication of the Ray clusters.

KubeRay 1.6+ takes `rayClusterSpec.authOptions.secretName` (the token in a Secret the operator owns),
1.5.1+ only `authOptions.mode` (KubeRay generates a token per Ray cluster), older versions nothing. The
served schema of `rayjobs.ray.io` says which; it is read once and again after `kuberay_detect_seconds`.
The setting `kuberay_auth` wins when it is not `auto` (an operator that may not read CRDs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from cpt_core.contract import names
from cpt_core.contract.reasons import Reason

from cpt_operator.controller.build.manifests import RayAuthMode
from cpt_operator.controller.io.kube import CRDS, ApiError, Kube
from cpt_operator.controller.lifecycle.decision import RayAuth
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)

_BY_SETTING = {
    "token-secret": RayAuth(
        "token-secret",
        Reason.TokenAuth,
        "the Ray cluster requires the job's token, kept in a Secret the operator owns (setting kuberayAuth)",
    ),
    "token": RayAuth(
        "token", Reason.TokenAuth, "the Ray cluster requires a token KubeRay generates for it (setting kuberayAuth)"
    ),
    "off": RayAuth(
        "off",
        Reason.RayAuthDisabled,
        "the operator's setting kuberayAuth is off: the Ray cluster runs without authentication",
    ),
}


def auth_support(crd: dict[str, Any]) -> RayAuthMode:
    """What a RayJob CRD's served `v1` schema allows (pure): `token-secret` where rayClusterSpec.authOptions has
    secretName, `token` where it has only mode, else `off`."""
    versions = (crd.get("spec") or {}).get("versions") or []
    version = next((v for v in versions if v.get("name") == names.RAYJOBS[1] and v.get("served", True)), None)
    schema: Any = ((version or {}).get("schema") or {}).get("openAPIV3Schema") or {}
    for key in ("spec", "rayClusterSpec", "authOptions"):
        schema = ((schema or {}).get("properties") or {}).get(key)
    fields = (schema or {}).get("properties") or {}
    if "mode" in fields and "secretName" in fields:
        return "token-secret"
    return "token" if "mode" in fields else "off"


class KubeRayFeatures:
    """The Ray auth for new attempts: the setting, or what the CRD said within the last `kuberay_detect_seconds`."""

    def __init__(self, kube: Kube, settings: OperatorSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.settings, self.clock = kube, settings, clock
        self._known: tuple[float, RayAuth] | None = None
        self._lock = asyncio.Lock()

    async def auth(self) -> RayAuth:
        setting = self.settings.kuberay_auth
        if setting != "auto":
            return _BY_SETTING[setting]
        async with self._lock:  # one read for all the jobs that start at once
            if self._known is not None and self.clock() - self._known[0] < self.settings.kuberay_detect_seconds:
                return self._known[1]
            auth, lasting = await self._detect()
            if self._known is None or self._known[1] != auth:
                log.log(
                    logging.INFO if auth.reason == Reason.TokenAuth else logging.WARNING, "Ray auth: %s", auth.message
                )
            self._known = (self.clock(), auth) if lasting else None
            return auth

    async def _detect(self) -> tuple[RayAuth, bool]:
        """What the CRD says, and whether that lasts (a timeout is asked again at the next attempt)."""
        crd_name = names.RAYJOB_CRD
        try:
            crd = await self.kube.get(*CRDS, None, crd_name)
        except ApiError as exc:
            return _unverified(f"HTTP {exc.status}: {exc.message}"), True
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return _unverified(f"{type(exc).__name__}: {exc}"), False
        if crd is None:
            return _unverified("it does not exist: is KubeRay installed?"), True
        mode = auth_support(crd)
        if mode == "off":
            message = (
                f"the installed KubeRay (CRD {crd_name}) has no rayClusterSpec.authOptions (KubeRay before 1.5.1): the "
                "Ray cluster runs without authentication, only the job's NetworkPolicy keeps other pods out; upgrade "
                "KubeRay to 1.6 or later"
            )
            return RayAuth("off", Reason.RayAuthUnsupported, message), True
        if mode == "token":
            message = f"the Ray cluster requires a token KubeRay generates for it (CRD {crd_name}: authOptions.mode)"
        else:
            message = (
                "the Ray cluster requires the job's token, kept in a Secret the operator owns "
                f"(CRD {crd_name}: authOptions.secretName)"
            )
        return RayAuth(mode, Reason.TokenAuth, message), True


def _unverified(why: str) -> RayAuth:
    return RayAuth(
        "token-secret",
        Reason.RayAuthUnverified,
        f"could not read CustomResourceDefinition {names.RAYJOB_CRD} ({why}); the RayJob asks for token "
        "authentication anyway, which KubeRay before 1.5.1 ignores: grant the operator get on that CRD or set "
        "kuberayAuth",
    )
