"""The chart's Ray auth and NetworkPolicy values reach the operator as settings, and its RBAC follows them:
access to KubeRay's CRD only where it is read (`auto`), Secret create only where the operator makes tokens,
NetworkPolicy access only where it makes them."""

from __future__ import annotations

from typing import Any

import pytest
from cpt_operator.controller.settings import OperatorSettings

from devkit.chart import render


def operator_settings(docs: list[dict[str, Any]]) -> OperatorSettings:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    return OperatorSettings.from_env({k: v for k, v in env.items() if k.startswith("CPT_OPERATOR_")})


def grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


CRD_GET = ("apiextensions.k8s.io", "customresourcedefinitions", "get")
SECRET_CREATE = ("", "secrets", "create")
POLICIES = {("networking.k8s.io", "networkpolicies", v) for v in ("get", "create", "update")}


def test_the_defaults_detect_kuberay_and_guard_every_job() -> None:
    docs = render()
    settings = operator_settings(docs)
    assert settings.kuberay_auth == "auto" and settings.network_policy is True
    assert settings.kuberay_namespace == "kuberay-system"
    assert settings.kuberay_pod_labels == {"app.kubernetes.io/name": "kuberay-operator"}
    assert {CRD_GET, SECRET_CREATE} | POLICIES <= grants(docs)


@pytest.mark.parametrize(
    ("mode", "crd", "create"),
    [("auto", True, True), ("token-secret", False, True), ("token", False, False), ("off", False, False)],
)
@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_rbac_follows_the_ray_auth_setting(mode: str, crd: bool, create: bool, scope: str) -> None:
    values = [f"operator.kuberayAuth={mode}"] + (["watchNamespaces={ml-team}"] if scope == "namespaced" else [])
    docs = render(set_values=tuple(values))
    assert operator_settings(docs).kuberay_auth == mode
    granted = grants(docs)
    assert (CRD_GET in granted) == crd and (SECRET_CREATE in granted) == create
    assert ("", "secrets", "get") in granted


def test_without_network_policies_none_may_be_touched() -> None:
    docs = render(set_values=("networkPolicy.enabled=false",))
    assert operator_settings(docs).network_policy is False
    assert not POLICIES & grants(docs)


def test_kuberay_and_extra_peers_reach_the_settings() -> None:
    docs = render(
        set_values=(
            "networkPolicy.kuberay.namespace=ray",
            "networkPolicy.kuberay.podLabels.app=kuberay",
            "networkPolicy.extraIngress[0].from[0].namespaceSelector.matchLabels.team=monitoring",
            "networkPolicy.extraIngress[0].ports[0].port=8080",
        )
    )
    settings = operator_settings(docs)
    assert settings.kuberay_namespace == "ray"
    assert settings.kuberay_pod_labels == {"app.kubernetes.io/name": "kuberay-operator", "app": "kuberay"}
    assert settings.network_policy_extra_ingress == [
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}], "ports": [{"port": 8080}]}
    ]
