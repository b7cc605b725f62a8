"""Launching an attempt: its children created in order -- the spec ConfigMap, the job's Ray token Secret, the
job's NetworkPolicy, then the RayJob -- so the Ray pods never exist unguarded.

The ConfigMap and the NetworkPolicy are replaced where they changed (the spec; the attempt's submitter), the
Secret is made once and reused by every attempt, the RayJob is new per attempt. A launch that cannot happen
returns why (a foreign object, an object the API server rejected, a damaged token Secret): the state machine
reports it once instead of kopf retrying it blindly.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract.reasons import Reason

from cpt_operator.controller.build.access import build_auth_secret, build_network_policy, token_of
from cpt_operator.controller.build.manifests import build_configmap, build_rayjob
from cpt_operator.controller.io.kube import ApiError, ForeignObject, Kube
from cpt_operator.controller.lifecycle.decision import Problem, RayAuth
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)


def children(job: CPTJob, attempt: int, settings: OperatorSettings, auth: RayAuth) -> list[dict[str, Any]]:
    """What attempt `attempt` needs, in the order it is created (the RayJob last)."""
    out = [build_configmap(job)]
    if auth.mode == "token-secret":
        out.append(build_auth_secret(job, secrets.token_urlsafe(32)))  # used only if the job has none yet
    if settings.network_policy:
        out.append(build_network_policy(job, attempt, settings))
    return [*out, build_rayjob(job, attempt, settings, auth=auth.mode)]


async def _put(kube: Kube, obj: dict[str, Any]) -> Problem | None:
    kind, meta = obj["kind"], obj["metadata"]
    if kind == "ConfigMap":
        await kube.apply(obj, "data")
    elif kind == "NetworkPolicy":
        await kube.apply(obj, "spec")
    elif kind == "Secret":
        secret = await kube.ensure(obj)
        if token_of(secret) is None:  # the pods could not start, or would use a token someone else chose
            return Problem(
                Reason.RayAuthSecretDamaged,
                f"Secret {meta['namespace']}/{meta['name']} holds no usable Ray token (changed by hand); delete it "
                f"and the operator makes a new one: kubectl -n {meta['namespace']} delete secret {meta['name']}",
            )
    else:
        await kube.create(obj)
    return None


async def create_attempt(
    kube: Kube, job: CPTJob, attempt: int, settings: OperatorSettings, auth: RayAuth
) -> Problem | None:
    """Create attempt `attempt`'s children; None when its RayJob exists, else why it could not be created."""
    for obj in children(job, attempt, settings, auth):
        try:
            problem = await _put(kube, obj)
        except ForeignObject as exc:
            return Problem(Reason.ForeignObject, str(exc))
        except ApiError as exc:
            if exc.status in (400, 422):  # what we built was rejected (e.g. by KubeRay's schema): permanent
                return Problem(
                    Reason.ValidationFailed,
                    f"the API server rejected {obj['kind']} {obj['metadata']['name']}: {exc.message}",
                )
            raise
        if problem is not None:
            return problem
    if auth.mode == "off":
        log.warning(
            "%s/%s: the Ray cluster of attempt %d runs without authentication: %s",
            job.metadata.namespace,
            job.metadata.name,
            attempt,
            auth.message,
        )
    return None
