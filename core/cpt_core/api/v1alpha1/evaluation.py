"""`spec.evaluation`: domain gain against general forgetting -- holdout losses, probes, instruction
following -- and what the forgetting watch does."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator

from cpt_core.api.v1alpha1.base import (
    DATA_SCHEMES,
    URI,
    _Model,
    check_uri,
)


class ForgettingAction(str, Enum):
    warn = "warn"
    stop = "stop"
    adapt = "adapt"


class Forgetting(_Model):
    """The forgetting watch: the price of domain gain, measured at every evaluation against step 0.
    Forgetting is detected when any signal passes its limit."""

    max_general_loss_increase: float = Field(default=0.10, gt=0.0, le=10.0)
    """Relative increase of the general (replay) holdout loss over its step-0 baseline that counts as
    forgetting, e.g. 0.10 = 10 %."""
    max_instruction_loss_increase: float | None = Field(default=None, gt=0.0, le=10.0)
    """Relative increase of the chat (instruction) holdout loss that counts as forgetting. Unset: not watched."""
    max_instruction_following_drop: float | None = Field(default=None, gt=0.0, le=1.0)
    """Drop of instruction-following prompt accuracy (absolute, e.g. 0.1 = 10 points) below its step-0
    value that counts as forgetting. Unset: not watched."""
    action: ForgettingAction = ForgettingAction.warn
    """`warn` (log, flag in status), `stop` (checkpoint, then end with reason ForgettingDetected) or
    `adapt` (raise the replay share by `adaptStep` at each evaluation that detects forgetting, up to
    `maxReplayShare`, and lower it back while the signals stay under half their limits; every change is
    recorded in status and in checkpoints, so a resume reproduces it)."""
    max_replay_share: float = Field(default=0.3, gt=0.0, lt=1.0)
    """`adapt`: the highest share of samples that replay sources may get."""
    adapt_step: float = Field(default=0.05, gt=0.0, le=0.5)
    """`adapt`: how much the replay share moves per evaluation."""


class InstructionFollowing(_Model):
    """Instruction-following retention: prompts with verifiable constraints (IFEval-style rules such as
    word counts, required or forbidden keywords, JSON, bullets, case, start/end phrases), answered by the
    model and scored by the rules at step 0 and at every evaluation."""

    enabled: bool | None = None
    """Score instruction following. Default: on for `model.kind: instruct`, off for base models."""
    prompts: URI | None = None
    """JSON-lines file of `{"prompt": ..., "rules": [{"type": ..., ...}]}`. Default: the set shipped with
    the trainer (docs/user-guide.md lists the rule types)."""
    max_prompts: int | None = Field(default=None, gt=0, le=100_000)
    """Score at most this many prompts per evaluation (a warning says when it cuts). Unset: all."""
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    """Longest answer generated per prompt."""

    @field_validator("prompts")
    @classmethod
    def _prompts_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, DATA_SCHEMES)


class EvaluationSpec(_Model):
    """Periodic evaluation on the holdouts: domain gain against general forgetting."""

    interval_steps: int = Field(default=50, gt=0)
    """Evaluate every this many steps (and at step 0 for the baseline, and at the end)."""
    max_batches: int = Field(default=50, gt=0)
    """Upper bound on evaluation micro-batches per holdout, to bound evaluation time."""
    forgetting: Forgetting = Field(default_factory=Forgetting)
    """Forgetting threshold and action."""
    probes: URI | None = None
    """Optional JSON-lines file of `{"question": ..., "answer": ...}` pairs, answered greedily at step 0
    and at every evaluation and scored by exact match (normalised equality) and token F1."""
    max_probes: int | None = Field(default=None, gt=0, le=100_000)
    """Score at most this many probes per evaluation (a warning says when it cuts). Unset: all."""
    probe_max_new_tokens: int = Field(default=32, gt=0, le=1024)
    """Longest answer generated per probe."""
    probe_target_f1: float | None = Field(default=None, ge=0.0, le=1.0)
    """Optional target: the ProbesPassed condition says whether the latest probe F1 reaches it."""
    instruction_following: InstructionFollowing = Field(default_factory=InstructionFollowing)
    """Instruction-following retention."""

    @field_validator("probes")
    @classmethod
    def _probes_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, DATA_SCHEMES)
