"""Synthesis: a source's training documents -> question-answer pairs -> quality gates -> chat data.

Per synthesised source, before data preparation:

1. list the origin source's files; the **raw key** hashes that listing (sizes, ETags), the holdout
   choice (count, seed), the generator settings and the model's identity; the **key** adds the filters;
2. if `<output>/_SYNTHESIS` names the key and every file it lists has its size and sha256: done
   (a cache hit loads no model and generates nothing);
3. otherwise read the documents, drop the holdout (the data pipeline's own choice), cut them into
   units, and generate the units that have no intact raw file under `<output>/_raw/<raw key>/` --
   on **Ray Data** (`map_batches` with one stateful model writer per worker, GPUs when the cluster
   has them), or in this process (without Ray, and always for cloze, which has no model to spread).
   Each unit's raw file is written when it is done, so an interrupted run resumes where it stopped;
   filters can change without generating again;
4. run the quality gates over every candidate, write `part-NNNNN.jsonl` per input file (chat rows
   that also carry `question` and `answer`, so the same file serves as probes), remove stale parts,
   and write the manifest last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cpt_core.api.v1alpha1 import CPTJobSpec, GeneratorKind, SynthesisGenerator
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Location, NotFound, ObjectInfo, Storage, parse_uri

from cpt_trainer.data.documents import DataError, list_source_files
from cpt_trainer.synthesis.manifest import SYNTHESIS_VERSION, SynthesisManifest, parse_raw_unit, raw_unit
from cpt_trainer.synthesis.outputs import MANIFEST, build_manifest, verified_manifest, write_outputs
from cpt_trainer.synthesis.quality import Candidate, apply_gates
from cpt_trainer.synthesis.selection import UNIT_DOCUMENTS, Unit, select_documents
from cpt_trainer.synthesis.writers import QuestionWriter, build_writer

log = logging.getLogger(__name__)


WriterFactory = Callable[[SynthesisGenerator, "str | None", Storage, str], QuestionWriter]


class SynthesisError(DataError):
    """The synthesis cannot give usable data (e.g. every pair rejected); a restart cannot fix it."""

    reason = Reason.SynthesisFailed


@dataclass
class SynthesisResult:
    source: str
    output: str
    manifest: SynthesisManifest
    cache_hit: bool = False
    generated_units: int = 0
    reused_units: int = 0
    seconds: float = 0.0

    @property
    def uris(self) -> list[str]:
        return [f.uri for f in self.manifest.files]


def model_identity(uri: str, storage: Storage, field: str) -> str:
    """A change token of a generator model without loading it: object listing (s3://), file sizes and the
    config (local directories, .gguf, pkg://), or the repo id (hf://)."""
    from cpt_trainer.model.source import resolve

    if uri.startswith("hf://"):
        return uri
    if uri.startswith("s3://"):
        return json.dumps([uri] + [[o.location.key, o.size, o.etag] for o in storage.list_objects(uri)])
    source = resolve(uri, storage, field)
    if source.gguf_file:
        return json.dumps([uri, source.gguf_file, (source.directory / source.gguf_file).stat().st_size])
    config = source.directory / "config.json"
    weights = sorted(
        (p.name, p.stat().st_size)
        for p in source.directory.iterdir()
        if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
    )
    return json.dumps([uri, config.read_text() if config.exists() else "", weights])


def _keys(
    spec: CPTJobSpec, index: int, files: list[ObjectInfo], split: str, model_uri: str | None, storage: Storage
) -> tuple[str, str]:
    field = f"spec.data.sources[{index}].synthesize.generator.model"
    source = spec.data.sources[index]
    assert source.synthesize is not None
    origin = next(s for s in spec.data.sources if s.name == source.synthesize.from_)
    generator = source.synthesize.generator
    payload = {
        "version": SYNTHESIS_VERSION,
        "unitDocuments": UNIT_DOCUMENTS,
        "origin": origin.name,
        "files": [[f.uri, f.size, f.etag] for f in files],
        "format": [origin.format.value, origin.text_field, origin.skip_malformed],
        "holdout": [spec.data.validation.holdout_documents, spec.training.seed],
        "split": split,
        "generator": generator.model_dump(
            mode="json", by_alias=True, include={"kind", "questions_per_document", "types", "prompts"}
        ),
    }
    if generator.kind == GeneratorKind.model:
        assert model_uri is not None
        payload["model"] = model_identity(model_uri, storage, field)
        payload["generation"] = [generator.max_new_tokens, generator.max_document_chars]
    raw_key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    filters = source.synthesize.filters.model_dump(mode="json", by_alias=True)
    key = hashlib.sha256(json.dumps([raw_key, filters], sort_keys=True).encode()).hexdigest()[:32]
    return raw_key, key


# --------------------------------------------------------------------------- generation


def _generate_unit(writer: QuestionWriter, unit: Unit, raw_key: str, raw_dir: Location, storage: Storage) -> None:
    started = time.monotonic()
    candidates = writer.write(unit.documents)
    documents = [
        {
            "line": d.line,
            "candidates": [
                {"type": c.type, "question": c.question, "answer": c.answer, "problem": c.problem} for c in cs
            ],
        }
        for d, cs in zip(unit.documents, candidates, strict=True)
    ]
    storage.write_text(raw_dir.join(unit.name), raw_unit(raw_key, unit.id, documents, time.monotonic() - started))


class _RaySynthesize:
    """Ray Data map_batches worker: loads the writer (and its model) once, then writes whole units."""

    def __init__(
        self, job: dict[str, Any], storage_settings: Any, raw_dir: str, threads: int, factory: WriterFactory
    ) -> None:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(threads)
        self.storage = Storage(storage_settings)
        self.raw_key, self.raw_dir = job["rawKey"], parse_uri(raw_dir)
        settings = SynthesisGenerator.model_validate_json(job["generator"])
        self.writer = factory(settings, job["model"], self.storage, job["field"])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        for payload in batch["unit"]:
            _generate_unit(self.writer, pickle.loads(payload), self.raw_key, self.raw_dir, self.storage)
        return {"done": [len(batch["unit"])]}


def _unwrap(exc: BaseException) -> BaseException | None:
    """Our permanent errors out of Ray's wrappers (RayTaskError, UserCodeException, ...)."""
    from cpt_trainer.model.source import ModelSourceError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (DataError, ModelSourceError)):
            return type(cause)(str(cause))
        cause = cause.__cause__ or getattr(cause, "cause", None)
    for kind in (SynthesisError, DataError, ModelSourceError):
        line = next((ln for ln in str(exc).splitlines() if f"{kind.__name__}: " in ln), None)
        if line is not None:
            return kind(line.split(f"{kind.__name__}: ", 1)[1].strip())
    return None


def _generate_ray(units: list[Unit], job: dict[str, Any], storage: Storage, raw_dir: Location, workers: int,
                  factory: WriterFactory, progress: Callable[[str], None] | None) -> None:  # fmt: skip
    import ray
    import ray.data

    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = max(1, min(len(units), gpus or workers))
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    items = [{"unit": pickle.dumps(u)} for u in units]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _RaySynthesize,
        batch_size=1,
        fn_constructor_kwargs={
            "job": job,
            "storage_settings": storage.settings,
            "raw_dir": str(raw_dir),
            "threads": 1,
            "factory": factory,
        },
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1 if not gpus else 0,
        num_gpus=1 if gpus else 0,
    )
    done = 0
    try:
        for _ in dataset.iter_rows():
            done += 1
            if progress:
                progress(f"generated {done}/{len(units)} units")
    except Exception as exc:
        ours = _unwrap(exc)
        if ours is not None:
            raise ours from None
        raise


# --------------------------------------------------------------------------- outputs


def _load_raw(storage: Storage, raw_dir: Location, raw_key: str, unit: Unit) -> list[dict[str, Any]] | None:
    location = raw_dir.join(unit.name)
    try:
        return parse_raw_unit(storage.read_text(location), raw_key, unit.id, [d.line for d in unit.documents])
    except NotFound:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("damaged synthesis unit %s (%s): generating it again", location, str(exc).splitlines()[0])
        return None


# --------------------------------------------------------------------------- entry points


def synthesize_source(
    spec: CPTJobSpec,
    index: int,
    storage: Storage,
    *,
    split: str = "train",
    output: str | None = None,
    use_ray: bool = False,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    writer_factory: WriterFactory = build_writer,
) -> SynthesisResult:
    """Synthesise source `index` of a resolved `spec` (or find it done). `split="holdout"` asks about the
    held-out documents instead (paraphrased probes; never for training) and needs its own `output`."""
    started = time.monotonic()
    source = spec.data.sources[index]
    synthesis = source.synthesize
    assert synthesis is not None and (split == "train" or output), "holdout probes need their own output"
    origin = next(s for s in spec.data.sources if s.name == synthesis.from_)
    generator = synthesis.generator
    model_uri = (generator.model or spec.model.source) if generator.kind == GeneratorKind.model else None
    field = f"spec.data.sources[{index}].synthesize.generator.model"
    out = parse_uri(output or spec.synthesis_output(source)).as_prefix()
    if split == "holdout" and out == parse_uri(spec.synthesis_output(source)).as_prefix():
        raise SynthesisError(f"probes about holdout documents need another output than {out} (the training data)")
    files, _ = list_source_files(origin, storage)
    raw_key, key = _keys(spec, index, files, split, model_uri, storage)
    cached = verified_manifest(storage, out, key)
    if cached is not None:
        log.info("source '%s': synthesis cache hit %s (%d pairs)", source.name, out, cached.gates.kept)
        return SynthesisResult(source.name, str(out), cached, cache_hit=True, seconds=time.monotonic() - started)

    selection = select_documents(spec, origin, files, storage, split)
    raw_dir = out.join(f"_raw/{raw_key}/")
    raw = {unit.id: _load_raw(storage, raw_dir, raw_key, unit) for unit in selection.units}
    todo = [unit for unit in selection.units if raw[unit.id] is None]
    if todo:
        if progress:
            progress(f"synthesising source '{source.name}': {len(todo)} of {len(selection.units)} units to generate")
        # Cloze needs no model and writes thousands of pairs per second: starting Ray workers would cost more.
        if use_ray and generator.kind == GeneratorKind.model:
            job = {"rawKey": raw_key, "generator": generator.model_dump_json(), "model": model_uri, "field": field}
            _generate_ray(todo, job, storage, raw_dir, workers, writer_factory, progress)
        else:
            writer = writer_factory(generator, model_uri, storage, field)
            for n, unit in enumerate(todo, start=1):
                _generate_unit(writer, unit, raw_key, raw_dir, storage)
                if progress:
                    progress(f"generated {n}/{len(todo)} units")
    generated = time.monotonic() - started

    candidates: list[Candidate] = []
    for unit in selection.units:
        documents = raw[unit.id] if raw[unit.id] is not None else _load_raw(storage, raw_dir, raw_key, unit)
        if documents is None:
            raise SynthesisError(
                f"source '{source.name}': generated unit {raw_dir.join(unit.name)} cannot be read back"
            )
        for document in documents:
            for c in document["candidates"]:
                candidates.append(
                    Candidate(c["type"], c["question"], c["answer"], unit.file, document["line"], c["problem"])
                )
    outcome = apply_gates(candidates, selection.texts, synthesis.filters)
    if not outcome.kept:
        for gate, pairs in outcome.rejected.items():
            for pair in pairs[:2]:
                log.warning("rejected (%s: %s): %s | %s", gate, pair.problem, pair.question[:200], pair.answer[:200])
        counts = ", ".join(f"{gate} {n}" for gate, n in outcome.counts().items() if n)
        raise SynthesisError(
            f"source '{source.name}': the quality gates kept 0 of {len(candidates)} generated pairs ({counts}); "
            f"see the examples in the log, then loosen spec.data.sources[{index}].synthesize.filters or use a "
            "stronger generator model"
        )
    written = write_outputs(storage, out, outcome.kept, files, split)
    manifest = build_manifest(
        spec, index, split, (raw_key, key), model_uri, selection, outcome, candidates, files, written, generated
    )
    storage.write_text(out.join(MANIFEST), manifest.to_json())  # last: marks the synthesis complete
    log.info(
        "source '%s': %d documents -> %d candidates -> %d pairs kept (%s) in %.1fs",
        source.name,
        selection.used,
        len(candidates),
        len(outcome.kept),
        ", ".join(f"{g} -{n}" for g, n in outcome.counts().items() if n) or "nothing rejected",
        time.monotonic() - started,
    )
    return SynthesisResult(
        source.name,
        str(out),
        manifest,
        generated_units=len(todo),
        reused_units=len(selection.units) - len(todo),
        seconds=time.monotonic() - started,
    )


def synthesize(spec: CPTJobSpec, storage: Storage, **options: Any) -> tuple[CPTJobSpec, list[SynthesisResult]]:
    """Synthesise every source of `spec` that asks for it; returns the spec with those sources pointing
    at their files, and what was done."""
    spec = spec.resolved()
    results = [
        synthesize_source(spec, i, storage, **options)
        for i, source in enumerate(spec.data.sources)
        if source.synthesize is not None
    ]
    return with_synthesized(spec, results), results


def with_synthesized(spec: CPTJobSpec, results: list[SynthesisResult]) -> CPTJobSpec:
    """A copy of `spec` whose synthesised sources are plain chat sources of exactly the files their synthesis
    wrote (what `prepare` and the training workers see)."""
    spec = spec.model_copy(deep=True)
    by_name = {r.source: r for r in results}
    for source in spec.data.sources:
        if source.name in by_name:
            source.uris = by_name[source.name].uris
            source.synthesize = None
    return spec
