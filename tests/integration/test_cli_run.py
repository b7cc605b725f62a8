"""`cpt run` as a user runs it: the CI smoke job (examples/local-tiny.yaml on an embedded Ray)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.jobs import TINY_MODEL, tiny_job_doc
from tests.support.faults import fault_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.trainer]  # `cpt run` trains (torch, Ray) in a subprocess


def write_job(path: Path, **spec: object) -> Path:
    """examples/local-tiny.yaml with absolute data paths and the given spec overrides."""
    path.write_text(yaml.safe_dump(tiny_job_doc(spec=spec)))
    return path


def cpt_run(job: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # capture_output: stdout and stderr are pipes, not a terminal (as in CI, `nohup`, `| tee`).
    return subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", "run", *options, str(job)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd="/",
        env={**os.environ, **(env or {})},
    )


def test_cpt_run_trains_reports_and_resumes(tmp_path: Path) -> None:
    # A relative checkpoint.uri is resolved against the file's directory.
    job = write_job(tmp_path / "job.yaml", checkpoint={"uri": "run/"})
    # 0.2 s per step: the 30 steps take longer than the trainer's 2 s between progress writes, on any machine.
    first = cpt_run(job, "--progress-seconds", "0", env=fault_env("pause_per_step=0.2"))
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-3000:]
    # The final report is the result (stdout); progress is a diagnostic (stderr).
    assert "domain holdout loss" in first.stdout and "general holdout loss" in first.stdout
    # Without a terminal: plain progress lines while it trains, not a silent wait for the end.
    running = re.findall(
        r"^progress: running step (\d+)/30 \(\d+ %\)  loss \d+\.\d+  [\d,]+ tok/s  ETA \d+m\d\ds", first.stderr, re.M
    )
    # (The trainer writes its progress file at most every 2 s, so a 30-step run shows one or two.)
    assert running and len(set(running)) == len(running), first.stderr[-3000:]
    assert re.search(r"^progress: succeeded step 30/30 \(100 %\)", first.stderr, re.M)
    assert "attempt 1" in output
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").exists()
    # The model card of the real export, read back with the Hub's parser.
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "final" / "README.md")
    assert card.data.pipeline_tag == "text-generation" and "continued-pretraining" in card.data.tags
    assert card.data.datasets and "## Evaluation" in card.text and "domain holdout loss" in card.text
    assert (run / "report" / "loss.png").exists() and (run / "report" / "metrics.jsonl").exists()
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["domainLossAfter"] < summary["domainLossBefore"]
    progress = json.loads((run / "_status" / "progress.json").read_text())
    assert progress["state"] == "succeeded" and progress["progress"]["step"] == 30

    again = cpt_run(job)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "attempt 2" in again.stdout + again.stderr
    assert "resuming from" in again.stdout + again.stderr


def test_cpt_run_with_a_bad_file_fails_cleanly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "examples" / "local-tiny.yaml").read_text().replace("steps: 30", "steps: 0"))
    result = cpt_run(bad)
    assert result.returncode == 1
    assert f"{bad}: spec.training.steps: must be > 0 (got 0)" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert cpt_run(tmp_path / "nope.yaml").returncode == 2


def test_cpt_run_reports_a_model_that_cannot_train_without_retrying(tmp_path: Path) -> None:
    """A set-up failure no restart can fix ends the run at once, with the reason, in the progress file too."""
    model = tmp_path / "small-vocab"
    model.mkdir()
    config = json.loads((TINY_MODEL / "config.json").read_text())
    config["vocab_size"] = 1000
    (model / "config.json").write_text(json.dumps(config))
    job = write_job(
        tmp_path / "job.yaml",
        model={"source": str(model), "tokenizer": str(TINY_MODEL)},
        checkpoint={"uri": str(tmp_path / "run") + "/"},
        cluster={"workers": 1},
    )
    result = cpt_run(job)
    assert result.returncode == 1
    assert "tokenizer/model mismatch" in result.stdout + result.stderr
    progress = json.loads((tmp_path / "run" / "_status" / "progress.json").read_text())
    assert progress["state"] == "failed" and progress["reason"] == "ModelSourceError"
    assert "Traceback" not in result.stdout
