"""Read documents from a data source: JSON Lines (optionally .gz/.zst), Parquet, plain text, chat.

Every error names the source, the file and (for a line or row) its number. Malformed
records are an error unless the source sets `skipMalformed`, in which case each one becomes
a `Skip` that the pipeline counts and records in the manifest: nothing is dropped silently.

A compressed file must end cleanly: gzip's own end-of-stream marker and CRC, zstd's frame end
(and its content checksum when the frame has one). A file cut short or with damaged bytes is
an error that names it -- never a shorter file, and never a "malformed last record" that
`skipMalformed` would hide.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from cpt_core.api.v1alpha1 import DataSource, SourceFormat
from cpt_core.contract.reasons import Reason
from cpt_core.storage import ObjectInfo, Storage, StorageError, parse_uri

EXTENSIONS: dict[SourceFormat, tuple[str, ...]] = {
    SourceFormat.jsonl: (".jsonl", ".json", ".ndjson"),
    SourceFormat.chat: (".jsonl", ".json", ".ndjson"),
    SourceFormat.parquet: (".parquet",),
    SourceFormat.text: (".txt", ".md", ".text"),
}
COMPRESSIONS = ("", ".gz", ".zst")


class DataError(ValueError):
    """Bad input data; the message names the source, the file and the line."""

    reason = Reason.DataError


@dataclass(frozen=True)
class Document:
    """One document: `text`, or `messages` for chat data; `line` is 1-based (0: the whole file)."""

    line: int
    text: str | None = None
    messages: list[dict[str, str]] | None = None


@dataclass(frozen=True)
class Skip:
    """A malformed record that was skipped because the source allows it."""

    file: str
    line: int
    reason: str


def _matches(key: str, fmt: SourceFormat) -> bool:
    name = key.lower()
    return any(name.endswith(ext + comp) for ext in EXTENSIONS[fmt] for comp in COMPRESSIONS)


def list_source_files(source: DataSource, storage: Storage) -> tuple[list[ObjectInfo], list[str]]:
    """The files of a source (sorted, deduplicated) and the ignored objects below its prefixes.

    An object named explicitly is always read; below a prefix only files with an extension of
    the source's format are (so a stray README or _SUCCESS marker does not break a run).
    """
    files: dict[str, ObjectInfo] = {}
    ignored: list[str] = []
    for uri in source.uris:
        location = parse_uri(uri)
        try:
            objects = storage.list_objects(location)
        except StorageError as exc:
            raise DataError(f"source '{source.name}': cannot list {uri}: {exc}") from None
        for obj in objects:
            explicit = obj.location.key == location.key
            if explicit or _matches(obj.location.key, source.format):
                files.setdefault(obj.uri, obj)
            else:
                ignored.append(obj.uri)
    if not files:
        found = f" (only {len(ignored)} objects of other formats, e.g. {ignored[0]})" if ignored else ""
        raise DataError(
            f"source '{source.name}': no {source.format.value} files found at {', '.join(source.uris)}{found}"
        )
    return [files[k] for k in sorted(files)], ignored


class _Raw(io.RawIOBase):
    """Adapts any object with read(n) (an S3 body, a zstd reader) for io.BufferedReader."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _ZstdFrames(io.RawIOBase):
    """zstd decompression that notices a file cut short.

    zstandard's `stream_reader` reports an incomplete last frame as a clean end of file (the tail
    is lost without a word). Its `decompressobj` says whether a frame ended (`eof`) and verifies
    the frame's content checksum when there is one, so it is used here, frame after frame; the
    input is fed in small pieces to keep the decompressed output per call bounded.
    """

    CHUNK = 1 << 16

    def __init__(self, stream: IO[bytes]) -> None:
        import zstandard

        self._stream = stream
        self._context = zstandard.ZstdDecompressor()
        self._frame: Any = None  # the decompressobj of the frame being read
        self._consumed = 0
        self._out = b""
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._pos >= len(self._out):
            if self._done:
                return 0
            chunk = self._stream.read(self.CHUNK)
            if not chunk:
                self._done = True
                if self._frame is not None:
                    raise EOFError(
                        f"the zstd stream ends inside a frame after {self._consumed} compressed bytes "
                        "(the file is truncated)"
                    )
                return 0
            self._consumed += len(chunk)
            self._out, self._pos = self._feed(chunk), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _feed(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None:
                self._frame = self._context.decompressobj()
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data, self._frame = self._frame.unused_data, None  # the next frame (concatenated files)
        return b"".join(out)


def _decompress(stream: IO[bytes], key: str) -> IO[bytes]:
    if key.endswith(".gz"):
        # GzipFile checks the end-of-stream marker (EOFError) and the CRC and length (BadGzipFile).
        return gzip.GzipFile(fileobj=stream)  # type: ignore[return-value]
    if key.endswith(".zst"):
        return _ZstdFrames(stream)  # type: ignore[return-value]
    return stream


def _damage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of the decompressors that mean the bytes are not what was compressed."""
    import zstandard

    return (zlib.error, zstandard.ZstdError, EOFError, gzip.BadGzipFile)


def iter_documents(source: DataSource, obj: ObjectInfo, storage: Storage) -> Iterator[Document | Skip]:
    """Documents of one file, in order."""
    name, uri = source.name, obj.uri
    try:
        if source.format == SourceFormat.parquet:
            yield from _parquet(source, obj, storage)
            return
        raw = storage.open_read(obj.location)
    except StorageError as exc:
        raise DataError(f"source '{name}': cannot read {uri}: {exc}") from None
    try:
        stream = _decompress(raw, obj.location.key.lower())
        if source.format == SourceFormat.text:
            try:
                text = stream.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"source '{name}': {uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if text.strip():
                yield Document(0, text=text)
            else:
                yield Skip(uri, 0, "empty document")
            return
        yield from _json_lines(source, uri, stream)
    except DataError:
        raise
    except _damage_errors() as exc:
        raise DataError(
            f"source '{name}': {uri} is damaged or truncated ({exc}). Replace the file (or remove it from the source)"
        ) from None
    except (OSError, StorageError) as exc:
        raise DataError(f"source '{name}': cannot read {uri}: {exc}") from None
    finally:
        raw.close()


def _malformed(source: DataSource, uri: str, line: int, reason: str) -> Skip:
    if not source.skip_malformed:
        raise DataError(
            f"source '{source.name}': {uri} line {line}: {reason} "
            f"(set skipMalformed: true on the source to skip such records)"
        )
    return Skip(uri, line, reason)


def _json_lines(source: DataSource, uri: str, stream: IO[bytes]) -> Iterator[Document | Skip]:
    chat = source.format == SourceFormat.chat
    field = source.messages_field if chat else source.text_field
    reader = io.BufferedReader(_Raw(stream), buffer_size=1 << 20)
    for number, raw in enumerate(reader, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            del raw  # a huge line is not kept twice while its document is tokenized
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            yield _malformed(source, uri, number, f"invalid JSON ({exc})")
            continue
        if not isinstance(record, dict):
            yield _malformed(source, uri, number, f"expected a JSON object, got {type(record).__name__}")
            continue
        if field not in record:
            fields = ", ".join(list(record)[:8])
            hint = "messagesField" if chat else "textField"
            yield _malformed(source, uri, number, f"no field '{field}' (fields: {fields}); check {hint}")
            continue
        value = record[field]
        if chat:
            problem = _check_messages(value)
            if problem:
                yield _malformed(source, uri, number, problem)
                continue
            yield Document(number, messages=value)
        else:
            if not isinstance(value, str):
                yield _malformed(source, uri, number, f"field '{field}' is {type(value).__name__}, not a string")
                continue
            if not value.strip():
                yield Skip(uri, number, "empty document")
                continue
            yield Document(number, text=value)


def _check_messages(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "messages must be a non-empty list of {role, content} objects"
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return f"messages[{i}] must be an object with a string 'content'"
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            return f"messages[{i}].role must be system, user, assistant or tool (got {message.get('role')!r})"
    if not any(m["role"] == "assistant" for m in value):
        return "conversation has no assistant message (nothing to train on)"
    return None


def _parquet(source: DataSource, obj: ObjectInfo, storage: Storage) -> Iterator[Document | Skip]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = storage.read_bytes(obj.location)
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
    except Exception as exc:
        raise DataError(f"source '{source.name}': {obj.uri} is not a readable Parquet file ({exc})") from None
    columns = parquet.schema_arrow.names
    if source.text_field not in columns:
        raise DataError(
            f"source '{source.name}': {obj.uri} has no column '{source.text_field}' "
            f"(columns: {', '.join(columns[:8])}); check textField"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[source.text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                yield _malformed(source, obj.uri, row, f"column '{source.text_field}' is {type(value).__name__}")
            elif not value.strip():
                yield Skip(obj.uri, row, "empty document")
            else:
                yield Document(row, text=value)
