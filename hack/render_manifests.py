"""Render the plain manifests (manifests/rbac, manifests/operator, the overlays' RBAC) from the Helm chart.

The chart is the single source; `make manifests` runs this and a test fails on drift. Helm's own
labels are dropped so the output is what a kustomize user would write by hand.

The base is the chart's default: the operator in cpt-system, managing CPTJobs in cpt-system only. Each
overlay is the chart with other values (`OVERLAYS`); a test checks that what kustomize builds from the
base, an overlay's generated RBAC and its patches is what the chart renders with those values.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpt_operator.controller.build.manifests import dump_yaml  # noqa: E402

from devkit.chart import render  # noqa: E402

HEADER = "# Generated from charts/cpt-operator by `make manifests` -- do not edit.\n"
#: Where each object of the base goes: kind -> file below manifests/.
LAYOUT = {
    "ServiceAccount": "rbac/serviceaccount.yaml",
    "ClusterRole": "rbac/clusterrole.yaml",
    "ClusterRoleBinding": "rbac/clusterrolebinding.yaml",
    "Role": "rbac/role.yaml",
    "RoleBinding": "rbac/rolebinding.yaml",
    "Deployment": "operator/deployment.yaml",
    "Service": "operator/service.yaml",
}
#: overlay -> (the chart values it stands for, the kinds of its own generated RBAC file).
OVERLAYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cluster-wide": (("clusterWide=true",), ("ClusterRole", "ClusterRoleBinding")),
    "single-namespace": (("watchNamespaces={ml-team}",), ("Role", "RoleBinding")),
}
RBAC = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def _clean(doc: dict, keep_namespace: bool = False) -> dict:
    for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels", {})
        for helm_label in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
            labels.pop(helm_label, None)
    namespace = doc["metadata"].pop("namespace", None)  # the release namespace: set by the kustomization
    if keep_namespace and namespace is not None:
        doc["metadata"]["namespace"] = namespace
    for subject in doc.get("subjects", []):
        subject["namespace"] = "cpt-system"
    return doc


def chart(*values: str) -> list[dict]:
    """The chart's objects with `values`, as the manifests carry them (Helm labels dropped, no CRD)."""
    return [d for d in render(set_values=("crds.enabled=false", *values)) if d["kind"] in LAYOUT]


def generated() -> dict[str, str]:
    files: dict[str, list[dict]] = {}
    for doc in chart():
        files.setdefault(LAYOUT[doc["kind"]], []).append(_clean(doc))
    for overlay, (values, kinds) in OVERLAYS.items():
        own = [d for kind in kinds for d in chart(*values) if d["kind"] == kind]
        # A Role of a watched namespace keeps it; cluster-scoped objects have none.
        files[f"overlays/{overlay}/rbac.yaml"] = [_clean(d, keep_namespace=True) for d in own]
    return {relative: HEADER + dump_yaml(*docs) for relative, docs in files.items()}


def main() -> None:
    for relative, text in generated().items():
        (ROOT / "manifests" / relative).write_text(text)
        print(f"wrote manifests/{relative}")


if __name__ == "__main__":
    main()
