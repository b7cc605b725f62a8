"""Prepare against real storage: local disk and SeaweedFS S3, in-process and with Ray Data."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.data import BlendedSampler, DataError, RankLoader, SourceInfo, build_sampler, prepare
from cpt_trainer.data.prepare import PreparedSource
from cpt_trainer.data.tokenize import DOC_START, DocumentTokenizer
from cpt_trainer.model.source import ModelSourceError, load_tokenizer

from devkit.jobs import TINY_MODEL, tiny_job, write_numbered_corpus
from devkit.seaweed import SeaweedS3


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(str(TINY_MODEL))


def numbered_spec(tmp_path: Path, holdout: int = 20, seq_len: int = 64, **source: Any) -> CPTJobSpec:
    ids = write_numbered_corpus(tmp_path / "corpus", files=3, docs_per_file=40)
    assert len(ids) == 120
    return tiny_job(
        spec={
            "data": {
                "sequenceLength": seq_len,
                "sources": [
                    {
                        "name": "numbered",
                        "role": "domain",
                        "uris": [str(tmp_path / "corpus") + "/"],
                        "weight": 1,
                        **source,
                    }
                ],
                "validation": {"holdoutDocuments": holdout},
                "cacheUri": str(tmp_path / "cache") + "/",
            },
            "training": {"globalBatchTokens": seq_len * 4},
        }
    ).spec


def decoded_ids(prepared: PreparedSource, storage: Storage, tokenizer: Any, kind: str) -> list[str]:
    reader = prepared.reader(storage, kind)
    tokens, flags = reader.read(list(range(reader.rows)))
    text = tokenizer.decode(tokens.reshape(-1).tolist())
    assert (flags & DOC_START).any()
    return re.findall(r"doc-\d{5}", text)


def test_prepare_writes_shards_and_a_second_run_does_no_tokenization(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = numbered_spec(tmp_path)
    storage = Storage()
    first = prepare(spec, storage, tokenizer=tokenizer)
    source = first.sources[0]
    assert not source.cache_hit and source.tokenized_documents == 120
    manifest = source.manifest
    assert manifest.documents == 120 and manifest.holdout.documents == 20
    assert manifest.train.rows * 64 == manifest.train.tokens
    shard_files = sorted((Path(source.uri.removeprefix("file://"))).glob("*.bin"))
    before = {p.name: p.stat().st_mtime_ns for p in shard_files}

    calls: list[int] = []
    original = DocumentTokenizer.encode_texts

    def counting(self: DocumentTokenizer, texts: Any) -> Any:
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(DocumentTokenizer, "encode_texts", counting)
    second = prepare(spec, storage, tokenizer=tokenizer)
    assert second.sources[0].cache_hit and second.tokenized_documents == 0
    assert calls == []  # not a single tokenizer call
    assert {p.name: p.stat().st_mtime_ns for p in shard_files} == before
    assert second.sources[0].manifest == manifest

    # Changing an input (here: a file's content) changes the key and re-tokenizes.
    corpus = tmp_path / "corpus" / "part-000.jsonl"
    corpus.write_text(corpus.read_text() + json.dumps({"text": "doc-99999 a new document"}) + "\n")
    third = prepare(spec, storage, tokenizer=tokenizer)
    assert not third.sources[0].cache_hit and third.sources[0].uri != source.uri
    assert calls


def test_holdout_documents_never_reach_training_shards(tmp_path: Path, tokenizer: Any) -> None:
    spec = numbered_spec(tmp_path, holdout=25)
    storage = Storage()
    prepared = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    train_ids = set(decoded_ids(prepared, storage, tokenizer, "train"))
    holdout_ids = decoded_ids(prepared, storage, tokenizer, "holdout")
    assert len(holdout_ids) == len(set(holdout_ids)) == 25
    assert train_ids.isdisjoint(holdout_ids)
    # Everything else is trained on, except at most the tail that does not fill a row.
    missing = {f"doc-{i:05d}" for i in range(120)} - train_ids - set(holdout_ids)
    assert len(missing) <= 2
    # The choice is seeded: another seed holds out other documents.
    other = prepare(
        spec.model_copy(update={"training": spec.training.model_copy(update={"seed": 99})}),
        storage,
        tokenizer=tokenizer,
    )
    assert set(decoded_ids(other.sources[0], storage, tokenizer, "holdout")) != set(holdout_ids)


def test_ray_data_prepare_equals_in_process(tmp_path: Path, tokenizer: Any) -> None:
    from cpt_trainer.launch.local_ray import local_ray

    spec = numbered_spec(tmp_path)
    storage = Storage()
    local = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    ray_spec = spec.model_copy(
        update={"data": spec.data.model_copy(update={"cache_uri": str(tmp_path / "ray-cache") + "/"})}
    )
    with local_ray(num_cpus=2):
        distributed = prepare(ray_spec, storage, tokenizer=tokenizer, use_ray=True, parallelism=2).sources[0]
    assert distributed.tokenized_documents == 120
    assert distributed.manifest.model_dump(exclude={"created_at"}) == local.manifest.model_dump(exclude={"created_at"})
    for name in ("train-00000.bin", "holdout-00000.bin"):
        a = Path(local.uri.removeprefix("file://")) / name
        b = Path(distributed.uri.removeprefix("file://")) / name
        assert a.read_bytes() == b.read_bytes()


def test_prepare_on_s3_and_load_rows_from_s3(tmp_path: Path, tokenizer: Any, s3_env: SeaweedS3) -> None:
    local_spec = numbered_spec(tmp_path)
    storage = Storage(S3Settings.from_spec(None))
    bucket = f"s3://{s3_env.bucket}/prepare-test"
    storage.upload_dir(tmp_path / "corpus", f"{bucket}/corpus/")
    spec = tiny_job(
        spec={
            "data": {
                "sequenceLength": 64,
                "sources": [{"name": "numbered", "role": "domain", "uris": [f"{bucket}/corpus/"], "weight": 1}],
                "validation": {"holdoutDocuments": 20},
                "cacheUri": f"{bucket}/cache/",
            },
            "training": {"globalBatchTokens": 256},
            "storage": {"endpoint": s3_env.endpoint},
        }
    ).spec
    remote = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    assert remote.uri.startswith("s3://") and not remote.cache_hit
    listed = [o.location.key.rsplit("/", 1)[-1] for o in storage.list_objects(remote.uri)]
    assert sorted(listed) == ["holdout-00000.bin", "manifest.json", "train-00000.bin"]
    assert prepare(spec, storage, tokenizer=tokenizer).sources[0].cache_hit

    local = prepare(local_spec, Storage(), tokenizer=tokenizer).sources[0]
    assert remote.manifest.train == local.manifest.train
    # Same rows, same sampler (the fingerprints differ only because the listings' URIs do).
    sampler = BlendedSampler([SourceInfo("numbered", 1, local.rows, "same")], seed=1)
    loaders = [
        RankLoader([p], sampler, st, global_batch_rows=4, micro_batch_size=2)
        for p, st in ((remote, storage), (local, Storage()))
    ]
    for step in (0, 3):
        a, b = (loader.micro_batch(step, 1) for loader in loaders)
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.labels, b.labels)


def test_loader_prefetch_yields_the_same_batches_as_direct_reads(tmp_path: Path, tokenizer: Any) -> None:
    spec = numbered_spec(tmp_path)
    storage = Storage()
    prepared = prepare(spec, storage, tokenizer=tokenizer).sources
    loader = RankLoader(
        prepared, build_sampler(prepared, 1), storage, global_batch_rows=4, micro_batch_size=1, rank=1, world=2
    )
    got = list(loader.iterate(5, 8))
    assert [(b.step, b.micro) for b in got] == [(5, 0), (5, 1), (6, 0), (6, 1), (7, 0), (7, 1)]
    for batch in got:
        direct = loader.micro_batch(batch.step, batch.micro)
        assert np.array_equal(direct.input_ids, batch.input_ids)
        assert batch.indices.tolist()[0] == batch.step * 4 + 2 + batch.micro  # rank 1 of 2: second half


# --------------------------------------------------------------------------- formats and bad input


def _spec_for(tmp_path: Path, uris: list[str], **source: Any) -> CPTJobSpec:
    return tiny_job(
        spec={
            "data": {
                "sequenceLength": 16,
                "sources": [{"name": "src", "role": "domain", "uris": uris, "weight": 1, **source}],
                "validation": {"holdoutDocuments": 1},
                "cacheUri": str(tmp_path / "cache") + "/",
            },
            "training": {"globalBatchTokens": 64},
        }
    ).spec


def _docs(n: int) -> list[str]:
    return [f"Document {i}: the harbour board collects the pilotage fee within {i} days." for i in range(n)]


def test_all_formats_are_read(tmp_path: Path, tokenizer: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "mixed"
    d.mkdir()
    lines = "".join(json.dumps({"text": t}) + "\n" for t in _docs(5))
    (d / "a.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (d / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (d / "c.jsonl").write_text(lines)
    (d / "README").write_text("not data")  # ignored below a prefix, recorded in the manifest
    pq.write_table(pa.table({"text": _docs(4)}), tmp_path / "d.parquet")
    (tmp_path / "txt").mkdir()
    for i, text in enumerate(_docs(3)):
        (tmp_path / "txt" / f"{i}.txt").write_text(text)
    storage = Storage()
    jsonl = prepare(_spec_for(tmp_path, [str(d) + "/"]), storage, tokenizer=tokenizer).sources[0].manifest
    assert jsonl.documents == 15 and jsonl.ignored_file_count == 1
    parquet = prepare(
        _spec_for(tmp_path, [str(tmp_path / "d.parquet")], format="parquet"), storage, tokenizer=tokenizer
    )
    assert parquet.sources[0].manifest.documents == 4
    text = prepare(_spec_for(tmp_path, [str(tmp_path / "txt") + "/"], format="text"), storage, tokenizer=tokenizer)
    assert text.sources[0].manifest.documents == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"text": "ok"}\n{"text": "ok"}\n{"text": broken\n', "part.jsonl line 3: invalid JSON"),
        (
            '{"text": "ok"}\n{"body": "no text field"}\n',
            "part.jsonl line 2: no field 'text' (fields: body); check textField",
        ),
        ('{"text": "ok"}\n["a list"]\n', "line 2: expected a JSON object"),
        ('{"text": 42}\n', "line 1: field 'text' is int, not a string"),
    ],
)
def test_malformed_records_name_source_file_and_line(
    tmp_path: Path, tokenizer: Any, content: str, fragment: str
) -> None:
    (tmp_path / "part.jsonl").write_text(content)
    with pytest.raises(DataError) as info:
        prepare(_spec_for(tmp_path, [str(tmp_path / "part.jsonl")]), Storage(), tokenizer=tokenizer)
    message = str(info.value)
    assert message.startswith("source 'src': ") and fragment in message and "skipMalformed" in message


def test_skip_malformed_counts_and_records_examples(tmp_path: Path, tokenizer: Any) -> None:
    good = "".join(json.dumps({"text": t}) + "\n" for t in _docs(6))
    (tmp_path / "part.jsonl").write_text(
        good + "{broken\n" + json.dumps({"body": 1}) + "\n" + json.dumps({"text": ""}) + "\n"
    )
    manifest = (
        prepare(_spec_for(tmp_path, [str(tmp_path / "part.jsonl")], skipMalformed=True), Storage(), tokenizer=tokenizer)
        .sources[0]
        .manifest
    )
    assert manifest.documents == 6
    assert manifest.skipped.malformed == 2 and manifest.skipped.empty == 1
    assert [e.line for e in manifest.skipped.examples] == [7, 8]


def test_empty_and_missing_sources_are_clear_errors(tmp_path: Path, tokenizer: Any) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"source 'src': no jsonl files found at .*empty/"):
        prepare(_spec_for(tmp_path, [str(tmp_path / "empty") + "/"]), Storage(), tokenizer=tokenizer)
    (tmp_path / "blank.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="source 'src': no documents in 1 file"):
        prepare(_spec_for(tmp_path, [str(tmp_path / "blank.jsonl")]), Storage(), tokenizer=tokenizer)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet is not a readable Parquet file"):
        prepare(_spec_for(tmp_path, [str(tmp_path / "bad.parquet")], format="parquet"), Storage(), tokenizer=tokenizer)


def test_unreadable_s3_source_is_a_clear_error(tmp_path: Path, tokenizer: Any, s3: SeaweedS3) -> None:
    spec = _spec_for(tmp_path, [f"s3://{s3.bucket}/whatever/"])
    wrong = Storage(S3Settings(endpoint=s3.endpoint, access_key_id="AKWRONG", secret_access_key="x", max_attempts=1))
    with pytest.raises(DataError, match=r"source 'src': cannot list s3://.*access denied"):
        prepare(spec, wrong, tokenizer=tokenizer)


def test_tokenizer_that_cannot_be_loaded(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelSourceError, match=r"spec\.model\.source: cannot load a tokenizer"):
        load_tokenizer(str(tmp_path / "model"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="package 'no_such_pkg' is not installed"):
        load_tokenizer("pkg://no_such_pkg/model.gguf")


def test_bad_data_under_ray_data_is_the_same_clear_error(tmp_path: Path, tokenizer: Any) -> None:
    from cpt_trainer.launch.local_ray import local_ray

    (tmp_path / "part.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    with local_ray(num_cpus=2), pytest.raises(DataError) as info:
        prepare(_spec_for(tmp_path, [str(tmp_path / "part.jsonl")]), Storage(), tokenizer=tokenizer, use_ray=True)
    message = str(info.value)
    assert message.startswith("source 'src': ") and "part.jsonl line 2: invalid JSON" in message
    assert "Traceback" not in message


def test_the_sample_order_depends_on_the_data_not_on_where_it_is(tmp_path: Path, tokenizer: Any) -> None:
    """Two copies of a corpus (other paths, other mtimes) give other cache keys but the same content
    fingerprint, hence the same sampler permutation and a resume that is not refused; other data does not."""
    from cpt_trainer.data import build_sampler

    storage = Storage()
    a = prepare(numbered_spec(tmp_path / "a"), storage, tokenizer=tokenizer).sources
    b = prepare(numbered_spec(tmp_path / "b"), storage, tokenizer=tokenizer).sources
    assert a[0].manifest.key != b[0].manifest.key
    assert a[0].fingerprint == b[0].fingerprint
    rows = lambda prepared: build_sampler(prepared, 7).lookup(list(range(32)))[1].tolist()  # noqa: E731
    assert rows(a) == rows(b)
    other = tmp_path / "c"
    spec = numbered_spec(other)
    (other / "corpus" / "part-000.jsonl").write_text('{"text": "doc-x something else entirely."}\n' * 40)
    c = prepare(spec, storage, tokenizer=tokenizer).sources
    assert c[0].fingerprint != a[0].fingerprint
