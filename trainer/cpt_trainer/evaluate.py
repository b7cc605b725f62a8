"""Evaluation: holdout loss per source (domain gain vs general forgetting), QA probes, and the
`Evaluator` part of the trainer that runs them and keeps the forgetting watch.

Every rank evaluates the same holdout batches (bounded by `evaluation.maxBatches`), so the
numbers need no collective and ZeRO-3's lock-step forward passes line up. Losses are
token-weighted means over the label-carrying tokens.
"""

from __future__ import annotations

import json
import logging
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from cpt_core.api.progress import EvalResult, EvaluationStatus, ProbeScores
from cpt_core.api.v1alpha1 import CPTJobSpec, Forgetting, ForgettingAction
from cpt_core.storage import Storage

from .data import PreparedSource, holdout_batches

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------- the trainer's part


class ForgettingWatch:
    """The general (replay) holdout loss against its step-0 baseline, and what to do past the limit."""

    def __init__(self, policy: Forgetting) -> None:
        self.policy = policy
        self.detected = False

    def observe(self, increase: float | None) -> bool:
        """Record an evaluation's increase; True when it is over the limit."""
        over = increase is not None and increase > self.policy.max_general_loss_increase
        self.detected = self.detected or over
        return over

    @property
    def should_stop(self) -> bool:
        return self.detected and self.policy.action == ForgettingAction.stop

    def stop_message(self, increase: float | None, step: int, checkpoint: str) -> str:
        return (
            f"general loss rose {100 * (increase or 0.0):.1f} % over its baseline (limit "
            f"{100 * self.policy.max_general_loss_increase:.1f} %); stopped at step {step} with checkpoint "
            f"{checkpoint}. Add replay data, lower the learning rate, or raise "
            "evaluation.forgetting.maxGeneralLossIncrease"
        )


class Evaluator:
    """Holdout losses at step 0, every `evaluation.intervalSteps` and at the end; probes before and after."""

    def __init__(
        self,
        spec: CPTJobSpec,
        prepared: Sequence[PreparedSource],
        storage: Storage,
        device: torch.device,
        tokenizer: Any,
        score_on_this_rank: bool,
        synced: bool,
    ) -> None:
        self.spec, self.prepared, self.storage, self.device = spec, list(prepared), storage, device
        self.tokenizer = tokenizer
        self.score_on_this_rank, self.synced = score_on_this_rank, synced
        self.probes = load_probes(storage, spec.evaluation.probes) if spec.evaluation.probes else []
        self.watch = ForgettingWatch(spec.evaluation.forgetting)
        self.baseline: EvalResult | None = None
        self.latest: EvalResult | None = None
        self.probes_before: ProbeScores | None = None
        self.probes_after: ProbeScores | None = None

    def due(self, step: int, last_step: int) -> bool:
        return step % self.spec.evaluation.interval_steps == 0 or step == last_step

    def run(self, model: Any, step: int) -> EvalResult:
        result = evaluate(
            model,
            self.prepared,
            self.storage,
            step,
            self.spec.training.micro_batch_size,
            self.spec.evaluation.max_batches,
            self.device,
        )
        self.latest = result
        if self.baseline is None:
            self.baseline = result
        increase = self.general_loss_increase()
        already = self.watch.detected
        if self.watch.observe(increase) and not already:
            log.warning(
                "forgetting detected at step %d: general loss %.4f is %.1f %% above its baseline %.4f",
                step,
                result.general_loss,
                100 * (increase or 0.0),
                self.baseline.general_loss,
            )
        return result

    def score(self, model: Any) -> ProbeScores | None:
        """Probe scores (ZeRO-3: every rank takes part in generation; otherwise rank 0 alone)."""
        if not self.probes or not self.score_on_this_rank:
            return None
        return score_probes(model, self.tokenizer, self.probes, self.device, synced=self.synced)

    def general_loss_increase(self) -> float | None:
        base, last = self.baseline, self.latest
        if not (base and last and base.general_loss and last.general_loss):
            return None
        return last.general_loss / base.general_loss - 1.0

    def row(self) -> dict[str, Any]:
        """The latest evaluation as a metrics row."""
        assert self.latest is not None
        return {**self.latest.model_dump(by_alias=True), "generalLossIncrease": self.general_loss_increase()}

    def status(self) -> EvaluationStatus:
        return EvaluationStatus(
            baseline=self.baseline,
            latest=self.latest,
            general_loss_increase=self.general_loss_increase(),
            forgetting_detected=self.watch.detected,
            probes_before=self.probes_before,
            probes_after=self.probes_after,
        )

    def summary(self) -> dict[str, float]:
        """Before/after figures for the report and the model card."""
        base, last = self.baseline, self.latest

        def fmt(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        out = {
            "domainLossBefore": fmt(base.domain_loss if base else None),
            "domainLossAfter": fmt(last.domain_loss if last else None),
            "generalLossBefore": fmt(base.general_loss if base else None),
            "generalLossAfter": fmt(last.general_loss if last else None),
            "generalLossIncrease": fmt(self.general_loss_increase()),
            "probeF1Before": fmt(self.probes_before.f1 if self.probes_before else None),
            "probeF1After": fmt(self.probes_after.f1 if self.probes_after else None),
        }
        return {k: v for k, v in out.items() if v is not None}

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.model_dump(by_alias=True) if self.baseline else None,
            "latest": self.latest.model_dump(by_alias=True) if self.latest else None,
            "probesBefore": self.probes_before.model_dump(by_alias=True) if self.probes_before else None,
            "forgettingDetected": self.watch.detected,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = EvalResult.model_validate(state["baseline"]) if state.get("baseline") else None
        self.latest = EvalResult.model_validate(state["latest"]) if state.get("latest") else None
        self.probes_before = ProbeScores.model_validate(state["probesBefore"]) if state.get("probesBefore") else None
        self.watch.detected = bool(state.get("forgettingDetected", False))
