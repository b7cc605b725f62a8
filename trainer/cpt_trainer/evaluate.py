"""Evaluation measures: holdout loss per source (domain gain vs general forgetting, chat loss) and
knowledge probes (exact match, token F1). `evaluator.py` runs them as a part of the trainer.

Every rank evaluates the same holdout batches (bounded by `evaluation.maxBatches`), so the
numbers need no collective and ZeRO-3's lock-step forward passes line up. Losses are
token-weighted means over the label-carrying tokens.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cpt_core.api.progress import EvalResult, ProbeScores
from cpt_core.storage import Storage

from .data import PreparedSource, holdout_batches


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


@dataclass(frozen=True)
class Probe:
    question: str
    answer: str


def load_probes(storage: Storage, uri: str) -> list[Probe]:
    probes = []
    for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            probes.append(Probe(str(row["question"]), str(row["answer"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f'spec.evaluation.probes: {uri} line {number}: expected {{"question": ..., "answer": ...}} ({exc})'
            ) from None
    return probes


def _normalise(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def f1_score(prediction: str, reference: str) -> float:
    pred, ref = _normalise(prediction), _normalise(reference)
    common = Counter(pred) & Counter(ref)
    overlap = sum(common.values())
    if not pred or not ref or not overlap:
        return float(pred == ref)
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> bool:
    """The normalised prediction equals the normalised reference (case, punctuation, articles and
    whitespace ignored), as in SQuAD's exact match."""
    return _normalise(prediction) == _normalise(reference)


def score_answers(probes: Sequence[Probe], answers: Sequence[str], available: int | None = None) -> ProbeScores:
    """Exact match and token F1 of `answers` (the first line of each generation) against the references."""
    firsts = [answer.split("\n")[0].strip() for answer in answers]
    ems = [exact_match(a, p.answer) for a, p in zip(firsts, probes, strict=True)]
    f1s = [f1_score(a, p.answer) for a, p in zip(firsts, probes, strict=True)]
    return ProbeScores(
        exact_match=float(np.mean(ems)) if ems else 0.0,
        f1=float(np.mean(f1s)) if f1s else 0.0,
        count=len(ems),
        available=available if available is not None else len(ems),
    )
