"""Build CPTJob specs and synthetic corpora for tests and benchmarks."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.validation.validate import parse_job

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "examples" / "models" / "tiny-llama"


def tiny_job_doc(**overrides: Any) -> dict[str, Any]:
    """examples/local-tiny.yaml as a dict with absolute paths, deep-merged with `overrides`."""
    doc = yaml.safe_load((ROOT / "examples" / "local-tiny.yaml").read_text())
    spec = doc["spec"]
    spec["model"]["source"] = str(TINY_MODEL)
    for source in spec["data"]["sources"]:
        source["uris"] = [
            str((ROOT / "examples" / u).resolve()) + ("/" if u.endswith("/") else "") for u in source["uris"]
        ]
    merge(doc, overrides)
    return doc


def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def tiny_job(**overrides: Any) -> CPTJob:
    return parse_job(tiny_job_doc(**overrides))


def write_numbered_corpus(directory: Path, files: int, docs_per_file: int, prefix: str = "doc") -> list[str]:
    """JSON-lines files whose documents each carry a unique, decodable id like `doc-00042`."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = []
    n = 0
    for f in range(files):
        lines = []
        for _ in range(docs_per_file):
            doc_id = f"{prefix}-{n:05d}"
            ids.append(doc_id)
            body = " ".join(f"Article {n} sentence {k} of the maritime code." for k in range(1 + n % 5))
            lines.append(json.dumps({"text": f"{doc_id} {body}"}))
            n += 1
        (directory / f"part-{f:03d}.jsonl").write_text("\n".join(lines) + "\n")
    return ids
