"""Verify before trust, for checkpoints: a committed checkpoint is checked against its manifest
before it is resumed from; a damaged one is skipped with a warning, moved aside (never deleted),
and the run resumes from the newest good one. Resume also works with another number of training
processes (DeepSpeed's universal checkpoint conversion), and replayed steps are not reported twice.

Real DeepSpeed on CPU (gloo); multi-process runs are spawned like torchrun would. Each kind of
damage says the failure it rules out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.contract import layout
from cpt_core.storage import Storage, parse_uri
from cpt_trainer.data import prepare

from devkit.jobs import tiny_job
from tests.support.faults import Faults, InjectedFault
from tests.support.hostile_files import rewrite_checkpoint
from tests.support.multiproc import run_trainers
from tests.support.trainer_runs import TrainerFactory, read_progress


def spec_for(run: Path, **training: Any) -> CPTJobSpec:
    return tiny_job(
        spec={
            "training": {"steps": 8, "globalBatchTokens": 512, "microBatchSize": 2, **training},
            "checkpoint": {"uri": str(run) + "/", "intervalSteps": 2, "keepLast": 5, "export": {"enabled": False}},
            "evaluation": {"intervalSteps": 4, "maxBatches": 2},
            "data": {"cacheUri": str(run.parent / "cache") + "/"},
        }
    ).spec


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, trainer_factory: TrainerFactory
) -> tuple[Path, dict[int, float]]:
    """An uninterrupted 8-step run with committed checkpoints at steps 2, 4, 6 and 8."""
    run = tmp_path_factory.mktemp("reference") / "run"
    outcome = trainer_factory(spec_for(run)).fit()
    assert outcome.state == "succeeded"
    return run, outcome.losses


def crashed_after_step_7(reference: tuple[Path, dict[int, float]], tmp_path: Path) -> Path:
    """The reference run as a crash after step 7 leaves it: committed checkpoints 2, 4, 6."""
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    shutil.rmtree(run / "step-00000008")
    return run


DAMAGE = {
    # not a bare JSONDecodeError, retried without a fallback to the checkpoint before
    "truncated trainer_state.json": lambda d: (d / layout.TRAINER_STATE).write_text(
        (d / layout.TRAINER_STATE).read_text()[:40]
    ),
    # not a FileNotFoundError on a temp path, retried without a fallback to the checkpoint before
    "deleted optimizer shard": lambda d: (d / "ckpt" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink(),
    # not ignored: the RNG state would be silently lost
    "deleted rank state": lambda d: (d / "rank_state_00000.pt").unlink(),
    # same size, other bytes: only the checksum can tell
    "one byte changed in the model states": lambda d: _flip(d / "ckpt" / "mp_rank_00_model_states.pt", 2000),
}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_and_the_run_resumes_from_the_one_before(
    reference: tuple[Path, dict[int, float]],
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
    trainer_factory: TrainerFactory,
) -> None:
    run = crashed_after_step_7(reference, tmp_path)
    DAMAGE[damage](run / "step-00000006")

    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == 4  # the newest good checkpoint
    warning = next(r.getMessage() for r in caplog.records if "trying the checkpoint before it" in r.getMessage())
    assert "step-00000006/ is damaged: " in warning
    # Kept aside for inspection with a note, never deleted; gone from the run directory.
    kept = list((run / "_damaged").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("step-00000006-")
    note = json.loads((kept[0] / "DAMAGED.json").read_text())
    assert note["step"] == 6 and note["why"] == warning.split("rank 0: ", 1)[1].split("; trying")[0]
    assert not (run / "step-00000006").exists()

    outcome = resumed.fit()
    assert outcome.state == "succeeded"
    for step in range(5, 9):  # exactly the uninterrupted run
        assert outcome.losses[step] == pytest.approx(reference[1][step], abs=1e-6), step
    # The status says which checkpoint was used and which was skipped.
    ref = read_progress(run).checkpoint
    assert ref is not None and ref.step == 8 and ref.resumed_from == 4
    assert [(s.step, s.kept_at) for s in ref.skipped] == [(6, f"file://{kept[0]}/")]
    assert "is damaged" in ref.skipped[0].reason


def test_when_every_checkpoint_is_damaged_the_run_starts_from_the_starting_weights(
    reference: tuple[Path, dict[int, float]], tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    run = crashed_after_step_7(reference, tmp_path)
    for step in (2, 4, 6):
        (run / f"step-{step:08d}" / layout.TRAINER_STATE).write_text("{")
    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == 0
    assert sorted(p.name[:13] for p in (run / "_damaged").iterdir()) == [f"step-{s:08d}" for s in (2, 4, 6)]
    outcome = resumed.fit()
    assert outcome.losses[1] == pytest.approx(reference[1][1], abs=1e-6)
    assert [s.step for s in read_progress(run).checkpoint.skipped] == [6, 4, 2]


def test_the_manifest_lists_every_ranks_files_with_checksums(reference: tuple[Path, dict[int, float]]) -> None:
    step = reference[0] / "step-00000008"
    manifest = json.loads((step / layout.MANIFEST).read_text())
    on_disk = {p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file()} - {
        layout.MANIFEST,
        layout.COMMITTED,
    }
    assert set(manifest["files"]) == on_disk
    assert all(len(entry["sha256"]) == 64 for entry in manifest["files"].values())
    marker = json.loads((step / layout.COMMITTED).read_text())
    import hashlib

    assert marker["manifestSha256"] == hashlib.sha256((step / layout.MANIFEST).read_bytes()).hexdigest()


def test_checkpoints_written_before_manifests_still_resume_and_are_checked(
    reference: tuple[Path, dict[int, float]], tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    run = crashed_after_step_7(reference, tmp_path)
    for step in (2, 4, 6):  # as written by a version without manifests
        directory = run / f"step-{step:08d}"
        (directory / layout.MANIFEST).unlink()
        (directory / layout.COMMITTED).write_text(json.dumps({"step": step, "attempt": 1}))
    shard = run / "step-00000006" / "ckpt" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short: torch's zip CRCs catch it
    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == 4
    assert resumed.fit().losses[5] == pytest.approx(reference[1][5], abs=1e-6)


def test_a_rank_state_of_an_older_version_resumes_without_restoring_the_random_generators(
    reference: tuple[Path, dict[int, float]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    trainer_factory: TrainerFactory,
) -> None:
    """Not a failed resume: versions before weights_only loads pickled numpy's state, which no longer loads."""
    import io
    import random

    import numpy as np
    import torch

    run = crashed_after_step_7(reference, tmp_path)
    older = io.BytesIO()
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save({"rng": rng}, older)
    rewrite_checkpoint(Storage(), parse_uri(str(run / "step-00000006")), {layout.rank_state(0): older.getvalue()})

    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == 6
    warning = next(r.getMessage() for r in caplog.records if "random generators" in r.getMessage())
    assert layout.rank_state(0) in warning and "numpy" in warning
    outcome = resumed.fit()
    for step in range(7, 9):  # the tiny model has no dropout: the generators do not change its losses
        assert outcome.losses[step] == pytest.approx(reference[1][step], abs=1e-6), step


def test_replayed_steps_are_reported_once(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    """report/metrics.jsonl has one row per step, also for the steps replayed after a resume."""
    run = tmp_path / "run"
    first = trainer_factory(spec_for(run), hooks=(Faults(raise_at_step=7),))
    with pytest.raises(InjectedFault):
        first.fit()
    first.checkpointer.finish()
    resumed = trainer_factory(spec_for(run), attempt=2)
    assert resumed.step == 6  # steps 7 was trained, lost, and is replayed
    assert resumed.fit().state == "succeeded"
    rows = [json.loads(line) for line in (run / "report" / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    eval_steps = [r["step"] for r in rows if r["kind"] == "eval"]
    assert train_steps == list(range(1, 9))
    assert eval_steps == [0, 4, 8]


# -- resume with another number of training processes ----------------------------------------------


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_run_of_two_processes_resumes_with_one(
    tmp_path: Path, zero_stage: int, trainer_factory: TrainerFactory
) -> None:
    """Not "written by 2 training processes; resuming it needs the same number" (a RuntimeError,
    retried until RestartLimitReached)."""
    run = tmp_path / "run"
    spec = spec_for(run).model_copy(
        update={"deepspeed": spec_for(run).deepspeed.model_copy(update={"zero_stage": zero_stage})}
    )
    prepared = prepare(spec.resolved(), Storage()).sources
    two = run_trainers(spec, prepared, world=2, out=tmp_path / "two")
    assert [r["state"] for r in two] == ["succeeded", "succeeded"]
    reference = {int(k): v for k, v in two[0]["losses"].items()}
    shutil.rmtree(run / "step-00000006")
    shutil.rmtree(run / "step-00000008")
    assert json.loads((run / "step-00000004" / layout.TRAINER_STATE).read_text())["world"] == 2

    one = trainer_factory(spec, attempt=2)
    assert one.step == 4
    # The sampler continues at the same global sample: step 5 trains samples 16..19 (4 rows a step).
    indices = sorted(
        int(i) for m in range(one.data.loader.accumulation) for i in one.data.loader.micro_batch(4, m).indices
    )
    assert indices == list(range(16, 20))
    outcome = one.fit()
    assert outcome.state == "succeeded"
    for step in range(5, 9):
        assert outcome.losses[step] == pytest.approx(reference[step], abs=1e-5), step
    assert json.loads((run / "step-00000008" / layout.TRAINER_STATE).read_text())["world"] == 1


def test_a_run_of_one_process_resumes_with_two(reference: tuple[Path, dict[int, float]], tmp_path: Path) -> None:
    run = crashed_after_step_7(reference, tmp_path)
    shutil.rmtree(run / "step-00000006")
    spec = spec_for(run)
    prepared = prepare(spec.resolved(), Storage()).sources
    two = run_trainers(spec, prepared, world=2, out=tmp_path / "two", attempt=2)
    assert [r["resumedAt"] for r in two] == [4, 4]
    assert sorted(two[0]["nextIndices"] + two[1]["nextIndices"]) == list(range(16, 20))
    assert [r["state"] for r in two] == ["succeeded", "succeeded"]
    losses = {int(k): v for k, v in two[0]["losses"].items()}
    for step in range(5, 9):
        assert losses[step] == pytest.approx(reference[1][step], abs=1e-5), step
    manifest = json.loads((run / "step-00000008" / layout.MANIFEST).read_text())
    assert {"rank_state_00000.pt", "rank_state_00001.pt"} <= set(manifest["files"]) and manifest["world"] == 2
