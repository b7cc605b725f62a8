"""The training plan: the stages a job trains through, in order, on one engine.

A stage has its own length, learning-rate schedule (warmup and decay over the stage), weight
decay and data mixture, and may start with fresh optimizer moments. A job without `spec.stages`
is one stage named `main`: the whole run with `training.*` and the sources' weights. Steps are
counted globally; a stage covers optimizer step indices [start, end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpt_core.api.v1alpha1 import CPTJobSpec, Schedule
from cpt_core.api.v1alpha1.status import EvalResult, StageStatus
from cpt_core.contract.clock import now

from cpt_trainer.plan.schedule import lr_at


@dataclass(frozen=True)
class Stage:
    name: str
    index: int
    start: int
    steps: int
    learning_rate: float
    schedule: Schedule
    weight_decay: float
    weights: dict[str, int] = field(default_factory=dict)
    reset_optimizer: bool = False

    @property
    def end(self) -> int:
        return self.start + self.steps

    def lr_at(self, step: int) -> float:
        """The learning rate of global optimizer step index `step` (0-based), which lies in this stage."""
        return lr_at(step - self.start, self.steps, self.learning_rate, self.schedule)

    def contains(self, step: int) -> bool:
        return self.start <= step < self.end


def plan(spec: CPTJobSpec) -> list[Stage]:
    """The stages of `spec` (resolved: the learning rate is explicit)."""
    training = spec.training
    if not spec.stages:
        weights = {source.name: source.weight or 0 for source in spec.data.sources}
        return [
            Stage("main", 0, 0, spec.total_steps, spec.learning_rate, training.schedule, training.weight_decay, weights)
        ]
    stages, start = [], 0
    for index, stage in enumerate(spec.stages):
        steps = spec.stage_steps(stage)
        stages.append(
            Stage(
                name=stage.name,
                index=index,
                start=start,
                steps=steps,
                learning_rate=stage.learning_rate or spec.learning_rate,
                schedule=stage.schedule or training.schedule,
                weight_decay=training.weight_decay if stage.weight_decay is None else stage.weight_decay,
                weights={source.name: stage.weights.get(source.name, 0) for source in spec.data.sources},
                reset_optimizer=stage.reset_optimizer and index > 0,
            )
        )
        start += steps
    return stages


class StageLog:
    """What happened to each stage (a checkpointed part): phase, start and end times, the evaluation at its end."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages
        self.entries = {s.name: StageStatus(name=s.name, total_steps=s.steps) for s in stages}

    def started(self, stage: Stage) -> bool:
        """Mark `stage` running; True the first time (the caller announces it)."""
        entry = self.entries[stage.name]
        first = entry.started_at is None
        entry.phase = "Running"
        entry.started_at = entry.started_at or now()
        return first

    def finished(self, stage: Stage, evaluation: EvalResult | None) -> None:
        entry = self.entries[stage.name]
        entry.phase, entry.finished_at, entry.evaluation = "Succeeded", now(), evaluation

    def stopped(self, stage: Stage) -> None:
        self.entries[stage.name].phase = "Stopped"

    def status(self, step: int) -> list[StageStatus]:
        out = []
        for stage in self.stages:
            entry = self.entries[stage.name]
            out.append(entry.model_copy(update={"step": min(max(0, step - stage.start), stage.steps)}))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: entry.model_dump(by_alias=True, exclude_none=True) for name, entry in self.entries.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, entry in state.items():
            if name in self.entries:
                self.entries[name] = StageStatus.model_validate(entry)
