"""`cpt validate` as a user runs it: exit codes, one line per problem, warnings on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def cpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpt_core.cli", *args], capture_output=True, text=True)


def test_all_examples_are_valid() -> None:
    examples = sorted(str(p) for p in (ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    result = cpt("validate", *examples)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def _write(tmp_path: Path, name: str, mutate) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "local-tiny.yaml").read_text())
    mutate(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_invalid_file_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    def mutate(doc: dict) -> None:
        doc["spec"]["data"]["sources"][1]["weight"] = 0
        doc["spec"]["data"]["sources"][0]["weight"] = 0
        doc["spec"]["trainng"] = doc["spec"].pop("training")

    path = _write(tmp_path, "bad.yaml", mutate)
    result = cpt("validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{path}: spec.trainng: unknown field; did you mean 'training'?" in lines
    assert f"{path}: spec.training: required field is missing" in lines
    assert "Traceback" not in result.stdout + result.stderr


def test_zero_weights_message(tmp_path: Path) -> None:
    def mutate(doc: dict) -> None:
        for source in doc["spec"]["data"]["sources"]:
            source["weight"] = 0

    path = _write(tmp_path, "zero.yaml", mutate)
    result = cpt("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{path}: spec.data.sources: at least one source needs weight > 0"


def test_warnings_go_to_stderr_and_do_not_fail(tmp_path: Path) -> None:
    path = _write(tmp_path, "warn.yaml", lambda d: d["spec"]["data"]["sources"].pop(1))
    result = cpt("validate", str(path))
    assert result.returncode == 0
    assert f"{path}: warning: spec.data.sources: no source with role: replay" in result.stderr
    assert result.stdout == ""


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = cpt("validate", str(tmp_path / "nope.yaml"), str(ROOT / "examples" / "local-tiny.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read file" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_error_exits_2() -> None:
    assert cpt("validate").returncode == 2
    assert cpt("no-such-command").returncode == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("apiVersion: cpt.dev/v1alpha1\nkind: CPTJob\nmetadata: {name: x\n", "invalid YAML: line"),
        ("- just\n- a list\n", "must be a mapping"),
        ("", "no YAML documents"),
    ],
)
def test_malformed_yaml_is_a_clean_error(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = cpt("validate", str(path))
    assert result.returncode == 1
    assert fragment in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_multi_document_file_numbers_documents(tmp_path: Path) -> None:
    good = (ROOT / "examples" / "local-tiny.yaml").read_text()
    bad = good.replace("steps: 30", "steps: -3")
    path = tmp_path / "two.yaml"
    path.write_text(good + "\n---\n" + bad)
    result = cpt("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{path}#2: spec.training.steps: must be > 0 (got -3)"
