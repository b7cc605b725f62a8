"""The progress file: the one contract between the trainer (writer) and its readers -- its schema.

The trainer replaces `<checkpoint.uri>/_status/progress.json` atomically every few seconds, at
every evaluation and checkpoint, and when the run ends. The operator mirrors its sections into
the CPTJob status *as they are*: the file is the run's identity plus `StatusSections`, the very
class `CPTJobStatus` is made of, so there is one model per concept and nothing is copied field by
field. `cpt run` draws its progress bar from the same file. The schema is documented in
docs/progress.md (generated from these models); reading and writing it is `cpt_core.storage.progress`.

Identity: a file carries the job name, the uid of the CPTJob incarnation and the attempt that
wrote it. `read_progress` returns it only to the incarnation (and attempt) that asks for it,
so a reader never takes a predecessor's or another job's file for its own.

Models here ignore unknown fields: a newer trainer's file stays readable by an older reader.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt_core.api.v1alpha1.base import _Wire
from cpt_core.api.v1alpha1.status import StatusSections, TrainingProgress

SCHEMA_VERSION = 2

State = Literal["preparing", "running", "succeeded", "failed", "stopped", "interrupted"]


class ProgressIdentity(_Wire):
    """Who wrote the file, and how the attempt stands."""

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


class Progress(StatusSections, ProgressIdentity):
    """Schema of `<checkpoint.uri>/_status/progress.json`: the identity, then the status sections."""

    progress: TrainingProgress = Field(default_factory=TrainingProgress)
    """Steps, tokens, loss, learning rate, throughput."""

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)

    def belongs_to(self, job: str, uid: str | None, attempt: int | None = None) -> bool:
        """Whether this file was written by `job`'s incarnation `uid` (and by `attempt`, when given)."""
        if self.job != job:
            return False
        if uid is not None and self.uid != uid:
            return False
        return attempt is None or self.attempt == attempt
