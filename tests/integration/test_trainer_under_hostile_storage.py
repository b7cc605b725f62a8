"""Tenants are untrusted: whoever can write into a job's storage must not make the job write outside its
directories, nor run code in its pods.

Against the real S3 server (SeaweedFS). Keys that leave their directory (`..`, a leading `/`, an empty
segment) are planted through `verbatim_s3`, a front that keeps every key verbatim as AWS S3 does
(SeaweedFS itself refuses or rewrites them; tests/support/verbatim_s3.py). Checkpoints are rewritten
the way their writer would (new manifest, new COMMITTED marker: tests/support/hostile_files.py), so
only the file's content can give it away. Each test says the failure it rules out.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cpt_core.api.v1alpha1 import CPTJobSpec, TrackingSpec
from cpt_core.contract import layout
from cpt_core.storage import S3Settings, Storage, parse_uri
from cpt_trainer.model.source import ModelSourceError, resolve
from cpt_trainer.telemetry.tracking import Tracker

from devkit.jobs import tiny_job
from devkit.seaweed import SeaweedS3
from tests.support.faults import Faults, InjectedFault
from tests.support.hostile_files import code_running_pt, rewrite_checkpoint
from tests.support.trainer_runs import TrainerFactory, spec_for
from tests.support.verbatim_s3 import VerbatimS3


def env_storage() -> Storage:
    """Storage as the trainer builds it: endpoint and credentials from the environment (s3_env, verbatim_s3)."""
    return Storage(S3Settings.from_spec(None))


# -- keys that leave their directory ---------------------------------------------------------------

ESCAPES = {
    # `root / "../../escaped.txt"`: two levels above the model cache's directory of this model
    "a '..' segment": lambda tmp: "../../escaped.txt",
    # `root / "/abs/escaped.txt"` is `/abs/escaped.txt`: pathlib drops the root before an absolute part
    "a leading '/' (an empty segment after the prefix)": lambda tmp: str(tmp / "escaped.txt"),
    # inside the directory, but two keys would be one file: refused rather than guessed
    "an empty segment": lambda tmp: "sub//escaped.txt",
}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_a_model_on_s3_with_a_key_that_leaves_its_directory_is_refused_naming_the_key(
    tmp_path: Path, verbatim_s3: VerbatimS3, monkeypatch: pytest.MonkeyPatch, escape: str
) -> None:
    """Not a file written wherever the key points (the model cache, or any path the pod can write)."""
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "node-cache"))
    storage = env_storage()
    prefix = f"models/hostile-{tmp_path.name}/"
    storage.upload_dir(tiny_job().spec.model.source, f"s3://{verbatim_s3.bucket}/{prefix}")
    key = prefix + ESCAPES[escape](tmp_path)
    verbatim_s3.plant(key, b"written by the tenant")

    with pytest.raises(ModelSourceError) as raised:
        resolve(f"s3://{verbatim_s3.bucket}/{prefix}", storage)
    message = str(raised.value)
    assert message.startswith("spec.model.source: ") and "\n" not in message
    assert f"s3://{verbatim_s3.bucket}/{key}" in message
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("escaped.txt")) == []
    assert verbatim_s3.served == []  # refused before any download: nothing of the model was half-written


def test_tensorboard_files_with_a_key_that_leaves_their_directory_are_not_restored(
    tmp_path: Path,
    verbatim_s3: VerbatimS3,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a file written above the local TensorBoard directory; and tracking never ends a run."""
    monkeypatch.setattr(tempfile, "tempdir", str((tmp_path / "tmp").resolve()))
    (tmp_path / "tmp").mkdir()
    run = parse_uri(f"s3://{verbatim_s3.bucket}/runs/tensorboard-escape/")
    key = run.join(layout.TENSORBOARD).key + "../escaped.txt"
    verbatim_s3.plant(key, b"written by the tenant")
    storage = env_storage()

    with caplog.at_level(logging.WARNING):
        tracker = Tracker(TrackingSpec(), run, storage, job="t", uid=None, resume_step=4, config={}, enabled=True)
    tracker.log(5, {"train/loss": 1.0})
    tracker.close()
    assert list(tmp_path.rglob("escaped.txt")) == []
    warning = next(r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage())
    assert f"s3://{verbatim_s3.bucket}/{key}" in warning and "\n" not in warning
    uploaded = [o.location.key for o in storage.list_objects(run.join(layout.TENSORBOARD))]
    assert any("tfevents" in k for k in uploaded)  # this attempt's own files still reach the run directory


# -- checkpoints that a tenant wrote ---------------------------------------------------------------


def spec_on(run: str, cache: Path, **training: Any) -> CPTJobSpec:
    return spec_for(
        cache / "run",
        training={"steps": 8, **training},
        checkpoint={"uri": run, "intervalSteps": 2, "keepLast": 5, "export": {"enabled": False}},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_factory: TrainerFactory) -> dict[str, Any]:
    """An uninterrupted local 8-step run, committed at steps 2, 4, 6 and 8, and its losses."""
    home = tmp_path_factory.mktemp("reference")
    outcome = trainer_factory(spec_on(str(home / "run") + "/", home)).fit()
    assert outcome.state == "succeeded"
    return {"home": home, "losses": outcome.losses}


def on_s3(reference: dict[str, Any], tmp_path: Path, s3: SeaweedS3, name: str) -> str:
    """The reference run as a crash after step 7 leaves it (committed 2, 4, 6), copied to S3."""
    local = tmp_path / "crashed"
    shutil.copytree(reference["home"] / "run", local)
    shutil.rmtree(local / "step-00000008")
    run = f"s3://{s3.bucket}/runs/{name}-{tmp_path.name}/"
    env_storage().upload_dir(local, run)
    return run


def test_a_checkpoint_whose_manifest_names_a_file_outside_it_is_skipped_and_the_run_resumes_from_the_one_before(
    reference: dict[str, Any],
    tmp_path: Path,
    verbatim_s3: VerbatimS3,
    monkeypatch: pytest.MonkeyPatch,
    trainer_factory: TrainerFactory,
) -> None:
    """Not a file written above the rank's download directory (and the run resuming as if all were well)."""
    monkeypatch.setattr(tempfile, "tempdir", str((tmp_path / "tmp").resolve()))
    (tmp_path / "tmp").mkdir()
    run = on_s3(reference, tmp_path, verbatim_s3, "escape")
    storage = env_storage()
    checkpoint = parse_uri(run).join(layout.step_dir(6))
    name = f"{layout.ENGINE_TAG}/../../escaped.pt"
    verbatim_s3.plant(checkpoint.join(name).key, b"written by the tenant")
    rewrite_checkpoint(storage, checkpoint, {}, planted={name: b"written by the tenant"})

    resumed = trainer_factory(spec_on(run, reference["home"]), attempt=2)
    assert list(tmp_path.rglob("escaped.pt")) == []
    assert resumed.step == 4
    outcome = resumed.fit()
    assert outcome.state == "succeeded"
    for step in range(5, 9):  # exactly the uninterrupted run
        assert outcome.losses[step] == pytest.approx(reference["losses"][step], abs=1e-6), step
    skipped = read_s3_progress(storage, run).checkpoint.skipped
    assert [s.step for s in skipped] == [6] and name in skipped[0].reason and "\n" not in skipped[0].reason


def read_s3_progress(storage: Storage, run: str) -> Any:
    from cpt_core.api.progress import Progress

    return Progress.model_validate_json(storage.read_text(parse_uri(run).join(layout.PROGRESS)))


# -- files whose unpickling runs code --------------------------------------------------------------


def test_a_rank_state_that_would_run_code_is_not_unpickled_and_the_run_continues_without_restoring_rng(
    reference: dict[str, Any],
    tmp_path: Path,
    s3_env: SeaweedS3,
    caplog: pytest.LogCaptureFixture,
    trainer_factory: TrainerFactory,
) -> None:
    """Not the tenant's code run in every resuming pod (torch.load with weights_only=False)."""
    run = on_s3(reference, tmp_path, s3_env, "rank-state")
    marker = tmp_path / "code-ran"
    checkpoint = parse_uri(run).join(layout.step_dir(6))
    rewrite_checkpoint(env_storage(), checkpoint, {layout.rank_state(0): code_running_pt(marker)})

    with caplog.at_level(logging.WARNING):
        resumed = trainer_factory(spec_on(run, reference["home"]), attempt=2)
    assert not marker.exists()
    assert resumed.step == 6  # the checkpoint is used: only the random generators are not restored
    warning = next(r.getMessage() for r in caplog.records if layout.rank_state(0) in r.getMessage())
    assert "random" in warning and "\n" not in warning
    outcome = resumed.fit()
    assert outcome.state == "succeeded" and not marker.exists()
    for step in range(7, 9):  # the tiny model has no dropout: the generators do not change its losses
        assert outcome.losses[step] == pytest.approx(reference["losses"][step], abs=1e-6), step


SHARDS = {
    "model states": f"{layout.ENGINE_TAG}/mp_rank_00_model_states.pt",
    "optimizer states": f"{layout.ENGINE_TAG}/zero_pp_rank_0_mp_rank_00_optim_states.pt",
}


@pytest.mark.parametrize("shard", list(SHARDS))
def test_a_deepspeed_shard_that_would_run_code_is_not_unpickled_and_the_run_resumes_from_the_one_before(
    reference: dict[str, Any],
    tmp_path: Path,
    s3_env: SeaweedS3,
    shard: str,
    trainer_factory: TrainerFactory,
) -> None:
    """Not the tenant's code run by DeepSpeed's checkpoint engine (torch.load with weights_only=False), then
    CheckpointUnloadable with no fallback to the checkpoint before."""
    run = on_s3(reference, tmp_path, s3_env, "shard")
    marker = tmp_path / "code-ran"
    checkpoint = parse_uri(run).join(layout.step_dir(6))
    rewrite_checkpoint(env_storage(), checkpoint, {SHARDS[shard]: code_running_pt(marker)})

    resumed = trainer_factory(spec_on(run, reference["home"]), attempt=2)
    assert not marker.exists()
    assert resumed.step == 4
    outcome = resumed.fit()
    assert outcome.state == "succeeded"
    for step in range(5, 9):
        assert outcome.losses[step] == pytest.approx(reference["losses"][step], abs=1e-6), step
    skipped = read_s3_progress(env_storage(), run).checkpoint.skipped
    assert [s.step for s in skipped] == [6] and SHARDS[shard] in skipped[0].reason
    assert "builtins.exec" in skipped[0].reason and "\n" not in skipped[0].reason


def test_a_shared_state_that_would_run_code_is_not_unpickled_and_the_run_resumes_from_the_one_before(
    tmp_path: Path, s3_env: SeaweedS3, trainer_factory: TrainerFactory
) -> None:
    """Not the tenant's code run in every resuming pod when it loads the regularisation anchor."""
    regularization = {"regularization": {"type": "l2-init", "strength": 0.01}}
    run = f"s3://{s3_env.bucket}/runs/shared-{tmp_path.name}/"
    reference = trainer_factory(spec_on(str(tmp_path / "reference") + "/", tmp_path, **regularization)).fit()
    first = trainer_factory(spec_on(run, tmp_path, **regularization), hooks=(Faults(raise_at_step=7),))
    with pytest.raises(InjectedFault):
        first.fit()
    first.checkpointer.finish()
    marker = tmp_path / "code-ran"
    checkpoint = parse_uri(run).join(layout.step_dir(6))
    rewrite_checkpoint(env_storage(), checkpoint, {layout.SHARED_STATE: code_running_pt(marker)})

    resumed = trainer_factory(spec_on(run, tmp_path, **regularization), attempt=2)
    assert not marker.exists()
    assert resumed.step == 4
    outcome = resumed.fit()
    for step in range(5, 9):
        assert outcome.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step
    skipped = read_s3_progress(env_storage(), run).checkpoint.skipped
    assert [s.step for s in skipped] == [6] and layout.SHARED_STATE in skipped[0].reason
