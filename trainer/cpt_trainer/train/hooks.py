"""Seams for code that is not the product: fault injection in tests, profilers in benchmarks.

A `TrainerHooks` is called at fixed points of the loop. The trainer runs with none unless they
are passed in (`Trainer(..., hooks=[...])`) or named once at start-up, for processes the caller
cannot reach directly (Ray Train workers, a RayJob's entrypoint), by `CPT_TRAINER_HOOKS`:
comma-separated `module:attribute` entries, each a `TrainerHooks` or a callable that returns one.
Nothing is parsed per step. A hook sees the loop through `LoopView` (the Trainer satisfies it), never
through the Trainer's type, so the loop's parts do not depend on the loop.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import TYPE_CHECKING, Any, Protocol

from cpt_core.contract.names import HOOKS_ENV

if TYPE_CHECKING:
    import torch

    from cpt_trainer.checkpoint.checkpointer import Checkpointer
    from cpt_trainer.distributed import RunContext
    from cpt_trainer.train.state import TrainState


class LoopView(Protocol):
    """What a hook may read of the loop: its state (step, losses, metrics), where this process runs, and
    its checkpoints."""

    state: TrainState
    ctx: RunContext
    checkpointer: Checkpointer


class TrainerHooks:
    """No-op hooks; subclasses override what they need."""

    def on_loss(self, trainer: LoopView, step: int, loss: torch.Tensor) -> torch.Tensor:
        """Each micro-batch's loss of optimizer step `step` (1-based) before backward; may replace it."""
        return loss

    def after_step(self, trainer: LoopView) -> None:
        """After an optimizer step, its evaluation, checkpoint and progress write."""


def load_hooks(names: str | None = None) -> list[TrainerHooks]:
    """The hooks named by `names` (default: the CPT_TRAINER_HOOKS environment variable)."""
    names = os.environ.get(HOOKS_ENV, "") if names is None else names
    hooks: list[TrainerHooks] = []
    for entry in filter(None, (part.strip() for part in names.split(","))):
        module, _, attribute = entry.partition(":")
        if not attribute:
            raise ValueError(f"{HOOKS_ENV}: '{entry}' is not of the form module:attribute")
        target: Any = getattr(importlib.import_module(module), attribute)
        hook = target if isinstance(target, TrainerHooks) else target()
        if not isinstance(hook, TrainerHooks):
            raise TypeError(f"{HOOKS_ENV}: {entry} did not give a TrainerHooks (got {type(hook).__name__})")
        hooks.append(hook)
    return hooks


class StepTimes(TrainerHooks):
    """The wall-clock time at the end of every step (benchmarks); `synchronize` waits for the GPU first."""

    def __init__(self, synchronize: bool = False) -> None:
        self.synchronize = synchronize
        self.stamps: dict[int, float] = {}

    def after_step(self, trainer: LoopView) -> None:
        if self.synchronize:
            import torch

            torch.cuda.synchronize()
        self.stamps[trainer.state.step] = time.perf_counter()
