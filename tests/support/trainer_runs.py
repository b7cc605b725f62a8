"""The Trainer in the test process: a tiny job's spec, a set-up Trainer, the hooks tests use."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from cpt_core.api.progress import Progress
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.data import prepare
from cpt_trainer.distributed import RunContext
from cpt_trainer.train.hooks import TrainerHooks
from cpt_trainer.train.trainer import Trainer

from devkit.jobs import merge, tiny_job


def spec_for(run: Path, **overrides: Any) -> CPTJobSpec:
    base: dict[str, Any] = {
        "spec": {
            "training": {"steps": 8, "globalBatchTokens": 512, "microBatchSize": 2},
            "checkpoint": {"uri": str(run) + "/", "intervalSteps": 2, "keepLast": 3, "export": {"dtype": "float32"}},
            "evaluation": {"intervalSteps": 4, "maxBatches": 2},
            "data": {"cacheUri": str(run.parent / "cache") + "/"},
        }
    }
    job = tiny_job(**base)
    doc = job.spec.wire()
    merge(doc, overrides)
    return CPTJobSpec.model_validate(doc)


class Record(TrainerHooks):
    """Remembers (step, loss) of every step this process trained."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float]] = []

    def after_step(self, trainer: Any) -> None:
        self.seen.append((trainer.state.step, trainer.state.losses[trainer.state.step]))


class AfterStep(TrainerHooks):
    def __init__(self, action: Any) -> None:
        self.action = action

    def after_step(self, trainer: Any) -> None:
        self.action(trainer)


def make_trainer(spec: CPTJobSpec, attempt: int = 1, job: str = "t", hooks: tuple[TrainerHooks, ...] = ()) -> Trainer:
    prepared = prepare(spec.resolved(), Storage()).sources
    trainer = Trainer(spec, prepared, S3Settings(), RunContext(attempt=attempt, job=job), hooks=hooks)
    trainer.setup()
    return trainer


def read_progress(run: Path) -> Progress:
    return Progress.model_validate_json((run / "_status" / "progress.json").read_text())


class TrainerFactory(Protocol):
    """`make_trainer` (the `trainer_factory` fixture of tests/integration/conftest.py)."""

    def __call__(
        self, spec: CPTJobSpec, attempt: int = 1, job: str = "t", hooks: tuple[TrainerHooks, ...] = ()
    ) -> Trainer: ...
