"""Packed token shards: the on-disk (or on-S3) format, the packer that fills them, the reader.

A shard is a flat binary file of fixed-size *records*, one per packed row:

    record = tokens[seq_len] (uint16 or uint32, little endian) + flags[seq_len] (uint8)

`flags` bit 0 marks the first token of a document (the loader restarts `position_ids`
there), bit 1 marks tokens that carry a label (all text tokens; only assistant turns of chat
data). Row `r` of a source lives in shard `r // rows_per_shard` at record `r % rows_per_shard`,
so any row is one seek (locally) or one ranged GET (on S3) away -- no index to load, and a
data-parallel rank reads only its own rows.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Location, Storage

from cpt_trainer.data.documents import DataError
from cpt_trainer.data.tokenize import DOC_START, TRAIN

SHARD_BYTES = 64 * 1024 * 1024


class CacheDamaged(DataError):
    """A cache entry changed after it was verified (a shard cut short or removed while training)."""

    reason = Reason.CacheDamaged


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


@dataclass(frozen=True)
class ShardLayout:
    """Geometry of a shard set: everything needed to address row r."""

    seq_len: int
    dtype: str  # "<u2" or "<u4"
    rows_per_shard: int

    @property
    def record_bytes(self) -> int:
        return self.seq_len * (np.dtype(self.dtype).itemsize + 1)

    @classmethod
    def for_vocab(cls, seq_len: int, vocab_size: int, shard_bytes: int = SHARD_BYTES) -> ShardLayout:
        dtype = token_dtype(vocab_size)
        record = seq_len * (dtype.itemsize + 1)
        return cls(seq_len, dtype.str, max(1, shard_bytes // record))


def shard_name(kind: str, index: int) -> str:
    return f"{kind}-{index:05d}.bin"


class ShardWriter:
    """Appends packed rows to numbered shard files in a local directory."""

    def __init__(self, directory: Path, kind: str, layout: ShardLayout) -> None:
        self.directory, self.kind, self.layout = directory, kind, layout
        self.rows = 0
        self._handle: Any = None
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, tokens: np.ndarray, flags: np.ndarray) -> None:
        """Write rows: `tokens` and `flags` are [n, seq_len]."""
        dtype = np.dtype(self.layout.dtype)
        records = np.concatenate([tokens.astype(dtype).view(np.uint8), flags.astype(np.uint8)], axis=1)
        start = 0
        while start < len(records):
            shard, offset = divmod(self.rows, self.layout.rows_per_shard)
            if offset == 0:
                self.close()
                self._handle = (self.directory / shard_name(self.kind, shard)).open("wb")
            take = min(len(records) - start, self.layout.rows_per_shard - offset)
            self._handle.write(np.ascontiguousarray(records[start : start + take]).tobytes())
            start += take
            self.rows += take

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    @property
    def shards(self) -> int:
        return -(-self.rows // self.layout.rows_per_shard)


class RowPacker:
    """Packs EOS-terminated documents into rows of exactly `seq_len` tokens.

    Documents are concatenated; a document longer than the remaining room continues in the
    next row (that row's first tokens are not flagged as a document start, and the loader
    starts positions at 0 there). The tail that does not fill a row is dropped for training
    data and padded (with untrained tokens) for holdouts, so a small holdout still yields a row.
    """

    def __init__(self, writer: ShardWriter, pad_token: int, pad_tail: bool) -> None:
        self.writer = writer
        self.seq_len = writer.layout.seq_len
        self.pad_token = pad_token
        self.pad_tail = pad_tail
        self._tokens: list[np.ndarray] = []
        self._flags: list[np.ndarray] = []
        self._buffered = 0
        self.documents = 0
        self.tokens_in = 0
        self.dropped_tokens = 0
        self.padded_tokens = 0

    def add(self, tokens: np.ndarray, train_mask: np.ndarray, offsets: np.ndarray, select: np.ndarray) -> None:
        """Add the selected documents (`select`: bool per document) of a tokenized file."""
        if not select.any():
            return
        starts, ends = offsets[:-1][select], offsets[1:][select]
        lengths = ends - starts
        # Gather runs of adjacent selected documents as slices: a few copies (the holdout takes a few
        # documents out of each file), and no per-token index array, which for one huge document
        # cost twice the memory of its tokens.
        chosen = np.flatnonzero(select)
        breaks = np.flatnonzero(np.diff(chosen) != 1) + 1
        runs = [
            slice(int(offsets[first]), int(offsets[last + 1]))
            for first, last in zip(chosen[np.r_[0, breaks]], chosen[np.r_[breaks - 1, len(chosen) - 1]], strict=True)
        ]
        doc_tokens = np.concatenate([tokens[run] for run in runs])
        flags = np.concatenate([train_mask[run] for run in runs]).astype(np.uint8) * np.uint8(TRAIN)
        doc_first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        flags[doc_first] |= DOC_START
        # The first token of a document has no in-document context: it carries no label.
        flags[doc_first] &= ~np.uint8(TRAIN)
        self.documents += int(select.sum())
        self.tokens_in += int(lengths.sum())
        self._tokens.append(doc_tokens)
        self._flags.append(flags)
        self._buffered += len(doc_tokens)
        if self._buffered >= self.seq_len * 64:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        if not self._tokens:
            return
        tokens = np.concatenate(self._tokens)
        flags = np.concatenate(self._flags)
        full = len(tokens) // self.seq_len * self.seq_len
        if full:
            self.writer.write(tokens[:full].reshape(-1, self.seq_len), flags[:full].reshape(-1, self.seq_len))
        rest_tokens, rest_flags = tokens[full:], flags[full:]
        if final and len(rest_tokens):
            if self.pad_tail:
                pad = self.seq_len - len(rest_tokens)
                self.writer.write(
                    np.concatenate([rest_tokens, np.full(pad, self.pad_token, dtype=rest_tokens.dtype)])[None],
                    np.concatenate([rest_flags, np.zeros(pad, dtype=np.uint8)])[None],
                )
                self.padded_tokens += pad
            else:
                self.dropped_tokens += len(rest_tokens)
            rest_tokens, rest_flags = rest_tokens[:0], rest_flags[:0]
        self._tokens, self._flags = ([rest_tokens], [rest_flags]) if len(rest_tokens) else ([], [])
        self._buffered = len(rest_tokens)

    def finish(self) -> None:
        self._emit(final=True)
        self.writer.close()


class ShardReader:
    """Random access to the rows of one source's shards, locally (memory-mapped) or on S3 (ranged GETs)."""

    def __init__(self, storage: Storage, base: Location, layout: ShardLayout, kind: str, rows: int) -> None:
        self.storage, self.base, self.layout, self.kind, self.rows = storage, base.as_prefix(), layout, kind, rows
        self._maps: dict[int, np.memmap[Any, Any]] = {}
        self._lock = threading.Lock()

    def _location(self, shard: int) -> Location:
        return self.base.join(shard_name(self.kind, shard))

    def _record(self, row: int) -> bytes | np.ndarray:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} out of range for {self.base} ({self.rows} {self.kind} rows)")
        shard, offset = divmod(row, self.layout.rows_per_shard)
        size = self.layout.record_bytes
        location = self._location(shard)
        if location.is_s3:
            try:
                response = self.storage.s3.get_object(
                    Bucket=location.bucket, Key=location.key, Range=f"bytes={offset * size}-{(offset + 1) * size - 1}"
                )
            except Exception as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("InvalidRange", "NoSuchKey", "404"):
                    raise CacheDamaged(
                        f"cache entry {self.base} is damaged: {location} has no record {offset} ({code}); "
                        "run again: the cache is verified and the entry rebuilt"
                    ) from None
                raise
            data: bytes = response["Body"].read()
            if len(data) != size:
                raise CacheDamaged(
                    f"cache entry {self.base} is damaged: {location} record {offset} is {len(data)} bytes, expected "
                    f"{size}; run again: the cache is verified and the entry rebuilt"
                )
            return data
        with self._lock:
            mapped = self._maps.get(shard)
            if mapped is None:
                path = location.path
                expected_rows = min(self.layout.rows_per_shard, self.rows - shard * self.layout.rows_per_shard)
                if not path.exists() or path.stat().st_size != expected_rows * size:
                    actual = path.stat().st_size if path.exists() else "missing"
                    raise CacheDamaged(
                        f"cache entry {self.base} is damaged: {path} is {actual} bytes, expected "
                        f"{expected_rows * size}; run again: the cache is verified and the entry rebuilt"
                    )
                mapped = np.memmap(path, dtype=np.uint8, mode="r", shape=(expected_rows, size))
                self._maps[shard] = mapped
        return mapped[offset]

    def read(
        self, rows: Sequence[int], pool: concurrent.futures.Executor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (int64) and flags (uint8) of the given rows, each [len(rows), seq_len]."""
        records = list(pool.map(self._record, rows)) if pool is not None else [self._record(r) for r in rows]
        raw = np.stack([np.frombuffer(r, dtype=np.uint8) if isinstance(r, bytes) else r for r in records])
        dtype = np.dtype(self.layout.dtype)
        split = self.layout.seq_len * dtype.itemsize
        tokens = np.ascontiguousarray(raw[:, :split]).view(dtype).astype(np.int64)
        flags = np.ascontiguousarray(raw[:, split:])
        return tokens, flags
