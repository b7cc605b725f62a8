"""The trainer's evaluation part: what is measured when, and the forgetting decision.

The trainer's evaluation part: holdout losses, knowledge probes and instruction-following
retention at step 0, every `evaluation.intervalSteps`, at the end of every stage and of the run;
and the forgetting watch that turns them into a decision (warn, stop, or adapt the replay share).

Holdout losses are computed on every rank (the same batches, no collective). Generation runs on
rank 0 alone, or on every rank in lock-step under ZeRO-3 (`synced`); rank 0's scores are then
shared so every rank takes the same decision (the ranks must stay in step).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cpt_core.api.v1alpha1 import CPTJobSpec, ForgettingAction, SourceRole
from cpt_core.api.v1alpha1.status import EvalResult, EvaluationStatus
from cpt_core.storage import Storage

from cpt_trainer.data import PreparedSource
from cpt_trainer.distributed import RunContext
from cpt_trainer.eval.forgetting import ForgettingWatch
from cpt_trainer.eval.holdout import evaluate
from cpt_trainer.eval.instruction_following import load_prompts
from cpt_trainer.eval.instruction_following import score as score_instruction_following
from cpt_trainer.eval.probes import load_probes, score_answers
from cpt_trainer.model.generation import generate, render

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(
        self,
        spec: CPTJobSpec,
        prepared: Sequence[PreparedSource],
        storage: Storage,
        ctx: RunContext,
        tokenizer: Any,
        synced: bool,
    ) -> None:
        self.spec, self.prepared, self.storage, self.ctx = spec, list(prepared), storage, ctx
        self.tokenizer = tokenizer
        self.synced = synced
        self.generates = synced or ctx.leader
        evaluation = spec.evaluation
        probes = load_probes(storage, evaluation.probes) if evaluation.probes else []
        self.probes_available = len(probes)
        self.probes = probes[: evaluation.max_probes] if evaluation.max_probes else probes
        if len(self.probes) < len(probes):
            log.warning(
                "evaluation.maxProbes %d: scoring %d of the %d probes in %s",
                evaluation.max_probes,
                len(self.probes),
                len(probes),
                evaluation.probes,
            )
        following = evaluation.instruction_following
        enabled = following.enabled if following.enabled is not None else spec.model.kind == "instruct"
        prompts = load_prompts(storage, following.prompts) if enabled else []
        self.prompts = prompts[: following.max_prompts] if following.max_prompts else prompts
        if len(self.prompts) < len(prompts):
            log.warning(
                "evaluation.instructionFollowing.maxPrompts %d: scoring %d of %d prompts",
                following.max_prompts,
                len(self.prompts),
                len(prompts),
            )
        self.watch = ForgettingWatch(evaluation.forgetting)
        self.baseline: EvalResult | None = None
        self.latest: EvalResult | None = None
        self.has_replay = any(p.role == SourceRole.replay.value for p in self.prepared)

    def due(self, step: int, stage_end: int) -> bool:
        return step % self.spec.evaluation.interval_steps == 0 or step == stage_end

    def run(self, model: Any, step: int) -> EvalResult:
        """Evaluate the model at `step` (every rank), update the watch, and return the result."""
        result = evaluate(
            model,
            self.prepared,
            self.storage,
            step,
            self.spec.training.micro_batch_size,
            self.spec.evaluation.max_batches,
            self.ctx.device,
        )
        generated = self._generated(model) if self.generates else None
        if self.ctx.world > 1:
            generated = self.ctx.share(generated)  # type: ignore[assignment]
        if generated is not None:
            result = result.model_copy(update=generated)
        self.latest = result
        if self.baseline is None:
            self.baseline = result
        already = self.watch.detected
        if self.watch.observe(self.baseline, self.latest) and not already:
            log.warning("forgetting detected at step %d: %s", step, self.watch.describe(self.baseline, self.latest))
        return result

    def _generated(self, model: Any) -> dict[str, Any]:
        """Probe and instruction-following scores (the generating ranks)."""
        device, tokenizer, evaluation = self.ctx.device, self.tokenizer, self.spec.evaluation
        out: dict[str, Any] = {}
        if self.probes:
            texts = [render(tokenizer, p.question, "Question: {text}\nAnswer:") for p in self.probes]
            answers = generate(model, tokenizer, texts, device, evaluation.probe_max_new_tokens, self.synced)
            out["probes"] = score_answers(self.probes, answers, self.probes_available)
        if self.prompts:
            texts = [render(tokenizer, p.prompt, "{text}\n\n") for p in self.prompts]
            following = evaluation.instruction_following
            answers = generate(model, tokenizer, texts, device, following.max_new_tokens, self.synced)
            out["instruction_following"] = score_instruction_following(self.prompts, answers)
        return out

    def replay_decision(self) -> str | None:
        """`adapt`: "raise" when forgetting is detected now, "lower" when every signal recovered, else None."""
        if self.spec.evaluation.forgetting.action != ForgettingAction.adapt or not self.has_replay:
            return None
        if self.watch.signals:
            return "raise"
        if self.watch.recovered(self.baseline, self.latest):
            return "lower"
        return None

    def row(self) -> dict[str, Any]:
        """The latest evaluation as a metrics row."""
        assert self.latest is not None
        measures = self.watch.measures(self.baseline, self.latest)
        return {
            **self.latest.model_dump(by_alias=True, exclude_none=True),
            "generalLossIncrease": measures["generalLoss"],
            "instructionLossIncrease": measures["instructionLoss"],
            "instructionFollowingDrop": measures["instructionFollowing"],
        }

    def status(self) -> EvaluationStatus:
        measures = self.watch.measures(self.baseline, self.latest)
        return EvaluationStatus(
            baseline=self.baseline,
            latest=self.latest,
            general_loss_increase=measures["generalLoss"],
            instruction_loss_increase=measures["instructionLoss"],
            instruction_following_drop=measures["instructionFollowing"],
            forgetting_detected=self.watch.detected,
            forgetting_signals=list(self.watch.signals),
        )

    def summary(self) -> dict[str, float]:
        """Before/after figures for the report and the model card."""
        base, last = self.baseline, self.latest

        def pick(result: EvalResult | None, key: str) -> float | None:
            if result is None:
                return None
            value = {
                "domain": result.domain_loss,
                "general": result.general_loss,
                "instruction": result.instruction_loss,
                "probeF1": result.probes.f1 if result.probes else None,
                "probeExactMatch": result.probes.exact_match if result.probes else None,
                "instructionFollowing": result.instruction_following.prompt_accuracy
                if result.instruction_following
                else None,
            }[key]
            return None if value is None else round(value, 4)

        out: dict[str, float | None] = {}
        for key, label in (
            ("domain", "domainLoss"),
            ("general", "generalLoss"),
            ("instruction", "instructionLoss"),
            ("probeF1", "probeF1"),
            ("probeExactMatch", "probeExactMatch"),
            ("instructionFollowing", "instructionFollowing"),
        ):
            out[f"{label}Before"] = pick(base, key)
            out[f"{label}After"] = pick(last, key)
        increase = self.watch.measures(base, last)["generalLoss"]
        out["generalLossIncrease"] = None if increase is None else round(increase, 4)
        return {k: v for k, v in out.items() if v is not None}

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.model_dump(by_alias=True) if self.baseline else None,
            "latest": self.latest.model_dump(by_alias=True) if self.latest else None,
            "forgettingDetected": self.watch.detected,
            "signals": list(self.watch.signals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = EvalResult.model_validate(state["baseline"]) if state.get("baseline") else None
        self.latest = EvalResult.model_validate(state["latest"]) if state.get("latest") else None
        self.watch.detected = bool(state.get("forgettingDetected", False))
        self.watch.signals = list(state.get("signals", []))
