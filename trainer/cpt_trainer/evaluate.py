"""Evaluation: holdout loss per source (domain gain vs general forgetting) and QA probes.

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
from cpt_operator.api.progress import EvalResult, ProbeScores
from cpt_operator.storage import Storage

from .data import PreparedSource, holdout_batches

MAX_PROBES = 24
MAX_NEW_TOKENS = 24


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
    return probes[:MAX_PROBES]


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
    """The normalised reference appears as the start of the normalised prediction."""
    pred, ref = _normalise(prediction), _normalise(reference)
    return bool(ref) and pred[: len(ref)] == ref


@torch.no_grad()
def score_probes(
    model: Any, tokenizer: Any, probes: Sequence[Probe], device: torch.device, synced: bool
) -> ProbeScores:
    """Greedy answers to each question, scored by exact match and token F1."""
    was_training = model.training
    model.eval()
    ems, f1s = [], []
    try:
        for probe in probes:
            if tokenizer.chat_template:
                prompt = tokenizer.apply_chat_template(
                    [{"role": "user", "content": probe.question}], tokenize=False, add_generation_prompt=True
                )
            else:
                prompt = f"Question: {probe.question}\nAnswer:"
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)["input_ids"]
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=torch.ones_like(ids).to(device),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                synced_gpus=synced,
                use_cache=True,
            )
            answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip().split("\n")[0]
            ems.append(exact_match(answer, probe.answer))
            f1s.append(f1_score(answer, probe.answer))
    finally:
        model.train(was_training)
    return ProbeScores(
        exact_match=float(np.mean(ems)) if ems else 0.0, f1=float(np.mean(f1s)) if f1s else 0.0, count=len(ems)
    )
