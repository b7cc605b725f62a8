"""Render the plain manifests (manifests/rbac, manifests/operator) from the Helm chart.

The chart is the single source; `make manifests` runs this and a test fails on drift. Helm's own
labels are dropped so the output is what a kustomize user would write by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpt_operator.controller.build.manifests import dump_yaml  # noqa: E402

from devkit.chart import render  # noqa: E402

HEADER = "# Generated from charts/cpt-operator by `make manifests` -- do not edit.\n"
LAYOUT = {
    "ServiceAccount": "rbac/serviceaccount.yaml",
    "ClusterRole": "rbac/clusterrole.yaml",
    "ClusterRoleBinding": "rbac/clusterrolebinding.yaml",
    "Deployment": "operator/deployment.yaml",
    "Service": "operator/service.yaml",
}


def _clean(doc: dict) -> dict:
    for meta in (doc["metadata"], doc.get("spec", {}).get("template", {}).get("metadata", {})):
        labels = meta.get("labels", {})
        for helm_label in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
            labels.pop(helm_label, None)
    doc["metadata"].pop("namespace", None)  # set by the kustomization
    for subject in doc.get("subjects", []):
        subject["namespace"] = "cpt-system"
    return doc


def generated() -> dict[str, str]:
    docs = [d for d in render(set_values=("crds.enabled=false",)) if d["kind"] in LAYOUT]
    files = {LAYOUT[d["kind"]]: HEADER + dump_yaml(_clean(d)) for d in docs}
    namespaced = render(set_values=("crds.enabled=false", "watchNamespaces={ml-team}"))
    roles = [d for d in namespaced if d["kind"] in ("Role", "RoleBinding")]
    for doc in roles:
        namespace = doc["metadata"]["namespace"]
        _clean(doc)["metadata"]["namespace"] = namespace
    files["overlays/single-namespace/role.yaml"] = HEADER + dump_yaml(*roles)
    return files


def main() -> None:
    for relative, text in generated().items():
        (ROOT / "manifests" / relative).write_text(text)
        print(f"wrote manifests/{relative}")


if __name__ == "__main__":
    main()
