"""Plain manifests: generated from the chart (no drift), and each kustomize overlay renders valid objects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cpt_operator.controller.io.kube import API_CALLS

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack"))


def kustomize(overlay: str) -> list[dict[str, Any]]:
    where = ROOT / "manifests" / ("base" if overlay == "base" else f"overlays/{overlay}")
    out = subprocess.run(
        ["kubectl", "kustomize", str(where)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_manifests_are_rendered_from_the_chart() -> None:
    from render_manifests import generated

    for relative, text in generated().items():
        assert (ROOT / "manifests" / relative).read_text() == text, f"manifests/{relative} drifted: `make manifests`"


@pytest.mark.parametrize("overlay", ["base", "cluster-wide", "single-namespace"])
def test_overlays_render_valid_objects(overlay: str) -> None:
    docs = kustomize(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Namespace"} <= set(kinds)
    for doc in docs:
        kubernetes_validate.validate(doc, "1.32", strict=True)


def rules_of(docs: list[dict[str, Any]], kind: str) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for d in docs
        if d["kind"] == kind
        for rule in d["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def rbac_and_args(docs: list[dict[str, Any]]) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The RBAC objects (kind, name, namespace, rules or roleRef and subjects) and the operator's args."""
    rbac = sorted(
        (
            d["kind"],
            d["metadata"]["name"],
            d["metadata"].get("namespace"),
            yaml.safe_dump(d.get("rules") or [d["roleRef"], d["subjects"]]),
        )
        for d in docs
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
    )
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    return rbac, deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("overlay", ["base", "cluster-wide", "single-namespace"])
def test_each_overlay_grants_what_the_chart_grants_with_its_values(overlay: str) -> None:
    """The overlays' hand-written patches (delete the base's RBAC, change the args) give exactly the chart's
    RBAC and namespaces for the values the overlay stands for."""
    from render_manifests import OVERLAYS

    from devkit.chart import render

    values = OVERLAYS[overlay][0] if overlay in OVERLAYS else ()
    assert rbac_and_args(kustomize(overlay)) == rbac_and_args(render(set_values=values, namespace="cpt-system"))


#: A namespaced install's only cluster-scoped calls: following the watched namespaces, reading KubeRay's RayJob CRD.
CLUSTER_SCOPED = {
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
}


def test_the_base_manages_only_its_own_namespace() -> None:
    docs = kustomize("base")
    assert rules_of(docs, "ClusterRole") == CLUSTER_SCOPED
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] in ("Role", "RoleBinding")} == {"cpt-system"}
    assert rules_of(docs, "Role") | rules_of(docs, "ClusterRole") == API_CALLS


def test_cluster_wide_overlay_grants_exactly_the_operator_calls() -> None:
    docs = kustomize("cluster-wide")
    assert rules_of(docs, "ClusterRole") == API_CALLS
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]


def test_single_namespace_overlay_is_namespace_scoped() -> None:
    docs = kustomize("single-namespace")
    assert rules_of(docs, "ClusterRole") == CLUSTER_SCOPED
    [crd_rule] = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"] if r["apiGroups"] != [""]]
    assert crd_rule["resourceNames"] == ["rayjobs.ray.io"]
    assert rules_of(docs, "Role") | rules_of(docs, "ClusterRole") == API_CALLS
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] in ("Role", "RoleBinding")} == {"ml-team"}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "--namespace=ml-team" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
