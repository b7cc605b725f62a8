"""`cpt prepare` as scripts use it: the job from stdin (beside a Secret), `-o json` on stdout and
nothing else there, progress and logs on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devkit.jobs import tiny_job_doc

pytestmark = pytest.mark.trainer  # `cpt prepare` tokenizes (transformers) in a subprocess

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"}, "stringData": {"A": "b"}}


def test_prepare_reads_stdin_and_prints_json_results(tmp_path: Path) -> None:
    doc = tiny_job_doc(spec={"checkpoint": {"uri": str(tmp_path / "run") + "/"}})
    manifest = yaml.safe_dump_all([SECRET, doc])

    def prepare() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cpt_core.cli", "prepare", "-o", "json", "-"],
            input=manifest,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )

    first = prepare()
    assert first.returncode == 0, first.stderr[-3000:]
    records = json.loads(first.stdout)  # stdout is the result only: it parses as a whole
    assert [r["source"] for r in records] == [s["name"] for s in doc["spec"]["data"]["sources"]]
    assert all(not r["cacheHit"] and r["trainRows"] > 0 and r["uri"].startswith("file://") for r in records)
    assert "<stdin>#1: skipped Secret 's3-credentials' (v1): not a CPTJob" in first.stderr
    assert "cpt_trainer.data.prepare" in first.stderr  # the logs stay on stderr

    again = prepare()
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(r["cacheHit"] for r in json.loads(again.stdout))
