"""One optimizer step: gradient accumulation over micro-batches, with a NaN guard that costs one
host synchronisation per step, not one per micro-batch.

The micro-batch losses are summed on the device. Before the last micro-batch's `engine.step()`
(the accumulation boundary, where DeepSpeed applies the update) the ranks agree whether the sum
is finite; if not, the update is never applied -- the weights in memory stay finite and nothing
is saved -- and `NonFiniteLoss` ends the run. The same reduction carries the stop request of an
interrupted run (interrupt.py), so every rank learns it after the same step at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from cpt_core.contract.reasons import Reason

from cpt_trainer.data import MicroBatch
from cpt_trainer.distributed import RunContext
from cpt_trainer.train.hooks import LoopView, TrainerHooks

STOP_SIGNALS = ("SIGINT", "SIGTERM")


class NonFiniteLoss(RuntimeError):
    reason = Reason.NonFiniteLoss


def set_lr(engine: Any, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def set_weight_decay(engine: Any, weight_decay: float) -> None:
    """The decay of the groups that decay (model.param_groups marks them); norms and biases stay at 0."""
    for group in engine.optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay


def reset_optimizer(engine: Any) -> None:
    """Fresh AdamW moments, as a new run would start with (torch optimizers re-create state lazily)."""
    optimizer = engine.optimizer
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    optimizer.state.clear()


class TrainStep:
    """Runs optimizer steps on a DeepSpeed engine."""

    def __init__(
        self,
        engine: Any,
        ctx: RunContext,
        accumulation: int,
        stop_signal: Callable[[], str | None],
        view: LoopView,
        hooks: Sequence[TrainerHooks] = (),
        regularizer: Callable[[], torch.Tensor] | None = None,
    ) -> None:
        """`stop_signal()` names the signal this rank was asked to stop by (None: carry on); `view` is what
        the hooks see of the loop."""
        self.engine, self.ctx = engine, ctx
        self.accumulation = accumulation
        self.stop_signal = stop_signal
        self.view = view
        self.hooks = list(hooks)
        self.regularizer = regularizer
        self.stop_requested: str | None = None
        """Set after a step in which some rank was asked to stop: the signal's name."""

    def __call__(self, batches: Iterator[MicroBatch], step: int, lr: float) -> float:
        """Optimizer step `step` (1-based) at learning rate `lr`; returns the mean loss over all ranks."""
        set_lr(self.engine, lr)
        device = self.ctx.device
        total = torch.zeros((), dtype=torch.float32, device=device)
        for micro in range(self.accumulation):
            batch = next(batches)
            loss = self.engine(
                input_ids=torch.from_numpy(batch.input_ids).to(device, non_blocking=True),
                labels=torch.from_numpy(batch.labels).to(device, non_blocking=True),
                position_ids=torch.from_numpy(batch.position_ids).to(device, non_blocking=True),
            ).loss
            for hook in self.hooks:
                loss = hook.on_loss(self.view, step, loss)
            total += loss.detach().float()
            self.engine.backward(loss + self.regularizer() if self.regularizer is not None else loss)
            if micro < self.accumulation - 1:
                self.engine.step()  # not a boundary: DeepSpeed only accumulates
        # One synchronisation per step: the summed loss, whether any rank saw a non-finite one, and
        # whether any rank was asked to stop (by SIGINT or by SIGTERM).
        requested = self.stop_signal()
        flags = [float(requested == name) for name in STOP_SIGNALS]
        summary = torch.cat([torch.stack([total, (~torch.isfinite(total)).float()]), total.new_tensor(flags)]).double()
        self.ctx.all_sum(summary)
        loss_sum, non_finite, *stops = summary.tolist()
        self.stop_requested = next((name for name, n in zip(STOP_SIGNALS, stops, strict=True) if n), None)
        if non_finite:
            raise NonFiniteLoss(
                f"the training loss became NaN/inf at step {step}; nothing was saved, the last committed "
                "checkpoint (none yet) is intact. Lower training.learningRate, keep training.gradClip > 0, or check "
                "the data"
            )
        self.engine.step()  # the accumulation boundary: the update is applied
        return float(loss_sum / (self.accumulation * self.ctx.world))
