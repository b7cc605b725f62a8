"""Experiment tracking from a real run: TensorBoard files read back with tensorboard's own reader
(also after a resume), an MLflow file store, a W&B offline run, and the periodic log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.faults import Faults, InjectedFault
from tests.support.trainer_runs import TrainerFactory, spec_for


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=True)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tensorboard_files_hold_every_step_once_also_after_a_resume(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, trainer_factory: TrainerFactory
) -> None:
    run = tmp_path / "run"
    spec = spec_for(run, tracking={"logEverySteps": 4})
    with pytest.raises(InjectedFault):
        trainer_factory(spec, hooks=(Faults(raise_at_step=5),)).fit()
    with caplog.at_level(logging.INFO, logger="cpt_trainer.train.trainer"):
        outcome = trainer_factory(spec, attempt=2).fit()
    assert outcome.state == "succeeded"
    found = scalars(run)
    loss = found["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 9))  # steps 5.. replayed once, not twice
    for step, value in loss:
        assert value == pytest.approx(outcome.losses[step], rel=1e-5), step
    assert [s for s, _ in found["eval/domain_loss"]] == [0, 4, 8]
    assert {"train/lr", "train/tokens_per_second", "eval/general_loss", "eval/per_source/veloria"} <= set(found)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines and lines[-1].startswith("step 8/8 (main) loss ")


def test_mlflow_and_wandb_sinks_receive_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trainer_factory: TrainerFactory
) -> None:
    import mlflow

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a real MLflow store without a server
    store = f"file://{tmp_path / 'mlruns'}"
    run = tmp_path / "run"
    spec = spec_for(
        run,
        training={"steps": 4},
        tracking={
            "mlflow": {"trackingUri": store, "experiment": "tests"},
            "wandb": {"project": "cpt", "mode": "offline"},
        },
    )
    assert trainer_factory(spec).fit().state == "succeeded"
    client = mlflow.MlflowClient(tracking_uri=store)
    (found,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    history = client.get_metric_history(found.info.run_id, "train.loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert found.data.tags["cpt.job"] == "t" and "training.globalBatchTokens" in found.data.params
    assert list((run / "wandb").glob("wandb/offline-run-*/run-*.wandb")), "no offline W&B run was written"
