"""Verify before trust, for data: compressed inputs end cleanly, cache entries are checked before a
"cache hit", and one huge document does not need memory out of proportion to its size.

Each test's docstring names the failure it rules out: data lost or damaged without a word, a
traceback instead of one line, or memory that grows with the longest line.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.data import DataError, prepare
from cpt_trainer.data.tokenize import DocumentTokenizer
from cpt_trainer.model.source import load_tokenizer

from devkit.huge_document import measure
from devkit.jobs import TINY_MODEL, tiny_job, tiny_job_doc, write_numbered_corpus
from devkit.seaweed import SeaweedS3


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(str(TINY_MODEL))


def spec_for(tmp_path: Path, uris: list[str], cache: str | None = None, **source: Any) -> CPTJobSpec:
    return tiny_job(
        spec={
            "data": {
                "sequenceLength": 16,
                "sources": [{"name": "src", "role": "domain", "uris": uris, "weight": 1, **source}],
                "validation": {"holdoutDocuments": 1},
                "cacheUri": cache or str(tmp_path / "cache") + "/",
            },
            "training": {"globalBatchTokens": 64},
        }
    ).spec


def jsonl(n: int) -> bytes:
    texts = (f"Document {i}: the harbour board collects the fee." for i in range(n))
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def zstd_in_two_blocks(lines: bytes) -> tuple[bytes, int]:
    """A one-frame .zst of `lines` whose first block ends after the first half; (file, end of that block)."""
    half = lines.index(b"\n", len(lines) // 2) + 1
    compressor = zstandard.ZstdCompressor().compressobj()
    first = compressor.compress(lines[:half]) + compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    return first + compressor.compress(lines[half:]) + compressor.flush(), len(first)


# -- a truncated .zst is an error naming the file, never a shorter file ----------------------------


@pytest.mark.parametrize("skip_malformed", [False, True])
@pytest.mark.parametrize("cut", ["at the block boundary", "inside a block"])
def test_a_truncated_zstd_file_is_an_error_naming_it(
    tmp_path: Path, tokenizer: Any, cut: str, skip_malformed: bool
) -> None:
    """Never read as a shorter file: cut at the block boundary, not 64 of 128 lines without a word; cut
    inside a block, not "invalid JSON" for the lost tail (or, with skipMalformed, one skipped record)."""
    data, boundary = zstd_in_two_blocks(jsonl(128))
    intact = tmp_path / "intact.jsonl.zst"
    intact.write_bytes(data)
    manifest = prepare(spec_for(tmp_path, [str(intact)]), Storage(), tokenizer=tokenizer).sources[0].manifest
    assert manifest.documents == 128  # the two-block file itself reads fully

    damaged = tmp_path / "cut.jsonl.zst"
    damaged.write_bytes(data[: boundary if cut == "at the block boundary" else boundary + 40])
    with pytest.raises(DataError) as info:
        prepare(spec_for(tmp_path, [str(damaged)], skipMalformed=skip_malformed), Storage(), tokenizer=tokenizer)
    message = str(info.value)
    assert message.startswith(f"source 'src': file://{damaged} is damaged or truncated (")
    assert "zstd stream ends inside a frame" in message and "invalid JSON" not in message


def test_concatenated_zstd_frames_read_fully_and_checksums_are_checked(tmp_path: Path, tokenizer: Any) -> None:
    lines = jsonl(40)
    with_checksum = zstandard.ZstdCompressor(write_checksum=True)
    two_frames = with_checksum.compress(lines[:400]) + with_checksum.compress(lines[400:])
    (tmp_path / "frames.jsonl.zst").write_bytes(two_frames)
    spec = spec_for(tmp_path, [str(tmp_path / "frames.jsonl.zst")])
    assert prepare(spec, Storage(), tokenizer=tokenizer).sources[0].manifest.documents == 40

    flipped = bytearray(with_checksum.compress(lines))
    flipped[-2] ^= 0xFF  # inside the frame's content checksum: the content no longer matches it
    (tmp_path / "flipped.jsonl.zst").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"flipped\.jsonl\.zst is damaged or truncated \(.*checksum"):
        prepare(spec_for(tmp_path, [str(tmp_path / "flipped.jsonl.zst")]), Storage(), tokenizer=tokenizer)


# -- damaged gzip bytes are a one-line DataError, not a traceback ----------------------------------


def test_corrupt_gzip_is_a_data_error_and_cpt_prepare_prints_one_line(tmp_path: Path, tokenizer: Any) -> None:
    """Not a zlib.error escaping the reader, nor a Python traceback printed by `cpt prepare`."""
    damaged = bytearray(gzip.compress(jsonl(128), mtime=0))
    damaged[15:31] = bytes(16)  # zeroed bytes inside the deflate stream
    path = tmp_path / "zeroed.jsonl.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"zeroed\.jsonl\.gz is damaged or truncated \(Error -3 while decompressing"):
        prepare(spec_for(tmp_path, [str(path)]), Storage(), tokenizer=tokenizer)

    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(tiny_job_doc(spec={"data": spec_for(tmp_path, [str(path)]).data.wire()})))
    result = subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", "prepare", str(job)], capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "zeroed.jsonl.gz is damaged or truncated" in output and "Traceback" not in output


# -- a damaged cache entry is rebuilt, never a "cache hit" -----------------------------------------


def shard_bytes(storage: Storage, prepared: Any) -> list[bytes]:
    reader = prepared.reader(storage)
    tokens, flags = reader.read(list(range(reader.rows)))
    return [tokens.tobytes(), flags.tobytes()]


@pytest.mark.parametrize("damage", ["truncated", "one byte changed", "deleted"])
def test_a_damaged_local_cache_entry_is_rebuilt(tmp_path: Path, tokenizer: Any, damage: str) -> None:
    """Not a "cache hit" from `cpt prepare` for a damaged shard that training would fail on later."""
    write_numbered_corpus(tmp_path / "corpus", files=2, docs_per_file=30)
    spec = spec_for(tmp_path, [str(tmp_path / "corpus") + "/"])
    storage = Storage()
    first = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert first.manifest.checksums and set(first.manifest.checksums) >= {"train-00000.bin", "holdout-00000.bin"}
    expected = shard_bytes(storage, first)

    shard = Path(first.uri.removeprefix("file://")) / "train-00000.bin"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "one byte changed":
        data = bytearray(shard.read_bytes())
        data[100] ^= 0x01
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    again = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert not again.cache_hit and again.tokenized_documents == 60
    assert again.rebuilt is not None and "train-00000.bin" in again.rebuilt
    assert shard_bytes(storage, again) == expected
    assert prepare(spec, storage, tokenizer=tokenizer).sources[0].cache_hit  # intact again


def test_a_replaced_shard_on_s3_is_rebuilt(tmp_path: Path, tokenizer: Any, s3_env: SeaweedS3) -> None:
    write_numbered_corpus(tmp_path / "corpus", files=2, docs_per_file=30)
    cache = f"s3://{s3_env.bucket}/verify-cache/"
    spec = spec_for(tmp_path, [str(tmp_path / "corpus") + "/"], cache=cache)
    storage = Storage(S3Settings.from_spec(None))
    first = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert all(d.etag for d in (first.manifest.checksums or {}).values())
    shard = f"{first.uri}train-00000.bin"
    data = storage.read_bytes(shard)
    storage.write_bytes(shard, data[:-7])  # cut short
    again = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert not again.cache_hit and again.rebuilt and "train-00000.bin is" in again.rebuilt
    changed = bytearray(data)
    changed[5] ^= 0x01
    storage.write_bytes(shard, bytes(changed))  # same size, other content: the ETag differs
    third = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert not third.cache_hit and third.rebuilt and "was replaced" in third.rebuilt
    assert prepare(spec, storage, tokenizer=tokenizer).sources[0].cache_hit


# -- one huge document, bounded memory -------------------------------------------------------------


def test_a_huge_single_line_document_needs_memory_within_10x_its_size(tmp_path: Path) -> None:
    """A 20 MB single-line document, not a peak of ~2.6 GB (about 100x over the baseline)."""
    figures = measure(tmp_path, 20 * 1024 * 1024)
    growth = figures["peakRss"] - figures["baselineRss"]
    ratio = growth / figures["documentBytes"]
    print(
        f"\nhuge document: {figures['documentBytes'] / 1e6:.1f} MB -> peak RSS {figures['peakRss'] / 1e6:.0f} MB "
        f"(baseline {figures['baselineRss'] / 1e6:.0f} MB, growth {growth / 1e6:.0f} MB = {ratio:.1f}x the document)"
    )
    assert figures["rows"] > 60_000
    assert ratio <= 10, figures


def test_huge_documents_tokenize_to_the_same_ids_in_pieces(tokenizer: Any) -> None:
    import random

    random.seed(1)
    words = ["harbour", "pilotage,", "fee.", "Board", "12", "vessel's", "\n", "  ", "é", "ünïcode", "—", "2024-01-01"]
    text = "".join(random.choice(words) + random.choice([" ", " ", "", "  ", "\t"]) for _ in range(120_000))
    pieces = DocumentTokenizer(tokenizer)
    assert np.array_equal(pieces.encode_long(text), np.asarray(pieces.encode_texts([text])[0]))
    assert pieces._stable is True
