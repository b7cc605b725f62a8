"""The progress file: the one contract between the trainer (writer) and its readers.

The trainer replaces `<checkpoint.uri>/_status/progress.json` atomically every few seconds, at
every evaluation and checkpoint, and when the run ends. The operator mirrors its sections into
the CPTJob status *as they are*: `status.progress`, `status.evaluation`, `status.checkpoint`,
`status.data` and `status.output` are these very types, so there is one model per concept and
nothing is copied field by field. `cpt run` draws its progress bar from the same file. The
schema is documented in docs/progress.md (generated from these models).

Identity: a file carries the job name, the uid of the CPTJob incarnation and the attempt that
wrote it. `read_progress` returns it only to the incarnation (and attempt) that asks for it,
so a reader never takes a predecessor's or another job's file for its own.

Models here ignore unknown fields: a newer trainer's file stays readable by an older reader.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from ..storage import NotFound, Storage, parse_uri

PROGRESS_PATH = "_status/progress.json"
FENCE_PATH = "_status/fence.json"
RUN_PATH = "_status/run.json"
SCHEMA_VERSION = 2

log = logging.getLogger(__name__)

State = Literal["preparing", "running", "succeeded", "failed", "stopped", "interrupted"]


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


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


#: The sections of the file that are, as they are, sections of the CPTJob status.
STATUS_SECTIONS = ("progress", "evaluation", "checkpoint", "data", "output", "stage", "stages")


class Progress(_Wire):
    """Schema of `<checkpoint.uri>/_status/progress.json`."""

    schema_version: int = SCHEMA_VERSION
    """Version of this schema."""
    job: str
    """metadata.name of the CPTJob."""
    uid: str | None = None
    """metadata.uid of the CPTJob incarnation that wrote it (unset for `cpt run`)."""
    attempt: int = Field(ge=0)
    """Attempt that wrote this file."""
    state: State
    """preparing (tokenizing data), running, succeeded, failed, stopped (ended early on purpose) or
    interrupted (SIGINT/SIGTERM: ended cleanly; running the job again resumes)."""
    reason: str | None = None
    """A `Reason` for failed/stopped, e.g. ForgettingDetected, NonFiniteLoss, DataError (docs/operations.md)."""
    message: str | None = None
    """Human-readable detail (an error names the field or file to fix)."""
    started_at: str | None = None
    """When this attempt started (RFC 3339)."""
    progress: TrainingProgress = Field(default_factory=TrainingProgress)
    """Steps, tokens, loss, learning rate, throughput."""
    evaluation: EvaluationStatus | None = None
    """Holdout losses and probe scores."""
    checkpoint: CheckpointRef | None = None
    """Newest committed checkpoint."""
    data: DataStatus | None = None
    """Per-source token accounting."""
    output: OutputStatus | None = None
    """The exported model and report (when succeeded)."""
    stage: str | None = None
    """The stage being trained (the last one once training ended)."""
    stages: list[StageStatus] | None = None
    """Every stage, in order."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    def belongs_to(self, job: str, uid: str | None, attempt: int | None = None) -> bool:
        """Whether this file was written by `job`'s incarnation `uid` (and by `attempt`, when given)."""
        if self.job != job:
            return False
        if uid is not None and self.uid != uid:
            return False
        return attempt is None or self.attempt == attempt


def progress_location(run_uri: str) -> Any:
    return parse_uri(run_uri).as_prefix().join(PROGRESS_PATH)


def write_progress(storage: Storage, run_uri: str, progress: Progress) -> None:
    """Replace the progress file atomically (the only way it is written)."""
    storage.write_text(progress_location(run_uri), progress.to_json())


class UnreadableProgress(ValueError):
    """The progress file exists but is not a progress file of this schema (damaged or foreign)."""


def _one_line(exc: ValueError) -> str:
    """A pydantic error as `progress.step: step 31 is beyond totalSteps 30; ...` (one line, no URLs)."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "file"
            got = f" (got {err['input']!r})" if isinstance(err.get("input"), (int, float, str)) else ""
            parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{got}"[:300])
        return "; ".join(parts)
    return " ".join(str(exc).split())


def load_progress(storage: Storage, run_uri: str) -> Progress | None:
    """The progress file below a run directory, whoever wrote it (None when there is none).

    Callers that act on it check `belongs_to` (or use `read_progress`). A file that cannot be
    parsed, or carries impossible values, raises `UnreadableProgress`; storage failures raise
    `StorageError`.
    """
    try:
        text = storage.read_text(progress_location(run_uri))
    except NotFound:
        return None
    try:
        return Progress.model_validate_json(text)
    except ValueError as exc:
        where = progress_location(run_uri)
        raise UnreadableProgress(f"{where}: not a valid progress file ({_one_line(exc)})") from None


def read_progress(
    storage: Storage, run_uri: str, *, job: str, uid: str | None, attempt: int | None = None
) -> Progress | None:
    """The progress file below a run directory when it belongs to this incarnation (and attempt).

    None when no file was written yet or when it was written by another job, another incarnation
    of this job (a deleted and re-applied CPTJob has a new uid) or another attempt. A file that
    cannot be parsed raises `UnreadableProgress`; storage failures raise `StorageError`.
    """
    progress = load_progress(storage, run_uri)
    if progress is None:
        return None
    if not progress.belongs_to(job, uid, attempt):
        log.debug(
            "ignoring %s: written by job %s uid %s attempt %s, not by job %s uid %s attempt %s",
            progress_location(run_uri),
            progress.job,
            progress.uid,
            progress.attempt,
            job,
            uid,
            attempt,
        )
        return None
    return progress
