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
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_manifests_are_rendered_from_the_chart() -> None:
    from render_manifests import generated

    for relative, text in generated().items():
        assert (ROOT / "manifests" / relative).read_text() == text, f"manifests/{relative} drifted: `make manifests`"


@pytest.mark.parametrize("overlay", ["cluster-wide", "single-namespace"])
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


def test_cluster_wide_overlay_grants_exactly_the_operator_calls() -> None:
    assert rules_of(kustomize("cluster-wide"), "ClusterRole") == API_CALLS


def test_single_namespace_overlay_is_namespace_scoped() -> None:
    docs = kustomize("single-namespace")
    assert rules_of(docs, "ClusterRole") == {("", "namespaces", "list"), ("", "namespaces", "watch")}
    assert rules_of(docs, "Role") | rules_of(docs, "ClusterRole") == API_CALLS
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "--namespace=ml-team" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
