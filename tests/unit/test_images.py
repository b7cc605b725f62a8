"""The Dockerfiles install the package extras that the code they run imports (they cannot be built here)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"cpt_core", "cpt_operator", "cpt_trainer"}


def third_party_imports(paths: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in FIRST_PARTY and n not in sys.stdlib_module_names and n != "__future__"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extras: list[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    return {normalise(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def packages_distributions() -> dict[str, list[str]]:
    """importlib.metadata.packages_distributions(), also on Python 3.10, which reads only top_level.txt (newer
    versions fall back to a distribution's files when it has none, as cel-python does)."""
    mapping = {module: list(dists) for module, dists in importlib.metadata.packages_distributions().items()}
    if sys.version_info < (3, 11):
        for dist in importlib.metadata.distributions():
            if dist.read_text("top_level.txt") is None:
                for file in dist.files or ():
                    top = file.parts[0] if len(file.parts) > 1 else file.stem
                    if file.suffix == ".py" and top.isidentifier():
                        mapping.setdefault(top, []).append(dist.metadata["Name"])
    return mapping


def distributions(modules: set[str]) -> dict[str, set[str]]:
    mapping = packages_distributions()
    # A module not installed here (vllm: GPU images only) is matched by its own name.
    return {m: {normalise(d) for d in mapping.get(m, [])} or {normalise(m)} for m in modules}


def extras_in(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text()
    found = re.findall(r'\.?\[([\w,]+)\]"?', " ".join(line for line in text.splitlines() if "pip" in line))
    return sorted({extra for group in found for extra in group.split(",")})


@pytest.mark.parametrize(
    ("dockerfile", "code"),
    [
        # The operator image runs `cpt operator`: the contract (cpt_core) and the control plane.
        ("operator/Dockerfile", [*(ROOT / "core").rglob("*.py"), *(ROOT / "operator").rglob("*.py")]),
        # The trainer image runs `cpt train`: the contract and the data plane. Its imports are matched with the
        # installed distributions of the trainer's frameworks (mlflow is mlflow-skinny).
        pytest.param(
            "trainer/Dockerfile",
            [*(ROOT / "core").rglob("*.py"), *(ROOT / "trainer").rglob("*.py")],
            marks=pytest.mark.trainer,
        ),
    ],
)
def test_dockerfile_installs_what_the_code_imports(dockerfile: str, code: list[Path]) -> None:
    path = ROOT / dockerfile
    extras = extras_in(path)
    assert extras, f"{dockerfile} installs no package extra"
    available = declared(extras) | {"torch", "deepspeed"}  # installed explicitly by the trainer Dockerfile
    missing = {
        module: dists for module, dists in distributions(third_party_imports(code)).items() if not dists & available
    }
    assert missing == {}, f"{dockerfile} (extras {extras}) lacks the distributions of: {missing}"


def test_images_are_non_root_and_pinned() -> None:
    for dockerfile in ("operator/Dockerfile", "trainer/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), f"{dockerfile} must switch to a non-root user"
        for base in re.findall(r"^(?:FROM|ARG BASE=)\s*(\S+)", text, re.M):
            if base.startswith("${"):
                continue
            assert ":" in base and not base.endswith(":latest"), f"{dockerfile}: pin {base} by tag"
