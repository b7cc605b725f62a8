"""The GPU benchmark cannot run here (no GPU); its code path runs on CPU so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.trainer  # the benchmarks train (torch) and synthesise (local Ray) in a subprocess


def test_gpu_benchmark_runs_its_code_on_cpu() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-smoke"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (figures,) = json.loads((ROOT / "bench" / "results" / "gpu-smoke.json").read_text())["runs"]
    assert figures["ours_tokens_per_s_per_gpu"] > 0 and figures["bare_tokens_per_s_per_gpu"] > 0
    # The steady step, the checkpoint stall and the evaluation cost are measured apart.
    assert figures["checkpoint_stall_s"] is not None and figures["evaluation_s"] is not None
    assert figures["steady_step_s"] > 0 and figures["startup_s"] > 0
    assert "ratio ours/bare" in result.stdout and "checkpoint stall" in result.stdout


def test_synthesis_benchmark_prints_ours_against_the_bare_loop(tmp_path: Path) -> None:
    out = tmp_path / "synthesis.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "synthesis.py"),
            "--skip-model",
            "--cloze-documents",
            "300",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())["cloze"]
    assert figures["bare"]["pairs"] == figures["ours"]["1_workers"]["pairs"] > 0
    assert figures["ours_over_bare_per_worker_generation"] > 0
    assert "ratio ours/bare per worker" in result.stdout
