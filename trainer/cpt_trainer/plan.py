"""The training plan: the stages a job trains through, in order, on one engine.

A stage has its own length, learning-rate schedule (warmup and decay over the stage) and data
mixture. A job without `spec.stages` is one stage: the whole run with `training.*` and the
sources' weights. Steps are counted globally; a stage covers steps [start, end).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cpt_core.api.v1alpha1 import CPTJobSpec, Schedule

from .schedule import lr_at


@dataclass(frozen=True)
class Stage:
    name: str
    start: int
    steps: int
    learning_rate: float
    schedule: Schedule
    weights: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + self.steps

    def lr_at(self, step: int) -> float:
        """The learning rate of global optimizer step `step` (0-based), which lies in this stage."""
        return lr_at(step - self.start, self.steps, self.learning_rate, self.schedule)

    def contains(self, step: int) -> bool:
        return self.start <= step < self.end


def plan(spec: CPTJobSpec) -> list[Stage]:
    """The stages of `spec` (resolved: the learning rate is explicit)."""
    return [
        Stage(
            name="main",
            start=0,
            steps=spec.total_steps,
            learning_rate=spec.learning_rate,
            schedule=spec.training.schedule,
            weights={source.name: source.weight for source in spec.data.sources},
        )
    ]
