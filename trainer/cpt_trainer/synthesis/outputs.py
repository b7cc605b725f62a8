"""What a synthesis leaves behind, and the check before it is trusted.

What a synthesis leaves behind: the chat files (one per input file, or `probes.jsonl` for holdout
probes), stale parts removed, and the manifest with the gate counts and samples; and the check that
a manifest found at the output is complete and intact before it is trusted.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter

from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import Location, NotFound, ObjectInfo, Storage
from cpt_core.storage.digest import sha256_bytes

from cpt_trainer.synthesis.manifest import SYNTHESIS_VERSION, Gates, OutputFile, Sample, SynthesisManifest
from cpt_trainer.synthesis.quality import Candidate, Outcome
from cpt_trainer.synthesis.selection import Selection

log = logging.getLogger(__name__)

MANIFEST = "_SYNTHESIS"
_PART = re.compile(r"^(part-\d{5}|probes)\.jsonl$")
SAMPLES = 6


def _sample(pair: Candidate, files: list[ObjectInfo], reason: str | None = None) -> Sample:
    return Sample(
        type=pair.type,
        question=pair.question[:500],
        answer=pair.answer[:500],
        document=f"{files[pair.file].uri}:{pair.line}",
        reason=reason,
    )


def _row(pair: Candidate, files: list[ObjectInfo]) -> str:
    return json.dumps(
        {
            "messages": [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}],
            "question": pair.question,
            "answer": pair.answer,
            "type": pair.type,
            "document": f"{files[pair.file].uri}:{pair.line}",
        },
        ensure_ascii=False,
    )


def write_outputs(
    storage: Storage, out: Location, kept: list[Candidate], files: list[ObjectInfo], split: str
) -> list[OutputFile]:
    groups: dict[str, list[Candidate]] = {}
    for pair in kept:
        groups.setdefault("probes.jsonl" if split == "holdout" else f"part-{pair.file:05d}.jsonl", []).append(pair)
    written = []
    for name in sorted(groups):
        data = "".join(_row(p, files) + "\n" for p in groups[name]).encode()
        location = out.join(name)
        storage.write_bytes(location, data)
        written.append(
            OutputFile(uri=str(location), size=len(data), sha256=sha256_bytes(data), pairs=len(groups[name]))
        )
    names = {out.join(name).key for name in groups}
    for obj in storage.list_objects(out):
        rest = obj.location.key[len(out.key) :]
        if _PART.match(rest) and obj.location.key not in names:
            storage.delete(obj.location)  # a part of an earlier synthesis that has no pairs now
    return written


def verified_manifest(storage: Storage, out: Location, key: str) -> SynthesisManifest | None:
    """The manifest of a complete, intact synthesis with this key, or None (then it is rebuilt)."""
    location = out.join(MANIFEST)
    try:
        manifest = SynthesisManifest.model_validate_json(storage.read_text(location))
    except NotFound:
        return None
    except ValueError as exc:
        log.warning("damaged synthesis manifest %s (%s): rebuilding", location, str(exc).splitlines()[0])
        return None
    if manifest.key != key:
        log.info("synthesis at %s is stale (inputs, generator or filters changed): rebuilding", out)
        return None
    sizes = {o.uri: o.size for o in storage.list_objects(out)}
    for f in manifest.files:
        problem = None
        if sizes.get(f.uri) != f.size:
            problem = "missing" if f.uri not in sizes else f"{sizes[f.uri]} bytes, expected {f.size}"
        elif sha256_bytes(storage.read_bytes(f.uri)) != f.sha256:
            problem = "checksum mismatch"
        if problem:
            log.warning("synthesis output %s is damaged (%s): rebuilding", f.uri, problem)
            return None
    return manifest


def build_manifest(spec: CPTJobSpec, index: int, split: str, keys: tuple[str, str], model_uri: str | None,
              selection: Selection, outcome: Outcome, candidates: list[Candidate], files: list[ObjectInfo],
              written: list[OutputFile], seconds: float) -> SynthesisManifest:  # fmt: skip
    source = spec.data.sources[index]
    assert source.synthesize is not None
    kept = outcome.kept
    step = max(1, len(kept) // SAMPLES)
    rejected = [
        _sample(pair, files, f"{gate}: {pair.problem}")
        for gate, pairs in outcome.rejected.items()
        for pair in pairs[:2]
    ]
    return SynthesisManifest(
        version=SYNTHESIS_VERSION,
        key=keys[1],
        raw_key=keys[0],
        source=source.name,
        origin=source.synthesize.from_,
        split=split,
        generator=source.synthesize.generator.kind.value,
        model=model_uri,
        documents=selection.used,
        excluded_documents=selection.excluded,
        units=len(selection.units),
        files=written,
        gates=Gates(
            candidates=len(candidates),
            kept=len(kept),
            rejected=outcome.counts(),
            kept_by_type=dict(Counter(p.type for p in kept)),
            candidates_by_type=dict(Counter(p.type for p in candidates)),
        ),
        samples_kept=[_sample(p, files) for p in kept[::step][:SAMPLES]],
        samples_rejected=rejected,
        generation_seconds=round(seconds, 3),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
