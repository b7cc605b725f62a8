"""The status sections the trainer reports and the operator mirrors as they are.

`status.progress`, `.evaluation`, `.checkpoint`, `.data`, `.output`, `.stage` and `.stages` of a CPTJob
are these very types, and so are the same sections of the progress file (`cpt_core.api.progress`): one
model per concept, nothing copied field by field. Numbers that JSON cannot carry (NaN, infinities) never
enter them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from cpt_core.api.v1alpha1.base import _Wire


def _finite(value: float | None) -> float | None:
    """NaN and infinities are not JSON (a real API server rejects them): they become absent."""
    return value if value is None or math.isfinite(value) else None


class TrainingProgress(_Wire):
    """Training progress as last reported by the trainer (`status.progress`)."""

    step: int = Field(default=0, ge=0)
    """Optimizer steps done."""
    total_steps: int | None = Field(default=None, ge=0)
    """Steps the job trains for."""
    tokens: int = Field(default=0, ge=0)
    """Training tokens consumed (all ranks)."""
    tokens_per_second: float | None = Field(default=None, ge=0)
    """Recent training throughput (all ranks)."""
    loss: float | None = None
    """Recent training loss."""
    lr: float | None = Field(default=None, ge=0)
    """Current learning rate."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds to the end of training."""
    updated_at: str | None = None
    """When the trainer wrote this progress (RFC 3339)."""

    @field_validator("tokens_per_second", "loss", "lr", mode="after")
    @classmethod
    def finite(cls, value: float | None) -> float | None:
        return _finite(value)

    @model_validator(mode="after")
    def _step_within_total(self) -> TrainingProgress:
        if self.total_steps is not None and self.step > self.total_steps:
            raise ValueError(f"step {self.step} is beyond totalSteps {self.total_steps}")
        return self


class ProbeScores(_Wire):
    """Question-answer probe scores."""

    exact_match: float = Field(ge=0, le=1)
    """Share of probes whose normalised answer equals the normalised reference."""
    f1: float = Field(ge=0, le=1)
    """Mean token F1 against the reference."""
    count: int = Field(default=0, ge=0)
    """Probes scored."""
    available: int | None = Field(default=None, ge=0)
    """Probes in the file (more than `count` when evaluation.maxProbes cut)."""


class InstructionFollowingScores(_Wire):
    """Instruction-following retention: answers to prompts with verifiable constraints, scored by rules."""

    prompt_accuracy: float = Field(ge=0, le=1)
    """Share of prompts whose answer satisfies every rule."""
    instruction_accuracy: float = Field(ge=0, le=1)
    """Share of all rules satisfied."""
    count: int = Field(default=0, ge=0)
    """Prompts scored."""
    per_rule: dict[str, float] = Field(default_factory=dict)
    """Share satisfied per rule type."""


class EvalResult(_Wire):
    """One evaluation on the holdouts."""

    step: int = Field(ge=0)
    """Step at which it ran (0 = the starting model)."""
    domain_loss: float | None = None
    """Mean token loss on the holdouts of `domain` sources."""
    general_loss: float | None = None
    """Mean token loss on the holdouts of `replay` sources."""
    instruction_loss: float | None = None
    """Mean token loss (assistant turns) on the holdouts of `instruction` sources."""
    per_source: dict[str, float] = Field(default_factory=dict)
    """Holdout loss per source."""
    probes: ProbeScores | None = None
    """Knowledge probes at this step."""
    instruction_following: InstructionFollowingScores | None = None
    """Instruction-following retention at this step."""

    @field_validator("domain_loss", "general_loss", "instruction_loss", mode="after")
    @classmethod
    def finite(cls, value: float | None) -> float | None:
        return _finite(value)

    @field_validator("per_source", mode="after")
    @classmethod
    def finite_sources(cls, value: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in value.items() if math.isfinite(v)}


class EvaluationStatus(_Wire):
    """Domain gain against general forgetting (`status.evaluation`)."""

    baseline: EvalResult | None = None
    """Evaluation of the starting model (step 0)."""
    latest: EvalResult | None = None
    """Latest evaluation."""
    general_loss_increase: float | None = None
    """latest.generalLoss / baseline.generalLoss - 1 (the main forgetting measure)."""
    instruction_loss_increase: float | None = None
    """latest.instructionLoss / baseline.instructionLoss - 1."""
    instruction_following_drop: float | None = None
    """baseline - latest instruction-following prompt accuracy (positive: retention lost)."""
    forgetting_detected: bool = False
    """Whether a forgetting signal passed its limit (evaluation.forgetting) at any evaluation so far."""
    forgetting_signals: list[str] = Field(default_factory=list)
    """The signals over their limit at the latest evaluation: generalLoss, instructionLoss, instructionFollowing."""

    @field_validator("general_loss_increase", "instruction_loss_increase", "instruction_following_drop", mode="after")
    @classmethod
    def finite(cls, value: float | None) -> float | None:
        return _finite(value)


class SkippedCheckpoint(_Wire):
    """A committed checkpoint that failed verification or loading and was not resumed from."""

    step: int = Field(ge=0)
    """Step it held."""
    uri: str
    """Where it was."""
    reason: str
    """What is wrong with it (names the file)."""
    kept_at: str | None = None
    """Where it was moved for inspection (below `<checkpoint.uri>/_damaged/`; never deleted)."""


class CheckpointRef(_Wire):
    """A committed checkpoint (`status.checkpoint`: the newest one), and how this attempt resumed."""

    step: int = Field(ge=0)
    """Step it holds."""
    uri: str
    """Its directory."""
    time: str | None = None
    """When it was committed (RFC 3339)."""
    attempt: int | None = Field(default=None, ge=0)
    """The attempt that wrote it."""
    resumed_from: int | None = Field(default=None, ge=0)
    """Step of the checkpoint this attempt resumed from (unset: this attempt started fresh)."""
    skipped: list[SkippedCheckpoint] = Field(default_factory=list)
    """Newer committed checkpoints this attempt could not use (damaged), newest first."""


class SourceProgress(_Wire):
    """Token accounting of one data source."""

    name: str
    """Source name."""
    tokens_available: int | None = Field(default=None, ge=0)
    """Training tokens after tokenization and holdout."""
    tokens_consumed: int = Field(default=0, ge=0)
    """Tokens trained on so far."""
    epochs: float | None = Field(default=None, ge=0)
    """tokensConsumed / tokensAvailable."""


class MixtureChange(_Wire):
    """A change of the mixture inside a stage, made by the forgetting watch (`action: adapt`)."""

    step: int = Field(ge=0)
    """The change applies from this optimizer step on."""
    stage: str
    """The stage it happened in."""
    replay_share: float = Field(ge=0, le=1)
    """The share of samples replay sources get from this step on."""
    reason: str
    """Why: forgetting detected (raised) or recovered (lowered)."""


class DataStatus(_Wire):
    """Per-source accounting (`status.data`)."""

    sources: list[SourceProgress] = Field(default_factory=list)
    """One entry per source."""
    resumed_with_changes: bool = False
    """True when a resume was allowed despite changed data, weights or seed (allowChangesOnResume)."""
    replay_share: float | None = Field(default=None, ge=0, le=1)
    """The current share of samples from replay sources."""
    mixture_changes: list[MixtureChange] = Field(default_factory=list)
    """Every adaptive change of the replay share, in order."""


class StageStatus(_Wire):
    """One stage of the job (`status.stages[]`)."""

    name: str
    """Stage name (spec.stages[].name, or `main` for a job without stages)."""
    phase: Literal["Pending", "Running", "Succeeded", "Stopped"] = "Pending"
    """Pending, Running, Succeeded (trained to its end) or Stopped (the forgetting watch ended the job in it)."""
    step: int = Field(default=0, ge=0)
    """Optimizer steps done in this stage."""
    total_steps: int = Field(default=0, ge=0)
    """Optimizer steps of this stage."""
    started_at: str | None = None
    """When its first step started (RFC 3339)."""
    finished_at: str | None = None
    """When its last step finished (RFC 3339)."""
    evaluation: EvalResult | None = None
    """The evaluation at its end."""


class OutputStatus(_Wire):
    """What the job produced (`status.output`)."""

    model_uri: str | None = None
    """The exported Hugging Face model."""
    report_uri: str | None = None
    """Metrics, loss curves and the evaluation summary."""


class StatusSections(_Wire):
    """The sections the trainer reports (in the progress file) and the operator mirrors into the CPTJob's
    status as they are. Both `CPTJobStatus` and the progress file are made of this class, so the list of
    sections is written once (`STATUS_SECTIONS`)."""

    progress: TrainingProgress | None = None
    """Steps, tokens, loss, learning rate, throughput."""
    evaluation: EvaluationStatus | None = None
    """Holdout losses, probe and instruction-following scores: the latest evaluation against the baseline."""
    checkpoint: CheckpointRef | None = None
    """The newest committed checkpoint, and how this attempt resumed."""
    data: DataStatus | None = None
    """Per-source token accounting and the mixture's changes."""
    output: OutputStatus | None = None
    """The exported model and report (once the job succeeded)."""
    stage: str | None = None
    """The stage being trained (the last one once training ended)."""
    stages: list[StageStatus] | None = None
    """Every stage, in order: phase, steps, and the evaluation at its end."""


#: The sections of the progress file that are, as they are, sections of the CPTJob status.
STATUS_SECTIONS = tuple(StatusSections.model_fields)
