"""What a synthesis wrote: `<output>/_SYNTHESIS` (written last) and the raw generation units.

Neither is trusted on sight: the manifest must parse, name the expected key and list files whose
sizes and sha256 match; a raw unit must parse, name its key and unit, and match its checksum.
Anything else is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Bump when the raw unit layout, the writers' output or the output rows change.
SYNTHESIS_VERSION = 2


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class OutputFile(_Model):
    uri: str
    size: int = Field(ge=0)
    sha256: str
    pairs: int = Field(ge=0)


class Sample(_Model):
    """One example pair for the report."""

    type: str
    question: str
    answer: str
    document: str
    """`<file uri>:<line>` of the source document."""
    reason: str | None = None
    """Why it was rejected (rejected samples only)."""


class Gates(_Model):
    """Counts per quality gate."""

    candidates: int = 0
    """Pairs the writer produced."""
    kept: int = 0
    rejected: dict[str, int] = Field(default_factory=dict)
    """Rejections by gate: format, length, grounding, duplicate, near-duplicate, type-balance."""
    kept_by_type: dict[str, int] = Field(default_factory=dict)
    candidates_by_type: dict[str, int] = Field(default_factory=dict)


class SynthesisManifest(_Model):
    """`<output>/_SYNTHESIS`: its presence (with matching files) marks a complete synthesis."""

    version: int
    key: str
    """Content address of the output: raw key + quality filters."""
    raw_key: str
    """Content address of the generation: documents, holdout choice, generator settings, model identity."""
    source: str
    origin: str
    """The source whose documents were used."""
    split: str
    """`train` (training documents only) or `holdout` (held-out documents: paraphrased probes)."""
    generator: str
    model: str | None = None
    documents: int = Field(ge=0)
    """Documents questions were asked about."""
    excluded_documents: int = Field(ge=0)
    """Documents of the origin not used (the other split)."""
    units: int = Field(ge=0)
    files: list[OutputFile]
    gates: Gates
    samples_kept: list[Sample] = Field(default_factory=list)
    samples_rejected: list[Sample] = Field(default_factory=list)
    generation_seconds: float = 0.0
    created_at: str


def checksum(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def raw_unit(raw_key: str, unit: tuple[int, int], documents: list[dict[str, Any]], seconds: float) -> str:
    """A raw unit file: the writer's candidates per document, sealed with a checksum."""
    body = {"version": SYNTHESIS_VERSION, "rawKey": raw_key, "unit": list(unit), "documents": documents}
    return json.dumps({**body, "seconds": seconds, "checksum": checksum(body)}, ensure_ascii=False)


def parse_raw_unit(text: str, raw_key: str, unit: tuple[int, int], lines: list[int]) -> list[dict[str, Any]]:
    """The documents of a raw unit; ValueError when it is not the intact unit expected."""
    data = json.loads(text)
    body = {k: data.get(k) for k in ("version", "rawKey", "unit", "documents")}
    if data.get("checksum") != checksum(body):
        raise ValueError("checksum mismatch")
    if body["rawKey"] != raw_key or body["unit"] != list(unit) or body["version"] != SYNTHESIS_VERSION:
        raise ValueError("written for another key or unit")
    if [d["line"] for d in body["documents"]] != lines:
        raise ValueError("documents differ from the unit's")
    return list(body["documents"])
