"""Evaluation measures: holdout loss per source (domain gain vs general forgetting, chat loss) and
knowledge probes (exact match, token F1). `evaluator.py` runs them as a part of the trainer.

Every rank evaluates the same holdout batches (bounded by `evaluation.maxBatches`), so the
numbers need no collective and ZeRO-3's lock-step forward passes line up. Losses are
token-weighted means over the label-carrying tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from cpt_core.api.v1alpha1.status import EvalResult
from cpt_core.storage import Storage

from cpt_trainer.data import PreparedSource, holdout_batches


@torch.no_grad()
def holdout_loss(
    model: Any, prepared: PreparedSource, storage: Storage, micro_batch: int, max_batches: int, device: torch.device
) -> tuple[float, int]:
    """(mean token loss, label tokens) on a source's holdout."""
    total, count = 0.0, 0
    for input_ids, labels, positions in holdout_batches(prepared, storage, micro_batch, max_batches):
        tokens = int((labels[:, 1:] != -100).sum())
        if tokens == 0:
            continue
        out = model(
            input_ids=torch.from_numpy(input_ids).to(device),
            labels=torch.from_numpy(labels).to(device),
            position_ids=torch.from_numpy(positions).to(device),
        )
        total += float(out.loss) * tokens
        count += tokens
    return (total / count if count else float("nan")), count


def evaluate(
    model: Any,
    prepared: Sequence[PreparedSource],
    storage: Storage,
    step: int,
    micro_batch: int,
    max_batches: int,
    device: torch.device,
) -> EvalResult:
    was_training = model.training
    model.eval()
    try:
        per_source: dict[str, tuple[float, int]] = {}
        for source in prepared:
            if source.holdout_rows:
                per_source[source.name] = holdout_loss(model, source, storage, micro_batch, max_batches, device)
    finally:
        model.train(was_training)

    def pooled(role: str) -> float | None:
        parts = [per_source[s.name] for s in prepared if s.role == role and s.name in per_source]
        tokens = sum(n for _, n in parts)
        return sum(loss * n for loss, n in parts) / tokens if tokens else None

    return EvalResult(
        step=step,
        domain_loss=pooled("domain"),
        general_loss=pooled("replay"),
        instruction_loss=pooled("instruction"),
        per_source={name: loss for name, (loss, _) in per_source.items()},
    )


# --------------------------------------------------------------------------- probes
