"""Regularisation against forgetting: a penalty on moving the trainable weights away from an anchor.

- `l2-init`: strength/2 x sum (w - w0)^2, w0 = the weights when the job started;
- `ewc` (Elastic Weight Consolidation, Kirkpatrick et al. 2017): strength/2 x sum F (w - w*)^2, where
  w* are the weights at the start of each stage and F is a diagonal (empirical) Fisher estimate: the
  mean squared gradient of the loss over `fisherBatches` replay holdout micro-batches taken there.

The penalty is added to each micro-batch's loss before backward; DeepSpeed's scaling by the
accumulation steps and its averaging over ranks then count it once per optimizer step. The
anchor (and F) are the part's state: saved once per checkpoint, loaded by every rank.
Needs the full weights on every process (ZeRO 0-2; the spec rejects ZeRO-3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from cpt_core.api.v1alpha1 import Regularization, RegularizationType
from cpt_core.storage import Storage

from cpt_trainer.data import PreparedSource, holdout_batches
from cpt_trainer.distributed import RunContext


def penalty(
    params: list[torch.Tensor], anchor: list[torch.Tensor], fisher: list[torch.Tensor] | None, strength: float
) -> torch.Tensor:
    """strength/2 x sum F (w - anchor)^2 (F = 1 without a Fisher estimate); differentiable in `params`."""
    total = params[0].new_zeros((), dtype=torch.float32)
    for i, (w, a) in enumerate(zip(params, anchor, strict=True)):
        diff = w.float() - a
        total = total + ((fisher[i] * diff * diff).sum() if fisher is not None else (diff * diff).sum())
    return 0.5 * strength * total


class Regularizer:
    def __init__(self, spec: Regularization, module: Any) -> None:
        self.spec = spec
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.anchor: list[torch.Tensor] | None = None
        self.fisher: list[torch.Tensor] | None = None
        self.stage: str | None = None

    @property
    def ewc(self) -> bool:
        return self.spec.type == RegularizationType.ewc

    def start(
        self, stage: str, module: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> None:
        """Anchor at the current weights: once for l2-init, at every stage start for ewc (with a Fisher estimate)."""
        if self.anchor is not None and not self.ewc:
            return
        self.anchor = [p.detach().float().clone() for p in self.params]
        self.stage = stage
        if self.ewc:
            self.fisher = self._fisher(module, batches)

    def _fisher(
        self, module: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        fisher = [torch.zeros_like(a) for a in self.anchor or []]
        count = 0
        was_training = module.training
        module.eval()
        try:
            for input_ids, labels, positions in batches:
                loss = module(input_ids=input_ids, labels=labels, position_ids=positions).loss
                # autograd.grad, not backward: nothing accumulates into .grad (DeepSpeed owns those buffers).
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
                for f, g in zip(fisher, grads, strict=True):
                    if g is not None:
                        f += g.detach().float() ** 2
                count += 1
        finally:
            module.train(was_training)
        if count == 0:
            raise ValueError("regularization ewc: no replay holdout batches to estimate the Fisher information from")
        return [f / count for f in fisher]

    def __call__(self) -> torch.Tensor:
        assert self.anchor is not None, "Regularizer.start() was not called"
        return penalty(self.params, self.anchor, self.fisher, self.spec.strength)

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "fisher": self.fisher, "stage": self.stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.params[0].device
        self.anchor = [t.to(device) for t in state["anchor"]] if state.get("anchor") is not None else None
        self.fisher = [t.to(device) for t in state["fisher"]] if state.get("fisher") is not None else None
        self.stage = state.get("stage")


def fisher_batches(
    replay: Sequence[PreparedSource], storage: Storage, micro_batch: int, regularizer: Regularizer, ctx: RunContext
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The replay holdout micro-batches (`fisherBatches` of them) the Fisher estimate of `ewc` is taken on."""
    count = regularizer.spec.fisher_batches
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for source in (p for p in replay if p.holdout_rows):
        for ids, labels, positions in holdout_batches(source, storage, micro_batch, count - len(out)):
            device = ctx.device
            out.append(
                (
                    torch.from_numpy(ids).to(device),
                    torch.from_numpy(labels).to(device),
                    torch.from_numpy(positions).to(device),
                )
            )
        if len(out) >= count:
            break
    return out
