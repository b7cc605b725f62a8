"""Synthesis against real storage (local disk, SeaweedFS), real Ray Data and real models: the cache, resume
after an interruption, verification of what is found, holdout exclusion, and `cpt synthesize`."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.api.v1alpha1 import CPTJobSpec, SynthesisGenerator
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.data import prepare
from cpt_trainer.model.source import ModelSourceError, load_tokenizer
from cpt_trainer.synthesis import SynthesisError, synthesize, synthesize_source
from cpt_trainer.synthesis.selection import UNIT_DOCUMENTS
from cpt_trainer.synthesis.writers import SourceDocument, build_writer

from devkit.jobs import TINY_MODEL, tiny_job, tiny_job_doc, write_numbered_corpus
from devkit.seaweed import SeaweedS3

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A writer factory around the real one that records every document it is asked about: a test that
    says 'nothing was generated' would see any call."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.documents: list[tuple[int, int]] = []
        self.units = 0
        self.fail_after = fail_after

    def __call__(self, settings: SynthesisGenerator, model: str | None, storage: Storage, field: str) -> Any:
        real = build_writer(settings, model, storage, field)
        recorder = self

        class Recording:
            def write(self, documents: Any) -> Any:
                if recorder.fail_after is not None and recorder.units >= recorder.fail_after:
                    raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of a run
                recorder.units += 1
                recorder.documents += [(d.file, d.line) for d in documents]
                return real.write(documents)

        return Recording()


def numbered_spec(tmp_path: Path, holdout: int = 10, files: int = 3, docs: int = 40, **synthesize: Any) -> CPTJobSpec:
    if not (tmp_path / "corpus").exists():  # rewriting it would change its listing (mtimes): a new key
        write_numbered_corpus(tmp_path / "corpus", files=files, docs_per_file=docs)
    spec = {
        "data": {
            "sequenceLength": 64,
            "sources": [
                {"name": "numbered", "role": "domain", "uris": [str(tmp_path / "corpus") + "/"], "weight": 9},
                {
                    "name": "numbered-qa",
                    "role": "instruction",
                    "weight": 1,
                    "synthesize": {
                        "from": "numbered",
                        "generator": {"kind": "cloze", "questionsPerDocument": 2},
                        "output": str(tmp_path / "qa") + "/",
                        **synthesize,
                    },
                },
            ],
            "validation": {"holdoutDocuments": holdout},
            "cacheUri": str(tmp_path / "cache") + "/",
        },
        "training": {"globalBatchTokens": 256},
    }
    return tiny_job(spec=spec).spec


def rows(uris: list[str], storage: Storage) -> list[dict[str, Any]]:
    return [json.loads(line) for uri in uris for line in storage.read_text(uri).splitlines()]


def doc_id(row: dict[str, Any], corpus: Path) -> str:
    file, line = row["document"].removeprefix("file://").rsplit(":", 1)
    text = json.loads(Path(file).read_text().splitlines()[int(line) - 1])["text"]
    assert str(corpus) in file
    return text.split()[0]


@pytest.mark.trainer  # prepare() loads the tokenizer (transformers)
def test_cloze_synthesis_writes_chat_data_and_a_rerun_generates_nothing(tmp_path: Path) -> None:
    spec = numbered_spec(tmp_path)
    storage = Storage()
    recorder = Recorder()
    resolved, results = synthesize(spec, storage, writer_factory=recorder)
    result = results[0]
    assert not result.cache_hit and recorder.units == result.generated_units == -(-110 // UNIT_DOCUMENTS) + 2
    manifest = result.manifest
    assert manifest.documents == 110 and manifest.excluded_documents == 10
    assert manifest.gates.candidates == 220 and 0 < manifest.gates.kept <= 220
    assert manifest.gates.kept + sum(manifest.gates.rejected.values()) == manifest.gates.candidates
    assert manifest.samples_kept and manifest.samples_rejected
    # The synthesised source now reads exactly the files the synthesis wrote, as chat data.
    assert resolved.data.sources[1].uris == result.uris == [f.uri for f in manifest.files]
    assert resolved.data.sources[1].synthesize is None
    assert CPTJobSpec.model_validate_json(resolved.model_dump_json(by_alias=True)) == resolved  # travels to workers
    data = rows(result.uris, storage)
    assert len(data) == manifest.gates.kept
    for row in data[:20]:
        user, assistant = row["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert (user["content"], assistant["content"]) == (row["question"], row["answer"])
    prepared = prepare(resolved, storage).sources[1]
    assert prepared.manifest.documents == manifest.gates.kept

    again = Recorder()
    _, results = synthesize(spec, storage, writer_factory=again)
    assert results[0].cache_hit and again.units == 0 and again.documents == []
    assert results[0].uris == result.uris


@pytest.mark.trainer  # load_tokenizer (transformers)
def test_synthesis_never_asks_about_holdout_documents(tmp_path: Path) -> None:
    spec = numbered_spec(tmp_path, holdout=15)
    storage = Storage()
    recorder = Recorder()
    resolved, results = synthesize(spec, storage, writer_factory=recorder)
    corpus = tmp_path / "corpus"
    # The documents prepare holds out, read back from its holdout shards.
    tokenizer = load_tokenizer(str(TINY_MODEL))
    domain = prepare(resolved, storage, tokenizer=tokenizer).sources[0]
    reader = domain.reader(storage, "holdout")
    tokens, _ = reader.read(list(range(reader.rows)))
    held_out = set(re.findall(r"doc-\d{5}", tokenizer.decode(tokens.reshape(-1).tolist())))
    assert len(held_out) == 15
    asked = {doc_id(row, corpus) for row in rows(results[0].uris, storage)}
    assert asked and not asked & held_out
    all_lines = {(f, n) for f in range(3) for n in range(1, 41)}
    assert len(set(recorder.documents)) == 120 - 15 and set(recorder.documents) <= all_lines

    # Paraphrased probes: the same machinery on exactly the held-out documents, in a separate output.
    probes = synthesize_source(
        spec.resolved(), 1, storage, split="holdout", output=str(tmp_path / "probes") + "/", writer_factory=Recorder()
    )
    assert probes.manifest.documents == 15 and probes.manifest.split == "holdout"
    assert [Path(u).name for u in probes.uris] == ["probes.jsonl"]
    probed = {doc_id(row, corpus) for row in rows(probes.uris, storage)}
    assert probed and probed <= held_out
    assert all({"question", "answer"} <= set(row) for row in rows(probes.uris, storage))


def test_an_interrupted_synthesis_resumes_without_regenerating_finished_units(tmp_path: Path) -> None:
    spec = numbered_spec(tmp_path, files=2, docs=70)  # 2 files x 3 units
    storage = Storage()
    with pytest.raises(KeyboardInterrupt):
        synthesize(spec, storage, writer_factory=Recorder(fail_after=2))
    raw = sorted((tmp_path / "qa" / "_raw").rglob("*.pairs"))
    assert len(raw) == 2
    finished = {p.name: p.stat().st_mtime_ns for p in raw}
    assert not (tmp_path / "qa" / "_SYNTHESIS").exists()

    resumed = Recorder()
    _, results = synthesize(spec, storage, writer_factory=resumed)
    assert results[0].reused_units == 2 and results[0].generated_units == resumed.units == 4
    assert {p.name: p.stat().st_mtime_ns for p in raw} == finished  # not written again
    first_unit_lines = set(range(1, 1 + UNIT_DOCUMENTS))
    assert not {(f, n) for f, n in resumed.documents if f == 0} & first_unit_lines

    # Identical to a run that was never interrupted.
    fresh_spec = numbered_spec(tmp_path / "fresh", files=2, docs=70)
    _, fresh = synthesize(fresh_spec, storage)
    pairs = [(r["question"], r["answer"], r["document"].rsplit("/", 1)[1]) for r in rows(results[0].uris, storage)]
    assert pairs == [
        (r["question"], r["answer"], r["document"].rsplit("/", 1)[1]) for r in rows(fresh[0].uris, storage)
    ]


def test_damaged_outputs_are_rebuilt_and_changed_filters_regenerate_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = numbered_spec(tmp_path)
    storage = Storage()
    _, (first,) = synthesize(spec, storage)
    part = Path(first.uris[0].removeprefix("file://"))
    part.write_text(part.read_text()[:-40])  # truncated after the manifest was written
    unit = sorted((tmp_path / "qa" / "_raw").rglob("*.pairs"))[1]
    unit.write_text(unit.read_text().replace('"line": 3', '"line": 4', 1))  # a raw unit that lies
    recorder = Recorder()
    with caplog.at_level(logging.WARNING, logger="cpt_trainer"):
        _, (rebuilt,) = synthesize(spec, storage, writer_factory=recorder)
    assert not rebuilt.cache_hit
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    assert any("damaged synthesis unit" in r.getMessage() for r in caplog.records)
    assert recorder.units == 1 and rebuilt.reused_units == first.manifest.units - 1
    assert rebuilt.manifest.files == first.manifest.files  # the same bytes again

    # New filters: a new output from the same generation, nothing generated.
    strict = numbered_spec(tmp_path, filters={"minAnswerTokens": 2})
    recorder = Recorder()
    _, (filtered,) = synthesize(strict, storage, writer_factory=recorder)
    assert recorder.units == 0 and filtered.reused_units == first.manifest.units
    assert filtered.manifest.key != first.manifest.key and filtered.manifest.raw_key == first.manifest.raw_key
    assert filtered.manifest.gates.kept < first.manifest.gates.kept
    assert all(len(row["answer"].split()) >= 2 for row in rows(filtered.uris, storage))


def test_synthesis_to_s3(tmp_path: Path, s3_env: SeaweedS3) -> None:
    spec = numbered_spec(tmp_path, output=f"s3://{s3_env.bucket}/synth/qa/")
    storage = Storage(S3Settings.from_spec(None))
    _, (result,) = synthesize(spec, storage)
    assert all(u.startswith("s3://") for u in result.uris)
    assert len(rows(result.uris, storage)) == result.manifest.gates.kept
    _, (again,) = synthesize(spec, storage, writer_factory=Recorder())
    assert again.cache_hit


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with (random) weights saved, so a generator can load it like any model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path_factory.mktemp("tiny-weights")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL))
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (out / name).write_bytes((TINY_MODEL / name).read_bytes())
    return out


def test_a_model_generator_runs_on_ray_data_and_its_gates_explain_an_empty_result(
    tmp_path: Path, tiny_weights: Path
) -> None:
    from cpt_trainer.launch.local_ray import local_ray

    generator = {"model": str(tiny_weights), "questionsPerDocument": 2, "maxNewTokens": 12, "batchSize": 4}
    spec = numbered_spec(tmp_path, files=1, docs=20, holdout=4, generator=generator)
    storage = Storage()
    # A random model does not answer in 'Question: ... Answer: ...' form: every pair fails the format gate,
    # and the error says so in one line that names the field to change.
    with local_ray(num_cpus=2), pytest.raises(SynthesisError) as failure:
        synthesize(spec, storage, use_ray=True, workers=2)
    message = str(failure.value)
    assert "kept 0 of 32 generated pairs (format 32)" in message
    assert "spec.data.sources[1].synthesize.filters" in message and "\n" not in message
    distributed = sorted((tmp_path / "qa" / "_raw").rglob("*.pairs"))
    assert len(distributed) == 1  # generated and kept for a retry

    # The same generation in this process (greedy, same batches) writes the same candidates.
    local_spec = numbered_spec(
        tmp_path, files=1, docs=20, holdout=4, generator=generator, output=str(tmp_path / "qa-local") + "/"
    )
    with pytest.raises(SynthesisError):
        synthesize(local_spec, storage)
    (local,) = sorted((tmp_path / "qa-local" / "_raw").rglob("*.pairs"))
    assert json.loads(local.read_text())["documents"] == json.loads(distributed[0].read_text())["documents"]

    writer = build_writer(SynthesisGenerator(**generator), str(tiny_weights), storage, "f")
    prompts = writer.prompts([SourceDocument(0, 1, "doc-1 Article 1 sentence 0. Another sentence here.")])  # type: ignore[attr-defined]
    assert [p.type for p in prompts] == ["factual", "reasoning"]
    assert "Article 1 sentence 0." in prompts[0].text and "Another sentence here." in prompts[1].text

    bad = numbered_spec(tmp_path / "bad", generator={"model": str(tmp_path / "no-such-model")})
    with pytest.raises(
        ModelSourceError, match=r"spec\.data\.sources\[1\]\.synthesize\.generator\.model: .* does not exist"
    ):
        synthesize(bad, storage)


def _job_file(tmp_path: Path, synthesize: dict[str, Any]) -> Path:
    doc = tiny_job_doc()
    doc["spec"]["checkpoint"]["uri"] = str(tmp_path / "run") + "/"
    doc["spec"]["data"]["sources"].append(
        {"name": "veloria-qa", "role": "instruction", "weight": 5, "synthesize": {"from": "veloria", **synthesize}}
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cpt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cpt_core.cli", *args], capture_output=True, text=True, timeout=600, cwd="/"
    )


@pytest.mark.trainer  # `cpt prepare` tokenizes (transformers) in a subprocess
def test_cpt_synthesize_then_prepare_is_a_cache_hit(tmp_path: Path) -> None:
    job = _job_file(tmp_path, {"generator": {"kind": "cloze"}, "output": str(tmp_path / "qa") + "/"})
    first = cpt("synthesize", str(job), "--no-ray")
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(
        r"veloria-qa: generated \d+ units, reused 0; 240 train documents of 'veloria' \(16 excluded\)", first.stdout
    )
    assert "kept     [cloze] Fill in the blank" in first.stdout
    prepared = cpt("prepare", str(job))
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "synthesis cache hit" in prepared.stderr and "veloria-qa: tokenized" in prepared.stdout

    bad = _job_file(tmp_path, {"generator": {"kind": "cloze", "maxNewTokens": 64, "model": "pkg://x/y.gguf"}})
    result = cpt("synthesize", str(bad))
    assert result.returncode == 1
    assert "spec.data.sources[2].synthesize.generator.model: not used by kind: cloze" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.trainer  # `cpt run` trains in a subprocess
def test_cpt_run_synthesises_before_it_prepares_and_trains(tmp_path: Path) -> None:
    doc = tiny_job_doc(
        spec={
            "training": {"steps": 4},
            "checkpoint": {"uri": str(tmp_path / "run") + "/", "intervalSteps": 4},
            "evaluation": {"intervalSteps": 4},
            "cluster": {"workers": 1},
        }
    )
    doc["spec"]["data"]["sources"].append(
        {
            "name": "veloria-qa",
            "role": "instruction",
            "weight": 5,
            "synthesize": {"from": "veloria", "generator": {"kind": "cloze"}},
        }
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    result = cpt("run", str(job))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "run" / "report" / "synthesis-veloria-qa.json").read_text())
    assert report["gates"]["kept"] > 0 and report["documents"] == 256 - 16  # the job holds out 16 per source
    progress = json.loads((tmp_path / "run" / "_status" / "progress.json").read_text())
    assert progress["state"] == "succeeded"
    qa = next(s for s in progress["data"]["sources"] if s["name"] == "veloria-qa")
    assert qa["tokensAvailable"] > 0 and qa["tokensConsumed"] > 0
    # The default output is under the cache; a second run does not synthesise again.
    assert (tmp_path / "run" / "_cache" / "synthetic" / "veloria-qa" / "_SYNTHESIS").exists()
