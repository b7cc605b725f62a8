"""`spec.training`, `spec.deepspeed` and `spec.stages`: how long and how to train, the engine, and the
stages of a multi-stage recipe."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from cpt_core.api.v1alpha1.base import (
    DNSLabel,
    FieldError,
    _Model,
)

#: Learning-rate defaults by model kind: an instruct model already sits in a good basin and forgets fast,
#: a base model needs more (cpt_core.validation.recommendations has the recommended ranges).
LR_DEFAULTS: dict[str, float] = {"instruct": 5.0e-5, "base": 2.0e-4}


class ScheduleType(str, Enum):
    cosine = "cosine"
    wsd = "wsd"
    constant = "constant"


class Schedule(_Model):
    """Learning-rate schedule: linear warmup, then cosine decay, warmup-stable-decay or constant."""

    type: ScheduleType = ScheduleType.cosine
    """`cosine`, `wsd` (warmup-stable-decay: constant, then linear decay over the last
    `decayFraction` of steps; easy to extend) or `constant`."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup steps from 0 to `learningRate`."""
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Final learning rate as a fraction of `learningRate` (cosine, wsd)."""
    decay_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """Fraction of the steps spent decaying (wsd only)."""


class Optimizer(_Model):
    """AdamW hyper-parameters."""

    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    """AdamW beta1."""
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    """AdamW beta2."""
    eps: float = Field(default=1.0e-8, gt=0.0, le=1.0e-2)
    """AdamW epsilon."""


class LoRA(_Model):
    """Optional low-rank adaptation instead of full fine-tuning (via peft)."""

    r: int = Field(default=64, ge=1, le=4096)
    """Rank of the update matrices."""
    alpha: int = Field(default=128, ge=1)
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=64
    )
    """Module names to adapt."""


class TrainingSpec(_Model):
    """How long and how to train. Give exactly one of `steps` and `tokens`."""

    steps: int | None = Field(default=None, gt=0)
    """Optimizer steps to train (unset when `spec.stages` gives the length of each stage)."""
    tokens: int | None = Field(default=None, gt=0)
    """Tokens to train on; converted to steps as ceil(tokens / globalBatchTokens)."""
    global_batch_tokens: int = Field(default=1_048_576, gt=0)
    """Tokens per optimizer step across all workers. Must be a multiple of
    sequenceLength x microBatchSize; gradient accumulation is derived from it."""
    micro_batch_size: int = Field(default=1, gt=0, le=4096)
    """Sequences per forward pass per worker."""
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Peak learning rate. Default: 5e-5 for instruct models, 2e-4 for base models."""
    schedule: Schedule = Field(default_factory=Schedule)
    """Learning-rate schedule."""
    weight_decay: float = Field(default=0.1, ge=0.0, le=10.0)
    """AdamW weight decay."""
    grad_clip: float = Field(default=1.0, ge=0.0)
    """Gradient norm clipping threshold (0 disables clipping)."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """AdamW hyper-parameters."""
    seed: int = Field(default=1234, ge=0, le=2**31 - 1)
    """Seed of the mixture sampler, holdout selection and initialisation."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about 30 % more compute."""
    lora: LoRA | None = None
    """Optional LoRA adapters; when unset, all weights train."""
    regularization: Regularization | None = None
    """Optional penalty that holds the weights near where they started (against forgetting)."""


class RegularizationType(str, Enum):
    l2_init = "l2-init"
    ewc = "ewc"


class Regularization(_Model):
    """A penalty on moving away from the starting weights: `l2-init` (strength/2 x ||w - w0||^2, w0 = the
    weights at the start of the job) or `ewc` (Elastic Weight Consolidation: strength/2 x sum F (w - w*)^2,
    w* = the weights at the start of each stage, F = a diagonal Fisher estimate from replay data taken
    there). Both need the full weights on every process: ZeRO stage 3 is not supported. With LoRA the
    penalty applies to the adapter weights. It keeps one (l2-init) or two (ewc) extra copies of the
    trainable weights in float32 memory."""

    type: RegularizationType
    """`l2-init` or `ewc`."""
    strength: float = Field(gt=0.0, le=1.0e9)
    """Penalty weight (lambda)."""
    fisher_batches: int = Field(default=8, ge=1, le=10_000)
    """`ewc`: replay micro-batches used to estimate the Fisher information at a stage start."""


def steps_for(steps: int | None, tokens: int | None, global_batch_tokens: int) -> int:
    if steps is not None:
        return steps
    assert tokens is not None
    return -(-tokens // global_batch_tokens)


class DeepSpeedSpec(_Model):
    """DeepSpeed engine settings. The trainer generates the config; `config` is merged last."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 2 shards optimizer state and gradients; 3 also shards the weights (large models)."""
    offload_optimizer: Literal["none", "cpu"] = "none"
    """Keep optimizer state in CPU memory (DeepSpeedCPUAdam): slower, fits larger models."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Raw DeepSpeed config keys merged over the generated config, for what the spec does not cover."""


class StageSpec(_Model):
    """One stage of a multi-stage recipe, trained in order on the same engine: e.g. Pre-Instruction-
    Tuning (QA tuning, then documents + QA + replay, then instruction tuning) or progressive mixing
    (a replay share stepping down over stages). Each stage has its own length, mixture and learning-rate
    schedule (warmup and decay over the stage); training.* values it does not set apply."""

    name: DNSLabel
    """Unique name of the stage (status, events, report)."""
    steps: int | None = Field(default=None, gt=0)
    """Optimizer steps of the stage. Give exactly one of steps and tokens."""
    tokens: int | None = Field(default=None, gt=0)
    """Tokens of the stage; converted to steps as ceil(tokens / training.globalBatchTokens)."""
    weights: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(min_length=1, max_length=64)
    """Sampling weights by source name; sources not named get 0 in this stage (they are still evaluated)."""
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Peak learning rate of the stage. Default: training.learningRate (or the model kind's default)."""
    schedule: Schedule | None = None
    """Learning-rate schedule over the stage. Default: training.schedule."""
    weight_decay: float | None = Field(default=None, ge=0.0, le=10.0)
    """AdamW weight decay in this stage. Default: training.weightDecay."""
    reset_optimizer: bool = True
    """Start the stage with fresh optimizer moments (AdamW state), as a separate run would."""

    @model_validator(mode="after")
    def _stage(self) -> StageSpec:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps and tokens")
        if not any(weight > 0 for weight in self.weights.values()):
            raise FieldError(("weights",), "at least one weight must be > 0")
        return self
