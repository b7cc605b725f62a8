"""The cache manifest: what one prepared source holds, written last into `<cacheUri>/<key>/`.

Its presence marks a complete cache entry; it is validated before the entry is used (a
manifest that does not parse as this model is a damaged entry and is rebuilt, never trusted),
and so is every shard it lists: names, sizes and checksums (see cache.py).
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class Split(_Model):
    """One split (train or holdout) of a prepared source."""

    rows: int = Field(ge=0)
    """Packed rows of sequenceLength tokens."""
    shards: int = Field(ge=0)
    """Shard files."""
    documents: int = Field(ge=0)
    """Documents packed into it."""
    tokens: int = Field(ge=0)
    """Tokens in it (train: rows x sequenceLength; holdout: document tokens before padding)."""
    dropped_tail_tokens: int = 0
    """Train: tokens of the last, incomplete row (dropped)."""
    padded_tokens: int = 0
    """Holdout: padding added to complete its last row."""


class SkipExample(_Model):
    file: str
    line: int
    reason: str


class Skipped(_Model):
    """Records that were not trained on, counted and exemplified."""

    count: int = 0
    malformed: int = 0
    empty: int = 0
    examples: list[SkipExample] = Field(default_factory=list)


class FileDigest(_Model):
    """One file of a cache entry as it was written."""

    size: int = Field(ge=0)
    """Bytes."""
    sha256: str
    """Hex SHA-256 of the content (computed before upload)."""
    etag: str | None = None
    """The object's ETag on S3 (the server's own checksum of what it stored); unset locally."""


class Manifest(_Model):
    """`<cacheUri>/<key>/manifest.json`."""

    version: int
    """Pipeline version (bumped when the shard format or packing rules change)."""
    key: str
    """The content address (sha256 of the inputs)."""
    source: str
    """Source name."""
    format: str
    """Source format."""
    sequence_length: int = Field(gt=0)
    dtype: str
    """Token dtype of the shards (uint16 or uint32)."""
    rows_per_shard: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    files: int = Field(ge=0)
    """Input files read."""
    ignored_files: list[str] = Field(default_factory=list)
    """Examples of listed objects that were not inputs (wrong suffix)."""
    ignored_file_count: int = 0
    documents: int = Field(ge=0)
    train: Split
    holdout: Split
    skipped: Skipped = Field(default_factory=Skipped)
    created_at: str
    checksums: dict[str, FileDigest] | None = None
    """Every shard file of the entry with its size and checksum, verified before the entry is used
    (unset in entries written before checksums were recorded: those are rebuilt)."""

    @property
    def content_fingerprint(self) -> str:
        """sha256 of the train shards' names and checksums (the cache key where none are recorded)."""
        if not self.checksums:
            return self.key
        train = sorted((name, digest.sha256) for name, digest in self.checksums.items() if name.startswith("train-"))
        return hashlib.sha256(json.dumps(train).encode()).hexdigest()[:32]
