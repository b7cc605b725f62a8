"""The Helm chart with a real helm v3: lint, render, Kubernetes schemas, RBAC, values schema, snapshot."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cpt_core.schema.crd import crd, helm_crd_template
from cpt_operator.controller.build.manifests import dump_yaml
from cpt_operator.controller.io.kube import API_CALLS

from devkit.chart import CHART, granted, helm, render

CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
SNAPSHOT = Path(__file__).parent / "snapshots" / "chart-default.yaml"


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_helm_lint(values: Path) -> None:
    result = helm("lint", str(CHART), "-f", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=[p.stem for p in CI_VALUES])
def test_every_rendered_object_is_valid_for_kubernetes(values: Path) -> None:
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # not a core type; checked structurally
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(doc, "1.32", strict=True)


def test_default_rendering_matches_snapshot() -> None:
    text = dump_yaml(
        *[d for d in render(CHART / "ci" / "default-values.yaml") if d["kind"] != "CustomResourceDefinition"]
    )
    if os.environ.get("CPT_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "chart rendering changed: review, then CPT_UPDATE_SNAPSHOTS=1"


def test_chart_crd_is_the_generated_one() -> None:
    template = CHART / "templates" / "crds" / "cpt.dev_cptjobs.yaml"
    assert template.read_text() == helm_crd_template(), "run `make crd`"
    rendered = by_kind(render())["CustomResourceDefinition"][0]
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    rendered["metadata"].pop("annotations")
    assert rendered == crd()
    unkept = by_kind(render(set_values=("crds.keep=false",)))["CustomResourceDefinition"][0]
    assert "annotations" not in unkept["metadata"]
    assert "CustomResourceDefinition" not in by_kind(render(CHART / "ci" / "no-crds-values.yaml"))


def test_operator_deployment_is_locked_down() -> None:
    deployment = by_kind(render())["Deployment"][0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["args"][:2] == ["operator", "--namespace=cpt-system"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CPT_OPERATOR_TRAINER_IMAGE"] == "ghcr.io/cpt-operator/cpt-trainer:0.1.0"


def calls(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}


# The only cluster-scoped permissions of a namespaced install: following the watched namespaces and reading
# KubeRay's RayJob CRD (which auth mode its version supports).
READ_RAYJOB_CRD = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "resourceNames": ["rayjobs.ray.io"],
    "verbs": ["get"],
}
CLUSTER_SCOPED_ONLY = [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}, READ_RAYJOB_CRD]
CLUSTER_SCOPED_CALLS = {("", "namespaces", "list"), ("", "namespaces", "watch")} | calls([READ_RAYJOB_CRD])


def test_rbac_grants_exactly_what_the_operator_calls() -> None:
    for values in ((), ("clusterWide=true",), ("watchNamespaces={ml-team}",)):
        docs = by_kind(render(set_values=values))
        rules = [r for kind in ("ClusterRole", "Role") for doc in docs.get(kind, []) for r in doc["rules"]]
        assert calls(rules) == API_CALLS, values
        assert not any("*" in str(r) for r in rules)
        # Secrets: read what a job names, create its Ray token; never list, update or delete one.
        assert {v for g, res, v in calls(rules) if res == "secrets"} == {"get", "create"}
        # CRDs: only reading KubeRay's RayJob CRD.
        assert [r for r in rules if "customresourcedefinitions" in r["resources"]] == [READ_RAYJOB_CRD], values


def test_a_default_install_manages_only_its_own_namespace() -> None:
    """Without watchNamespaces the operator may touch Secrets, ConfigMaps and pod logs of its release namespace
    only -- never of kube-system or a tenant's namespace -- and watches only that namespace."""
    docs = by_kind(render(namespace="cpt-system"))
    [role], [binding] = docs["Role"], docs["RoleBinding"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "cpt-system"
    assert calls(role["rules"]) | CLUSTER_SCOPED_CALLS == API_CALLS
    [cluster_role] = docs["ClusterRole"]
    assert cluster_role["rules"] == CLUSTER_SCOPED_ONLY
    args = docs["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=cpt-system" in args and "--all-namespaces" not in args
    elsewhere = by_kind(render(namespace="ml-platform"))
    assert [r["metadata"]["namespace"] for r in elsewhere["Role"]] == ["ml-platform"]


def test_cluster_wide_rbac_is_an_explicit_opt_in() -> None:
    docs = by_kind(render(CHART / "ci" / "cluster-wide-values.yaml"))
    assert "Role" not in docs and "RoleBinding" not in docs
    [cluster_role] = docs["ClusterRole"]
    assert calls(cluster_role["rules"]) == API_CALLS
    [binding] = docs["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    args = docs["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    both = helm("template", "x", str(CHART), "--set", "clusterWide=true", "--set", "watchNamespaces={a}", check=False)
    assert both.returncode != 0
    assert "clusterWide: true manages every namespace; leave watchNamespaces empty" in both.stderr, both.stderr


def test_namespaced_mode_uses_roles() -> None:
    docs = by_kind(render(CHART / "ci" / "namespaced-values.yaml"))
    roles = docs["Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team", "research"]
    assert sorted(b["metadata"]["namespace"] for b in docs["RoleBinding"]) == ["ml-team", "research"]
    # The only cluster-scoped permissions left: following the watched namespaces, reading KubeRay's RayJob CRD.
    [cluster_role] = docs["ClusterRole"]
    assert cluster_role["rules"] == CLUSTER_SCOPED_ONLY
    args = docs["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-team" in args and "--namespace=research" in args and "--all-namespaces" not in args
    assert "--namespace=cpt-system" not in args  # exactly the listed namespaces, not the release one too
    allowed = granted(cluster_wide=False, namespace="research")
    assert all(allowed(call) for call in API_CALLS if call[1] not in ("namespaces", "customresourcedefinitions"))


def test_servicemonitor_only_when_enabled() -> None:
    assert "ServiceMonitor" not in by_kind(render())
    monitor = by_kind(render(CHART / "ci" / "servicemonitor-values.yaml"))["ServiceMonitor"][0]
    assert (
        monitor["metadata"]["labels"]["release"] == "prometheus"
        and monitor["spec"]["endpoints"][0]["interval"] == "15s"
    )


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("bogus=1", "Additional property bogus is not allowed"),
        ("metrics.port=abc", "metrics.port: Invalid type"),
        ("image.pullPolicy=Sometimes", "image.pullPolicy"),
        ("crds.keep=maybe", "crds.keep: Invalid type"),
        ("watchNamespaces={Bad_NS}", "watchNamespaces.0"),
        ("clusterWide=maybe", "clusterWide: Invalid type"),
        ("operator.kuberayAuth=maybe", "operator.kuberayAuth"),
        ("networkPolicy.enabled=yes please", "networkPolicy.enabled"),
        ("networkPolicy.extraIngress[0].to[0].podSelector.x=y", "networkPolicy.extraIngress.0"),
    ],
)
def test_invalid_values_are_rejected_by_the_schema(setting: str, message: str) -> None:
    result = helm("template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_every_value_is_documented() -> None:
    """Each leaf value (per values.schema.json) has a `# --` comment above it."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent: dict[str, Any] = schema
        for _, key in stack:
            parent = parent.get("properties", {}).get(key, {})
        stack.append((indent, match.group(2)))
        if "properties" not in parent:
            continue  # inside a free-form value (e.g. resources): documented as a whole
        node = parent["properties"].get(match.group(2), {})
        if "properties" in node:
            continue  # a group of values, not a value
        comments = []
        for j in range(i - 1, -1, -1):
            if not lines[j].strip().startswith("#"):
                break
            comments.append(lines[j].strip())
        if not any(c.startswith("# --") for c in comments):
            undocumented.append(".".join(k for _, k in stack))
    assert undocumented == []


def test_notes_explain_the_prerequisite_and_first_job(tmp_path: Path) -> None:
    # `helm template` skips NOTES.txt; render it through a copy of the chart that wraps it in YAML.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes-source.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-source.txt") . | indent 2 }}\n'
    )

    def notes(*values: str) -> str:
        args = ["template", "cpt", str(chart), "-n", "cpt-system", "--show-only", "templates/notes.yaml"]
        for value in values:
            args += ["--set", value]
        return str(yaml.safe_load(helm(*args).stdout)["notes"])

    default = notes()
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in default
    assert "kubectl -n cpt-system create secret generic s3-credentials" in default
    assert "namespace-scoped RBAC: CPTJobs are managed in cpt-system only" in default
    assert "cluster-wide" not in default
    assert "kubectl -n ml-team create secret generic s3-credentials" in notes("watchNamespaces={ml-team}")
    assert "cluster-wide RBAC (clusterWide=true)" in notes("clusterWide=true")


def test_chart_version_matches_the_package() -> None:
    from cpt_operator import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
