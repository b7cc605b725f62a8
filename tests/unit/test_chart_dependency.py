"""The chart as users consume it beyond `helm install`: as a dependency of a parent chart (global
values), with images from a private registry or pinned by digest, and NOTES.txt without the repo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.chart import CHART, helm, helm_binary, render

DIGEST = "sha256:" + "0123456789abcdef" * 4


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")


def images(docs: list[dict[str, Any]]) -> tuple[str, str]:
    """(operator image, default trainer image) of a rendering."""
    container = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return container["image"], env["CPT_OPERATOR_TRAINER_IMAGE"]


@pytest.mark.parametrize(
    ("settings", "operator", "trainer"),
    [
        ((), "ghcr.io/cpt-operator/cpt-operator:0.1.0", "ghcr.io/cpt-operator/cpt-trainer:0.1.0"),
        (
            ("image.registry=registry.example.com:5000", "trainerImage.registry=registry.example.com:5000"),
            "registry.example.com:5000/cpt-operator/cpt-operator:0.1.0",
            "registry.example.com:5000/cpt-operator/cpt-trainer:0.1.0",
        ),
        (
            ("image.tag=v9", f"image.digest={DIGEST}", "trainerImage.tag=v9", f"trainerImage.digest={DIGEST}"),
            f"ghcr.io/cpt-operator/cpt-operator@{DIGEST}",
            f"ghcr.io/cpt-operator/cpt-trainer@{DIGEST}",
        ),
        (
            ("image.registry=", "image.repository=localhost/cpt-operator", "trainerImage.tag=dev"),
            "localhost/cpt-operator:0.1.0",
            "ghcr.io/cpt-operator/cpt-trainer:dev",
        ),
    ],
    ids=["defaults", "registry", "digest-wins-over-tag", "no-registry"],
)
def test_image_registry_tag_and_digest(settings: tuple[str, ...], operator: str, trainer: str) -> None:
    assert images(render(set_values=settings)) == (operator, trainer)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("image.digest=sha256:abc", "image.digest: Does not match pattern"),
        ("trainerImage.digest=latest", "trainerImage.digest: Does not match pattern"),
        ("image.registry=https://ghcr.io", "image.registry: Does not match pattern"),
        ("global.imageRegistry=bad registry", "global.imageRegistry: Does not match pattern"),
    ],
)
def test_bad_image_values_are_rejected_by_the_schema(setting: str, message: str) -> None:
    result = helm("template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_the_chart_works_as_a_dependency_with_global_values(tmp_path: Path) -> None:
    """A real parent chart that depends on ours via file:// and sets global values (which Helm
    passes to every subchart: a schema without `global` rejected every such parent)."""
    parent = tmp_path / "platform"
    parent.mkdir()
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [
                    {"name": "cpt-operator", "version": "0.1.0", "repository": f"file://{CHART}"},
                ],
            }
        )
    )
    (parent / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {"imageRegistry": "mirror.internal:5000/ml", "storageClass": "fast", "team": "nlp"},
                "cpt-operator": {"crds": {"enabled": False}, "trainerImage": {"digest": DIGEST}},
            }
        )
    )
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(tmp_path / "cache"),
        "HELM_CONFIG_HOME": str(tmp_path / "config"),
        "HELM_DATA_HOME": str(tmp_path / "data"),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env, timeout=120)

    built = run("dependency", "build", str(parent))
    assert built.returncode == 0, built.stdout + built.stderr
    assert (parent / "charts" / "cpt-operator-0.1.0.tgz").exists()
    lint = run("lint", str(parent))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = run("template", "platform", str(parent), "--namespace", "platform")
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert not [d for d in docs if d["kind"] == "CustomResourceDefinition"]  # the parent's crds.enabled=false
    # global.imageRegistry (the parent's mirror) reaches both images; the digest still wins over the tag.
    assert images(docs) == (
        "mirror.internal:5000/ml/cpt-operator/cpt-operator:0.1.0",
        f"mirror.internal:5000/ml/cpt-operator/cpt-trainer@{DIGEST}",
    )


def notes(tmp_path: Path, *settings: str) -> str:
    """NOTES.txt as `helm install` prints it (`helm template` skips it; render it through a copy)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes-source.txt")
    (chart / "templates" / "notes.yaml").write_text(
        'notes: |\n{{ tpl (.Files.Get "notes-source.txt") . | indent 2 }}\n'
    )
    args = ["template", "cpt", str(chart), "--show-only", "templates/notes.yaml"]
    for setting in settings:
        args += ["--set", setting]
    return str(yaml.safe_load(helm(*args).stdout)["notes"])


def test_notes_are_self_contained(tmp_path: Path) -> None:
    text = notes(tmp_path)
    # Nothing a chart-only user lacks: no repository files (examples/, docs/, manifests/).
    assert not re.search(r"\b(examples|docs|manifests|hack)/", text), text
    assert "default images are not published" in text and "make images" in text
    # The first job is inline, and valid: `cpt validate -` reads it from stdin.
    # (The here-document starts in column 0, so it still works when pasted into a shell.)
    job = re.search(r"kubectl apply -f - <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert job is not None, text
    manifest = job.group(1)
    checked = subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", "validate", "-o", "json", "-"],
        input=manifest,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "crds.enabled=false" not in text


def test_notes_say_how_to_apply_the_crd_when_the_chart_does_not(tmp_path: Path) -> None:
    text = notes(tmp_path, "crds.enabled=false")
    assert "--show-only templates/crds/cpt.dev_cptjobs.yaml | kubectl apply --server-side -f -" in text
    assert "the CPTJob CRD (cptjobs.cpt.dev)" not in text
