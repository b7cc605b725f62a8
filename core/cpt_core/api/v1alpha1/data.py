"""`spec.data`: the training mixture -- its sources, how they are tokenized and held out, and the cache."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from cpt_core.api.v1alpha1.base import (
    DATA_SCHEMES,
    URI,
    DNSLabel,
    FieldError,
    _Model,
    check_uri,
)
from cpt_core.api.v1alpha1.synthesis import Synthesize


class SourceRole(str, Enum):
    domain = "domain"
    replay = "replay"
    instruction = "instruction"


class SourceFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    text = "text"
    chat = "chat"


class DataSource(_Model):
    """One dataset of the training mixture."""

    name: DNSLabel
    """Unique name of the source; used in status, metrics and the cache."""
    role: SourceRole
    """`domain` (the new knowledge), `replay` (general data that guards against forgetting; also the
    general-loss evaluation set) or `instruction` (chat data that keeps instruction following)."""
    uris: list[URI] = Field(default_factory=list, max_length=64)
    """Objects or prefixes (`s3://bucket/prefix/`, `file:///dir/`, plain paths) to read. A prefix
    means every object below it. Required unless `synthesize` is set (a synthesised source reads the
    files its synthesis wrote)."""
    format: SourceFormat = SourceFormat.jsonl
    """`jsonl` (one JSON object per line, `.gz`/`.zst` allowed), `parquet`, `text` (one document per
    file) or `chat` (JSON lines with a `messages` list, rendered with the chat template)."""
    text_field: Annotated[str, StringConstraints(min_length=1, max_length=256)] = "text"
    """Field holding the document text (`jsonl`, `parquet`)."""
    messages_field: Annotated[str, StringConstraints(min_length=1, max_length=256)] = "messages"
    """Field holding the message list (`chat`)."""
    weight: int | None = Field(default=None, ge=0, le=1_000_000)
    """Relative sampling weight (an integer). Shares are weight / sum of weights; 0 disables the
    source for training but keeps it for evaluation. Required unless `spec.stages` gives the weights
    (a stage's weights then replace these)."""
    skip_malformed: bool = False
    """Skip malformed records (invalid JSON, missing field) instead of failing. Skips are counted
    and the first examples recorded in the data manifest."""

    synthesize: Synthesize | None = None
    """Generate this source (question-answer pairs in chat format) from another source's documents
    instead of reading `uris`; see Synthesize."""

    @field_validator("uris")
    @classmethod
    def _uris_scheme(cls, value: list[str]) -> list[str]:
        for i, uri in enumerate(value):
            try:
                check_uri(uri, DATA_SCHEMES)
            except ValueError as exc:
                raise FieldError((i,), str(exc)) from None  # the message names the item
        return value

    @model_validator(mode="after")
    def _synthesized(self) -> DataSource:
        if self.synthesize is None:
            if not self.uris:
                raise FieldError(("uris",), "required: give at least 1 item (or set synthesize to generate the source)")
            return self
        if self.uris:
            raise FieldError(
                ("uris",), "leave unset on a synthesised source: its files are written to synthesize.output"
            )
        if "format" not in self.model_fields_set:
            self.format = SourceFormat.chat  # synthesised data is chat data; saying so is optional
        elif self.format != SourceFormat.chat:
            raise FieldError(
                ("format",), f"a synthesised source is chat data: set format: chat (got {self.format.value})"
            )
        return self


class Validation(_Model):
    """Held-out documents for evaluation, taken before any training sample is packed."""

    holdout_documents: int = Field(default=200, ge=0, le=1_000_000)
    """Documents held out per source for evaluation; they never appear in training data."""


class DataSpec(_Model):
    """The training mixture and how it is tokenized."""

    sequence_length: int = Field(default=2048, ge=16, le=1_048_576)
    """Tokens per packed training row."""
    sources: list[DataSource] = Field(min_length=1, max_length=64)
    """Datasets of the mixture. At least one needs weight > 0."""
    validation: Validation = Field(default_factory=Validation)
    """Held-out evaluation data."""
    cache_uri: URI | None = None
    """Content-addressed cache of tokenized shards, shareable across jobs. Default:
    `<checkpoint.uri>/_cache/`."""
    allow_changes_on_resume: bool = False
    """Allow resuming although weights, seed or data changed since the checkpoint was written. The
    sampler then restarts its mixture from the checkpoint's sample count; the status records it."""

    @field_validator("cache_uri")
    @classmethod
    def _cache_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, DATA_SCHEMES)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[DataSource]) -> list[DataSource]:
        seen: set[str] = set()
        for i, source in enumerate(value):
            if source.name in seen:
                raise FieldError((i, "name"), f"duplicate source name '{source.name}'; names must be unique")
            seen.add(source.name)
        by_name = {source.name: source for source in value}
        for i, source in enumerate(value):
            if source.synthesize is None:
                continue
            origin = by_name.get(source.synthesize.from_)
            documents = [s.name for s in value if s.synthesize is None and s.format != SourceFormat.chat]
            hint = f" (sources with documents: {', '.join(documents)})" if documents else ""
            if origin is None or origin is source:
                what = (
                    "itself" if origin is source else f"'{source.synthesize.from_}', not a source in spec.data.sources"
                )
                raise FieldError((i, "synthesize", "from"), f"names {what}; name a source with documents{hint}")
            if origin.synthesize is not None or origin.format == SourceFormat.chat:
                kind = "synthesised" if origin.synthesize is not None else "chat data"
                raise FieldError(
                    (i, "synthesize", "from"),
                    f"'{origin.name}' is {kind}, not documents; name a source with documents{hint}",
                )
        return value
