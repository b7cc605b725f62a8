"""Prepare: raw documents -> tokenized, packed, content-addressed shards (the first phase of a run).

Per source:

1. list the source's files (paths, sizes, ETags/mtimes) and derive the cache key from them,
   the tokenizer's content hash, the sequence length, the format options, the holdout size
   and the seed;
2. if `<cacheUri>/<key>/manifest.json` exists and the entry verifies against it (every shard
   present with its recorded size and checksum, see cache.py): done, no tokenization (the
   manifest is written last, so a crashed prepare is never mistaken for a finished one; a
   damaged entry is rebuilt with a warning);
3. otherwise tokenize every file -- in this process, or with **Ray Data** across the Ray
   cluster (one task per file, results in file order);
4. pick `holdoutDocuments` documents with the smallest seeded hashes (an exact, seeded,
   order-independent choice) *before* packing, and pack them separately;
5. pack the rest into rows, write shards, upload, write the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cpt_core.api.v1alpha1 import CPTJobSpec, DataSource, SourceFormat
from cpt_core.api.v1alpha1.status import SourceProgress
from cpt_core.storage import ObjectInfo, Storage, parse_uri

from cpt_trainer.data.cache import cached_manifest, digest_files, record_etags
from cpt_trainer.data.documents import DataError, iter_documents, list_source_files
from cpt_trainer.data.manifest import Manifest, SkipExample, Skipped, Split
from cpt_trainer.data.shards import RowPacker, ShardLayout, ShardReader, ShardWriter
from cpt_trainer.data.tokenize import DocumentTokenizer, TokenizedFile

log = logging.getLogger(__name__)

#: Bump when the shard format or the packing rules change: old cache entries stop matching.
PIPELINE_VERSION = 1
MAX_SKIP_EXAMPLES = 10


@dataclass
class PreparedSource:
    """A source ready for training: where its shards are and what they hold."""

    name: str
    role: str
    weight: int
    uri: str
    manifest: Manifest
    cache_hit: bool = False
    rebuilt: str | None = None
    """Why a cache entry that existed was rebuilt instead of used (it failed verification)."""
    tokenized_documents: int = 0
    seconds: float = 0.0

    @property
    def layout(self) -> ShardLayout:
        m = self.manifest
        return ShardLayout(m.sequence_length, m.dtype, m.rows_per_shard)

    @property
    def rows(self) -> int:
        return self.manifest.train.rows

    @property
    def holdout_rows(self) -> int:
        return self.manifest.holdout.rows

    @property
    def fingerprint(self) -> str:
        """What the training rows *are*: a hash of the train shards' checksums. It keys the sampler's
        permutation and the resume check, so the same data gives the same sample order wherever it is
        stored or checked out (the cache key also covers paths and mtimes)."""
        return self.manifest.content_fingerprint

    def reader(self, storage: Storage, kind: str = "train") -> ShardReader:
        rows = self.rows if kind == "train" else self.holdout_rows
        return ShardReader(storage, parse_uri(self.uri), self.layout, kind, rows)


@dataclass
class PrepareReport:
    """What `prepare` did, per source."""

    sources: list[PreparedSource] = field(default_factory=list)

    @property
    def tokenized_documents(self) -> int:
        return sum(s.tokenized_documents for s in self.sources)


def cache_key(
    source: DataSource, files: list[ObjectInfo], tokenizer_fingerprint: str, seq_len: int, holdout: int, seed: int
) -> str:
    """The content address of a source's shards: same inputs, same key, no work."""
    payload = {
        "version": PIPELINE_VERSION,
        "files": [[f.uri, f.size, f.etag] for f in files],
        "format": source.format.value,
        "textField": source.text_field,
        "messagesField": source.messages_field,
        "skipMalformed": source.skip_malformed,
        "tokenizer": tokenizer_fingerprint,
        "sequenceLength": seq_len,
        "holdoutDocuments": holdout,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- tokenization


def _tokenize_one(
    tokenizer: DocumentTokenizer, source: DataSource, index: int, obj: ObjectInfo, storage: Storage
) -> TokenizedFile:
    docs = iter_documents(source, obj, storage)
    try:
        return tokenizer.tokenize_file(index, obj.uri, docs, chat=source.format == SourceFormat.chat)
    except DataError as exc:
        message = str(exc)
        prefix = f"source '{source.name}': "
        raise DataError(message if message.startswith(prefix) else prefix + message) from None


def _tokenize_local(
    tokenizer: Any, source: DataSource, files: list[ObjectInfo], storage: Storage
) -> Iterator[TokenizedFile]:
    # One process: let the Rust tokenizer use every core for its batches. (Ray Data workers
    # keep it off: there the parallelism is one worker per CPU.)
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        doc_tokenizer = DocumentTokenizer(tokenizer)
        for index, obj in enumerate(files):
            yield _tokenize_one(doc_tokenizer, source, index, obj, storage)
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


class _RayTokenize:
    """Ray Data map_batches worker: loads nothing per call, tokenizes whole files."""

    def __init__(self, tokenizer: Any, source_json: str, storage_settings: Any) -> None:
        self.tokenizer = DocumentTokenizer(tokenizer)
        self.source = DataSource.model_validate_json(source_json)
        self.storage = Storage(storage_settings)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: list[bytes] = []
        for index, payload in zip(batch["index"], batch["file"], strict=True):
            obj: ObjectInfo = pickle.loads(payload)
            out.append(pickle.dumps(_tokenize_one(self.tokenizer, self.source, int(index), obj, self.storage)))
        return {"index": batch["index"], "result": out}


def _tokenize_ray(
    tokenizer: Any, source: DataSource, files: list[ObjectInfo], storage: Storage, parallelism: int
) -> Iterator[TokenizedFile]:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    items = [{"index": i, "file": pickle.dumps(obj)} for i, obj in enumerate(files)]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RayTokenize,
        batch_size=1,
        fn_constructor_kwargs={
            "tokenizer": tokenizer,
            "source_json": source.model_dump_json(),
            "storage_settings": storage.settings,
        },
        concurrency=(1, max(1, min(parallelism, len(items)))),
        num_cpus=1,
    )
    try:
        for row in dataset.iter_rows():
            yield pickle.loads(row["result"])
    except Exception as exc:
        # Ray wraps a worker's exception (RayTaskError, UserCodeException, ...): surface our DataError
        # as itself, with its message (source, file, line), not as a remote traceback.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, DataError):
                raise DataError(str(cause)) from None
            cause = cause.__cause__ or getattr(cause, "cause", None)
        line = next((ln for ln in str(exc).splitlines() if "DataError: " in ln), None)
        if line is not None:
            raise DataError(line.split("DataError: ", 1)[1].strip()) from None
        raise


# --------------------------------------------------------------------------- prepare


def _select_holdout(files: list[TokenizedFile], count: int, seed: int, source: str) -> list[np.ndarray]:
    """Per file, a bool mask of the documents held out: the `count` smallest seeded hashes."""
    hashes = [f.document_hashes(seed, source) for f in files]
    flat = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    masks = [np.zeros(len(h), dtype=bool) for h in hashes]
    if count <= 0 or not len(flat):
        return masks
    if count >= len(flat):
        raise DataError(
            f"source '{source}': holdoutDocuments ({count}) must be smaller than the source's "
            f"{len(flat)} documents; lower spec.data.validation.holdoutDocuments"
        )
    threshold = np.partition(flat, count - 1)[count - 1]
    for mask, h in zip(masks, hashes, strict=True):
        mask[:] = h <= threshold
    return masks


def prepare_source(
    spec: CPTJobSpec,
    index: int,
    storage: Storage,
    tokenizer: Any,
    tokenizer_fingerprint: str,
    use_ray: bool = False,
    parallelism: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PreparedSource:
    """Prepare one source (or find it in the cache)."""
    started = time.monotonic()
    source = spec.data.sources[index]
    seq_len = spec.data.sequence_length
    holdout = spec.data.validation.holdout_documents
    files, ignored = list_source_files(source, storage)
    key = cache_key(source, files, tokenizer_fingerprint, seq_len, holdout, spec.training.seed)
    base = parse_uri(spec.cache_uri).as_prefix().join(key + "/")
    manifest_location = base.join("manifest.json")
    cached, damage = cached_manifest(storage, base, key)
    if cached is not None:
        log.info("source '%s': cache hit %s (%d rows, verified)", source.name, base, cached.train.rows)
        return PreparedSource(source.name, source.role.value, source.weight or 0, str(base), cached, cache_hit=True)
    if damage is not None:
        log.warning("source '%s': cache entry %s is damaged (%s): rebuilding it", source.name, base, damage)
        storage.delete(manifest_location)  # first: nobody takes the entry for complete while it is rebuilt

    if progress:
        progress(f"tokenizing source '{source.name}' ({len(files)} files)")
    tokenize = (
        _tokenize_ray(tokenizer, source, files, storage, parallelism)
        if use_ray
        else _tokenize_local(tokenizer, source, files, storage)
    )
    tokenized = list(tokenize)
    documents = sum(f.documents for f in tokenized)
    skipped = [s for f in tokenized for s in f.skipped]
    if documents == 0:
        raise DataError(
            f"source '{source.name}': no documents in {len(files)} file(s) ({len(skipped)} empty or skipped records)"
        )
    malformed = [s for s in skipped if s.reason != "empty document"]
    if malformed:
        log.warning(
            "source '%s': skipped %d malformed records, e.g. %s line %d: %s",
            source.name,
            len(malformed),
            malformed[0].file,
            malformed[0].line,
            malformed[0].reason,
        )
    holdout_masks = _select_holdout(tokenized, holdout, spec.training.seed, source.name)

    vocab = len(tokenizer)
    layout = ShardLayout.for_vocab(seq_len, vocab)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    with tempfile.TemporaryDirectory(prefix="cpt-prepare-") as tmp:
        local = Path(tmp) if base.is_s3 else base.path
        if not base.is_s3:
            storage.delete_prefix(base)  # leftovers of a crashed run
        train = RowPacker(ShardWriter(local, "train", layout), pad, pad_tail=False)
        held = RowPacker(ShardWriter(local, "holdout", layout), pad, pad_tail=True)
        for f, mask in zip(tokenized, holdout_masks, strict=True):
            train.add(f.tokens, f.train_mask, f.offsets, ~mask)
            held.add(f.tokens, f.train_mask, f.offsets, mask)
        train.finish()
        held.finish()
        if train.writer.rows == 0:
            raise DataError(
                f"source '{source.name}': {train.tokens_in} training tokens do not fill one row of "
                f"{seq_len} tokens; add data or lower spec.data.sequenceLength"
            )
        manifest = Manifest(
            version=PIPELINE_VERSION,
            key=key,
            source=source.name,
            format=source.format.value,
            sequence_length=seq_len,
            dtype=layout.dtype,
            rows_per_shard=layout.rows_per_shard,
            vocab_size=vocab,
            files=len(files),
            ignored_files=ignored[:MAX_SKIP_EXAMPLES],
            ignored_file_count=len(ignored),
            documents=documents,
            train=Split(
                rows=train.writer.rows,
                shards=train.writer.shards,
                documents=train.documents,
                tokens=train.writer.rows * seq_len,
                dropped_tail_tokens=train.dropped_tokens,
            ),
            holdout=Split(
                rows=held.writer.rows,
                shards=held.writer.shards,
                documents=held.documents,
                tokens=held.tokens_in,
                padded_tokens=held.padded_tokens,
            ),
            skipped=Skipped(
                count=len(skipped),
                malformed=len(malformed),
                empty=len(skipped) - len(malformed),
                examples=[
                    SkipExample(file=s.file, line=s.line, reason=s.reason) for s in malformed[:MAX_SKIP_EXAMPLES]
                ],
            ),
            created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            checksums=digest_files(local),
        )
        if base.is_s3:
            storage.upload_dir(local, base)
            manifest.checksums = record_etags(storage, base, manifest.checksums or {})
        # Written last: its presence is what marks the entry complete.
        storage.write_text(manifest_location, manifest.to_json())
    seconds = time.monotonic() - started
    log.info(
        "source '%s': %d documents -> %d rows (%d holdout) in %.1fs",
        source.name,
        documents,
        train.writer.rows,
        held.writer.rows,
        seconds,
    )
    return PreparedSource(
        source.name,
        source.role.value,
        source.weight or 0,
        str(base),
        manifest,
        rebuilt=damage,
        tokenized_documents=documents,
        seconds=seconds,
    )


def prepare(
    spec: CPTJobSpec,
    storage: Storage,
    tokenizer: Any = None,
    use_ray: bool = False,
    parallelism: int = 1,
    progress: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Prepare every source of `spec` (the first phase of every run, and `cpt prepare`)."""
    from cpt_trainer.model.source import load_tokenizer, tokenizer_fingerprint

    if tokenizer is None:
        field_name = "spec.model.tokenizer" if spec.model.tokenizer else "spec.model.source"
        tokenizer = load_tokenizer(spec.model.tokenizer or spec.model.source, storage, field_name)
    fingerprint = tokenizer_fingerprint(tokenizer)
    report = PrepareReport()
    for index in range(len(spec.data.sources)):
        report.sources.append(
            prepare_source(spec, index, storage, tokenizer, fingerprint, use_ray, parallelism, progress)
        )
    return report


def data_accounting(prepared: list[PreparedSource], consumed_rows: dict[str, int]) -> list[SourceProgress]:
    """Per-source tokens available and consumed (`status.data.sources`)."""
    out = []
    for source in prepared:
        seq = source.layout.seq_len
        available = source.rows * seq
        consumed = consumed_rows.get(source.name, 0) * seq
        epochs = round(consumed / available, 4) if available else None
        out.append(
            SourceProgress(name=source.name, tokens_available=available, tokens_consumed=consumed, epochs=epochs)
        )
    return out
