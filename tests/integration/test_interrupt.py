"""Interruptions: SIGINT/SIGTERM end a run cleanly, with a checkpoint of the step in progress when the
grace period allows, a progress file that says `interrupted`, one line that says where the run resumes,
and exit status 130 / 143.

What this rules out: SIGINT during `cpt run` exiting 1 without a word (Ray Train's own SIGINT handler),
SIGTERM aborting with 134 and a C++ stack dump, and either leaving `progress.json` at "running".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.contract import layout
from cpt_core.storage import Storage
from cpt_trainer.train.hooks import TrainerHooks
from cpt_trainer.train.interrupt import request_stop

from devkit.jobs import tiny_job, tiny_job_doc
from tests.support.trainer_runs import TrainerFactory, read_progress

# Every test runs with the one-process group, also those that start `cpt run` (it inherits the group's environment).
pytestmark = pytest.mark.usefixtures("process_group")


def spec_for(run: Path, **checkpoint: Any) -> CPTJobSpec:
    return tiny_job(
        spec={
            "training": {"steps": 8, "globalBatchTokens": 512, "microBatchSize": 2},
            "checkpoint": {"uri": str(run) + "/", "intervalSteps": 5, "export": {"enabled": False}, **checkpoint},
            "evaluation": {"intervalSteps": 4, "maxBatches": 2},
            "data": {"cacheUri": str(run.parent / "cache") + "/"},
        }
    ).spec


class At(TrainerHooks):
    """Runs `action(trainer)` after step `step`, and slows the steps after it (the watcher polls each second)."""

    def __init__(self, step: int, action: Any, then_sleep: float = 0.0) -> None:
        self.step, self.action, self.then_sleep = step, action, then_sleep

    def after_step(self, trainer: Any) -> None:
        if trainer.state.step == self.step:
            self.action(trainer)
        elif trainer.state.step > self.step:
            time.sleep(self.then_sleep)


def test_a_stop_request_finishes_the_step_commits_it_and_resumes_exactly(
    tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    reference = trainer_factory(spec_for(tmp_path / "reference")).fit()
    run = tmp_path / "run"
    # The driver's side: the request file, as `cpt run` writes it on SIGTERM. Rank 0 polls it.
    write = At(3, lambda t: request_stop(Storage(), str(run), attempt=1, signal_name="SIGTERM"), then_sleep=0.6)
    outcome = trainer_factory(spec_for(run), hooks=(write,)).fit()
    assert outcome.state == "interrupted" and outcome.reason == "Interrupted"
    stopped = outcome.step
    assert 3 < stopped < 8
    # The step it stopped after is committed, although the interval is 5.
    assert (run / f"step-{stopped:08d}" / layout.COMMITTED).exists()
    written = read_progress(run)
    assert written.state == "interrupted" and written.reason == "Interrupted"
    assert written.message.startswith(f"interrupted by SIGTERM after step {stopped}; the next run resumes from")
    assert written.checkpoint is not None and written.checkpoint.step == stopped
    # report/ is written on an interruption too: the curves and metrics up to the stop.
    assert written.output is not None and written.output.report_uri == f"file://{run}/report/"
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert summary["state"] == "interrupted" and summary["steps"] == stopped
    rows = [json.loads(line) for line in (run / "report" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows if r["kind"] == "train") == stopped and (run / "report" / "loss.png").exists()

    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == stopped
    final = resumed.fit()
    assert final.state == "succeeded"
    for step in range(stopped + 1, 9):
        assert final.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step


def test_without_a_grace_period_the_run_stops_at_the_last_committed_checkpoint(
    tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    run = tmp_path / "run"
    ask = At(2, lambda t: t.stop_signal.request("SIGINT"))  # seen by every rank in step 3's reduction
    outcome = trainer_factory(spec_for(run, interruptGraceSeconds=0), hooks=(ask,)).fit()
    assert outcome.state == "interrupted" and outcome.step == 3
    assert not (run / "step-00000003").exists()
    written = read_progress(run)
    assert written.state == "interrupted" and written.checkpoint is None
    assert "after step 3; the next run resumes from the start (no checkpoint was committed yet)" in written.message


# -- `cpt run` as a user runs it -------------------------------------------------------------------------


def start_cpt_run(job: Path, log: Path) -> subprocess.Popen[str]:
    # Its own session, as a terminal's foreground job: Ctrl-C reaches the whole process group.
    return subprocess.Popen(
        [sys.executable, "-m", "cpt_core.cli", "run", str(job)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        cwd="/",
        start_new_session=True,
    )


def wait_for_step(run: Path, process: subprocess.Popen[str], step: int, timeout: float = 400) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "cpt run ended before the signal"
        try:
            seen = json.loads((run / "_status" / "progress.json").read_text())["progress"]["step"]
        except (OSError, ValueError, KeyError):
            seen = 0
        if seen >= step:
            return int(seen)
        time.sleep(0.3)
    raise AssertionError(f"no step {step} within {timeout} s")


def our_lines(output: str) -> list[str]:
    """What `cpt run` itself printed (not the lines Ray forwards from its processes)."""
    return [line for line in output.splitlines() if "pid=" not in line]


def write_job(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    job = tmp_path / "job.yaml"
    doc = tiny_job_doc(
        spec={
            "training": {"steps": 200},
            "checkpoint": {"uri": str(run) + "/", "intervalSteps": 100, "export": {"enabled": False}},
            "evaluation": {"intervalSteps": 100},
            "data": {"cacheUri": str(tmp_path / "cache") + "/"},
            "cluster": {"workers": 2},
        }
    )
    job.write_text(yaml.safe_dump(doc))
    return job, run


@pytest.mark.slow
def test_sigterm_ends_cpt_run_with_143_a_checkpoint_and_one_line(tmp_path: Path) -> None:
    job, run = write_job(tmp_path)
    log = tmp_path / "out.log"
    process = start_cpt_run(job, log)
    try:
        wait_for_step(run, process, 3)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    written = read_progress(run)
    assert written.state == "interrupted" and written.reason == "Interrupted", output[-3000:]
    stopped = written.progress.step
    assert written.checkpoint is not None and written.checkpoint.step == stopped
    assert (run / f"step-{stopped:08d}" / layout.COMMITTED).exists()
    lines = our_lines(output)
    assert f"interrupted at step {stopped}: `cpt run {job}` resumes from checkpoint step {stopped}" in lines, output
    assert "Traceback" not in "\n".join(lines) and "core dumped" not in output.lower()


@pytest.mark.slow
def test_ctrl_c_twice_abandons_the_step_and_exits_130(tmp_path: Path) -> None:
    job, run = write_job(tmp_path)
    log = tmp_path / "out.log"
    process = start_cpt_run(job, log)
    try:
        wait_for_step(run, process, 3)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # and again: stop at once
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = log.read_text()
    written = read_progress(run)
    assert written.state == "interrupted" and written.reason == "Interrupted", output[-3000:]
    assert written.message.startswith("interrupted by SIGINT")
    assert "interrupted at step" in output and "resumes from" in output
    assert "Traceback" not in "\n".join(our_lines(output))
    # Nothing of the run is left running: no process of its session (Ray's processes keep the driver's).
    time.sleep(3)
    sessions = subprocess.run(["ps", "-eo", "sid=,pid=,args="], capture_output=True, text=True).stdout.splitlines()
    assert [line for line in sessions if line.split()[0] == str(process.pid)] == []
