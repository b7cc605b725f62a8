"""The progress file: the contract between the trainer (writer) and the operator (reader).

Rank 0 of the trainer replaces `<checkpoint.uri>/_status/progress.json` atomically every few
steps, at every evaluation and checkpoint, and when the run ends. The operator's timer reads
it and mirrors it into the CPTJob status; `cpt run` renders its progress bar from it. The
schema is documented in docs/progress.md (generated from this model).

Fencing: every write carries the `attempt` that wrote it; readers ignore a file whose attempt
is older than the attempt they are tracking.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from ..storage import NotFound, Storage, parse_uri

PROGRESS_PATH = "_status/progress.json"
FENCE_PATH = "_status/fence.json"
RUN_PATH = "_status/run.json"
SCHEMA_VERSION = 1


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )


class ProbeScores(_Wire):
    """Question-answer probe scores."""

    exact_match: float
    """Share of probes whose normalised answer equals the reference."""
    f1: float
    """Mean token F1 against the reference."""
    count: int
    """Probes scored."""


class EvalResult(_Wire):
    """One evaluation on the holdouts."""

    step: int
    """Step at which it ran (0 = the starting model)."""
    domain_loss: float | None = None
    """Mean token loss on the holdouts of `domain` sources."""
    general_loss: float | None = None
    """Mean token loss on the holdouts of `replay` sources."""
    per_source: dict[str, float] = Field(default_factory=dict)
    """Holdout loss per source."""


class CheckpointRef(_Wire):
    """A committed checkpoint."""

    step: int
    """Step it holds."""
    uri: str
    """Its directory."""
    time: str
    """When it was committed (RFC 3339)."""
    attempt: int
    """The attempt that wrote it."""


class SourceProgress(_Wire):
    """Token accounting of one source."""

    name: str
    """Source name."""
    tokens_available: int
    """Training tokens after tokenization and holdout."""
    tokens_consumed: int
    """Tokens trained on so far."""
    epochs: float | None = None
    """tokensConsumed / tokensAvailable."""


class Progress(_Wire):
    """Schema of `<checkpoint.uri>/_status/progress.json`."""

    schema_version: int = SCHEMA_VERSION
    """Version of this schema."""
    job: str
    """metadata.name of the CPTJob."""
    attempt: int
    """Attempt that wrote this file (fencing: readers ignore older attempts)."""
    state: Literal["preparing", "running", "succeeded", "failed", "stopped"]
    """preparing (tokenizing data), running, succeeded, failed or stopped (ended early on purpose)."""
    reason: str | None = None
    """CamelCase reason for failed/stopped, e.g. ForgettingDetected, NonFiniteLoss, DataError."""
    message: str | None = None
    """Human-readable detail (an error names the field or file to fix)."""
    step: int = 0
    """Optimizer steps done."""
    total_steps: int = 0
    """Steps the job trains for."""
    tokens: int = 0
    """Training tokens consumed (all ranks)."""
    tokens_per_second: float | None = None
    """Recent throughput (all ranks)."""
    loss: float | None = None
    """Recent training loss."""
    lr: float | None = None
    """Current learning rate."""
    eta_seconds: int | None = None
    """Estimated seconds to the end of training."""
    baseline: EvalResult | None = None
    """Evaluation of the starting model (step 0)."""
    evaluation: EvalResult | None = None
    """Latest evaluation."""
    general_loss_increase: float | None = None
    """evaluation.generalLoss / baseline.generalLoss - 1."""
    forgetting_detected: bool = False
    """Whether generalLossIncrease passed the configured threshold."""
    probes_before: ProbeScores | None = None
    """Probe scores of the starting model."""
    probes_after: ProbeScores | None = None
    """Probe scores at the end of training."""
    checkpoint: CheckpointRef | None = None
    """Newest committed checkpoint."""
    data: list[SourceProgress] = Field(default_factory=list)
    """Per-source token accounting."""
    resumed_with_changes: bool = False
    """A resume was allowed despite changed data, weights or seed (data.allowChangesOnResume)."""
    model_uri: str | None = None
    """The exported Hugging Face model (when succeeded)."""
    report_uri: str | None = None
    """Metrics, loss curves and evaluation summary."""
    started_at: str | None = None
    """When this attempt started (RFC 3339)."""
    updated_at: str
    """When this file was written (RFC 3339)."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def read_progress(storage: Storage, run_uri: str) -> Progress | None:
    """The progress file below a run directory, or None when none was written yet."""
    try:
        return Progress.model_validate_json(storage.read_text(parse_uri(run_uri).as_prefix().join(PROGRESS_PATH)))
    except NotFound:
        return None
