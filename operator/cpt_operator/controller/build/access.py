"""Who may reach a job's Ray cluster (pure): the Secret with the job's Ray token, and the job's NetworkPolicy.

The token (KubeRay's authOptions.secretName) keeps out whoever does not hold it; the NetworkPolicy keeps out
every pod that is not the job's own Ray pod, its attempt's submitter or the KubeRay operator, so a pod of
another job (or tenant) cannot even reach the head's ports. Both are owned by the CPTJob (garbage-collected
with it) and serve every attempt: the Secret is made once, the NetworkPolicy follows the current attempt.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import names

from cpt_operator.controller.build.manifests import labels, owner_reference
from cpt_operator.controller.build.names import auth_secret_name, network_policy_name, rayjob_name
from cpt_operator.controller.settings import OperatorSettings

__all__ = ["build_auth_secret", "build_network_policy", "token_of"]


def build_auth_secret(job: CPTJob, token: str) -> dict[str, Any]:
    """The Secret KubeRay reads the job's Ray token from (key `auth_token`). Immutable: it is made once and
    every attempt's Ray cluster uses the same token."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": auth_secret_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": labels(job),
            "ownerReferences": [owner_reference(job)],
        },
        "type": "Opaque",
        "immutable": True,
        "data": {names.RAY_AUTH_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of(secret: dict[str, Any]) -> str | None:
    """The token a Secret holds under `auth_token`, if it is usable text (never logged)."""
    raw = (secret.get("data") or {}).get(names.RAY_AUTH_TOKEN_KEY)
    try:
        token = base64.b64decode(raw, validate=True).decode() if isinstance(raw, str) else ""
    except ValueError:  # not base64, or not UTF-8
        return None
    return token if token.strip() and token.isprintable() else None


def build_network_policy(job: CPTJob, attempt: int, settings: OperatorSettings) -> dict[str, Any]:
    """Ingress to the job's Ray pods (head and workers) from: the job's own Ray pods on every port (GCS, raylets,
    object transfer, NCCL); attempt `attempt`'s submitter pod (`ray job submit` and its log) and the KubeRay
    operator (it polls the job's status) on the dashboard port; and the admin's extra rules. Nothing else."""
    name = job.metadata.name
    own = {"podSelector": {"matchLabels": {names.JOB_LABEL: name}}}
    submitter = {"podSelector": {"matchLabels": {names.SUBMITTER_JOB_LABEL: rayjob_name(name, attempt)}}}
    kuberay = {
        "namespaceSelector": {"matchLabels": {names.NAMESPACE_NAME_LABEL: settings.kuberay_namespace}},
        "podSelector": {"matchLabels": dict(settings.kuberay_pod_labels)},
    }
    dashboard = [{"protocol": "TCP", "port": names.RAY_DASHBOARD_PORT}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(name),
            "namespace": job.metadata.namespace,
            "labels": labels(job),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "podSelector": {"matchLabels": {names.JOB_LABEL: name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [own]},
                {"from": [submitter, kuberay], "ports": dashboard},
                *copy.deepcopy(settings.network_policy_extra_ingress),
            ],
        },
    }
