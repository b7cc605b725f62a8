"""kubectl habits of `cpt`: `-o json|yaml` that scripts parse, `-` for stdin, directories,
multi-document files whose other objects are skipped with a note, one `-n`, results on stdout
and diagnostics on stderr, "Examples:" in every user command's help, internal commands hidden."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cpt_core.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "local-tiny.yaml"
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: s3-credentials}\nstringData: {AWS_ACCESS_KEY_ID: x}\n"


def cpt(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", *args], input=stdin, capture_output=True, text=True, cwd=cwd
    )


def user_commands() -> list[str]:
    return [name for name, entry in COMMANDS.items() if not entry.hidden]


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_validate_output_is_machine_readable_for_a_directory(output: str) -> None:
    result = cpt("validate", "-o", output, str(ROOT / "examples"))
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout) if output == "json" else yaml.safe_load(result.stdout)
    shipped = sorted((ROOT / "examples").glob("*.yaml"))
    assert [r["source"] for r in records] == [str(p) for p in shipped]
    assert all(r["valid"] and r["errors"] == [] for r in records)
    assert {r["name"] for r in records} >= {"local-tiny"}
    # The warnings are in the records and, for people, on stderr; stdout holds nothing else.
    tiny = next(r for r in records if r["source"] == str(TINY))
    assert any("spec.training.steps" in w for w in tiny["warnings"])
    assert f"{TINY}: warning: spec.training.steps" in result.stderr


def test_validate_reads_stdin_and_skips_other_objects_with_a_note() -> None:
    result = cpt("validate", "-o", "json", "-", stdin=SECRET + "---\n" + TINY.read_text())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "source": "<stdin>#2",
            "name": "local-tiny",
            "valid": True,
            "errors": [],
            "warnings": json.loads(result.stdout)[0]["warnings"],
        }
    ]
    assert "<stdin>#1: skipped Secret 's3-credentials' (v1): not a CPTJob" in result.stderr
    assert "AWS_ACCESS_KEY_ID" not in result.stdout + result.stderr  # a skipped Secret is never echoed


def test_validate_json_reports_problems_per_document(tmp_path: Path) -> None:
    bad = TINY.read_text().replace("steps: 30", "steps: -3")
    path = tmp_path / "jobs.yaml"
    path.write_text(SECRET + "---\n" + TINY.read_text() + "---\n" + bad)
    result = cpt("validate", "-o", "json", str(path))
    assert result.returncode == 1
    records = json.loads(result.stdout)
    assert [(r["source"], r["valid"]) for r in records] == [(f"{path}#2", True), (f"{path}#3", False)]
    assert records[1]["errors"] == ["spec.training.steps: must be > 0 (got -3)"]
    # Text mode: the same problem, one line on stdout.
    text = cpt("validate", str(path))
    assert text.stdout.strip() == f"{path}#3: spec.training.steps: must be > 0 (got -3)"


def test_a_file_of_only_other_objects_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET)
    result = cpt("validate", str(path))
    assert result.returncode == 1
    assert result.stdout.strip() == f"{path}: no CPTJob document (every document was skipped)"


def test_directory_without_manifests_and_double_stdin_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a manifest")
    result = cpt("validate", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no *.yaml, *.yml or *.json files in this directory"
    twice = cpt("validate", "-", "-", stdin=TINY.read_text())
    assert twice.returncode == 2 and "standard input can be read only once" in twice.stderr


def test_json_manifests_are_read_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps(yaml.safe_load(TINY.read_text())))
    (tmp_path / "README.md").write_text("# ignored")
    result = cpt("validate", "-q", "-o", "json", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [r["source"] for r in json.loads(result.stdout)] == [str(tmp_path / "job.json")]


# --------------------------------------------------------------------------- render


def test_render_json_is_a_list_and_n_sets_the_namespace() -> None:
    result = cpt("render", "-o", "json", "-n", "ml-team", "-", stdin=SECRET + "---\n" + TINY.read_text())
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    assert rendered["kind"] == "List"
    assert [(o["kind"], o["metadata"]["namespace"]) for o in rendered["items"]] == [
        ("ConfigMap", "ml-team"),
        ("NetworkPolicy", "ml-team"),
        ("RayJob", "ml-team"),
    ]
    assert "skipped Secret 's3-credentials'" in result.stderr
    # The List reads back: validate takes kubectl's List shape too (the ConfigMap/RayJob are skipped).
    assert cpt("validate", "-", stdin=result.stdout).returncode == 1  # no CPTJob in it: said so, exit 1


def test_render_refuses_a_namespace_that_contradicts_the_manifest() -> None:
    result = cpt("render", "-n", "other", str(ROOT / "examples" / "gpu-8b-instruct.yaml"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "namespace 'ml-team' does not match -n other" in lines[0] and "gpu-8b-instruct.yaml" in lines[0]
    assert result.stdout == ""


def test_one_job_commands_name_the_document_and_send_problems_to_stderr(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(TINY.read_text() + "---\n" + TINY.read_text())
    result = cpt("render", str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {path}: expected exactly one CPTJob document (found 2); split the file or name one job"
    )
    bad = cpt("render", "-", stdin=TINY.read_text().replace("steps: 30", "steps: 0"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip() == "<stdin>: spec.training.steps: must be > 0 (got 0)"


# --------------------------------------------------------------------------- help


def test_top_level_help_lists_user_commands_only() -> None:
    result = cpt("--help")
    listed = {
        line.split()[0]
        for line in result.stdout.split("Commands:")[1].split("Examples:")[0].splitlines()
        if line.strip()
    }
    assert listed == set(user_commands())
    assert {"train", "api-docs"}.isdisjoint(listed)
    assert "Examples:" in result.stdout


@pytest.mark.parametrize("command", [name for name, entry in COMMANDS.items() if not entry.hidden])
def test_every_user_command_has_examples(command: str) -> None:
    result = cpt(command, "--help")
    assert result.returncode == 0, result.stderr
    examples = result.stdout.split("Examples:")[1].strip().splitlines() if "Examples:" in result.stdout else []
    assert examples and all(line.strip().startswith(("cpt ", "kubectl ", "cat ", "helm ")) for line in examples), (
        result.stdout
    )
