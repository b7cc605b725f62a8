"""The GPU benchmark cannot run here (no GPU); its code path runs on CPU so it cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_runs_its_code_on_cpu() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-smoke"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads((ROOT / "bench" / "results" / "gpu-smoke.json").read_text())
    assert figures["ours_tokens_per_s_per_gpu"] > 0 and figures["bare_tokens_per_s_per_gpu"] > 0
    assert "ratio ours/bare" in result.stdout
