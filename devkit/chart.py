"""The Helm chart, rendered by a real helm v3 binary (installed under .tools/ by `make setup`)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cpt-operator"


def helm_binary() -> str:
    for candidate in (ROOT / ".tools" / "helm", shutil.which("helm")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("helm is missing: `make setup` installs helm v3 into .tools/")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=check)


def render(
    *values: Path | str, set_values: tuple[str, ...] = (), namespace: str = "cpt-system"
) -> list[dict[str, Any]]:
    args = ["template", "cpt-operator", str(CHART), "--namespace", namespace]
    for v in values:
        args += ["-f", str(v)]
    for s in set_values:
        args += ["--set", s]
    out = helm(*args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def granted(cluster_wide: bool, namespace: str = "ml-team") -> Callable[[tuple[str, str, str]], bool]:
    """Whether the rendered RBAC grants (apiGroup, resource, verb) in `namespace`: with `clusterWide=true`, or
    with `namespace` as the one watched namespace."""
    docs = render(set_values=("clusterWide=true",) if cluster_wide else (f"watchNamespaces={{{namespace}}}",))
    rules: list[tuple[dict[str, Any], bool]] = []
    for doc in docs:
        if doc["kind"] == "ClusterRole":
            rules += [(r, True) for r in doc["rules"]]
        elif doc["kind"] == "Role" and doc["metadata"]["namespace"] == namespace:
            rules += [(r, False) for r in doc["rules"]]

    def check(call: tuple[str, str, str]) -> bool:
        group, resource, verb = call
        return any(
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and verb in rule.get("verbs", [])
            for rule, _ in rules
        )

    return check
