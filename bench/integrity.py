"""What verification costs, next to the work it guards, measured in the same run.

1. a data cache hit: verified (listing + SHA-256 of every shard) against the unverified hit of
   before (reading manifest.json only), and against tokenizing the same data again;
2. checkpoint checksums: SHA-256 of a checkpoint directory (done in the upload thread) against
   writing the same bytes to storage (the upload it runs beside);
3. a huge single-line document: peak RSS of `prepare` over its baseline, as a multiple of the
   document's size (target <= 10x).

    python bench/integrity.py [--mb 200] [--doc-mb 20]

Writes bench/results/integrity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from cpt_core.storage import Storage, parse_uri
from cpt_core.storage.digest import digest_dir
from cpt_trainer.data import Manifest, prepare
from cpt_trainer.data.cache import cached_manifest
from cpt_trainer.model.source import load_tokenizer

from devkit.huge_document import WORDS, measure
from devkit.jobs import TINY_MODEL, tiny_job


def corpus(directory: Path, megabytes: int) -> None:
    directory.mkdir(parents=True)
    random.seed(0)
    per_file = 8 * 1024 * 1024
    for index in range(max(1, megabytes * 1024 * 1024 // per_file)):
        lines, size = [], 0
        while size < per_file:
            text = " ".join(random.choice(WORDS) for _ in range(200))
            lines.append(json.dumps({"text": text}))
            size += len(lines[-1]) + 1
        (directory / f"part-{index:03d}.jsonl").write_text("\n".join(lines) + "\n")


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def cache_hit(work: Path, megabytes: int) -> dict[str, float]:
    corpus(work / "corpus", megabytes)
    spec = tiny_job(
        spec={
            "data": {
                "sequenceLength": 1024,
                "sources": [{"name": "c", "role": "domain", "uris": [str(work / "corpus") + "/"], "weight": 1}],
                "validation": {"holdoutDocuments": 10},
                "cacheUri": str(work / "cache") + "/",
            },
            "training": {"globalBatchTokens": 4096},
        }
    ).spec
    storage, tokenizer = Storage(), load_tokenizer(str(TINY_MODEL))
    began = time.perf_counter()
    source = prepare(spec, storage, tokenizer=tokenizer).sources[0]
    tokenize_seconds = time.perf_counter() - began
    base = parse_uri(source.uri).as_prefix()
    shard_bytes = sum((source.manifest.checksums or {})[n].size for n in source.manifest.checksums or {})
    unverified = timed(lambda: Manifest.model_validate_json(storage.read_text(base.join("manifest.json"))))
    verified = timed(lambda: cached_manifest(storage, base, source.manifest.key))
    return {
        "shardMB": shard_bytes / 1e6,
        "tokenizeSeconds": tokenize_seconds,
        "unverifiedHitSeconds": unverified,
        "verifiedHitSeconds": verified,
        "verifyMBps": shard_bytes / 1e6 / verified,
        "verifiedHitShareOfTokenizing": verified / tokenize_seconds,
    }


def checkpoint_hash(work: Path, megabytes: int) -> dict[str, float]:
    local = work / "ckpt"
    (local / "ckpt").mkdir(parents=True)
    for rank in range(2):
        (local / "ckpt" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(
            os.urandom(megabytes * 1024 * 1024 // 2)
        )
    storage = Storage()
    target = work / "uploaded"
    hash_seconds = timed(lambda: digest_dir(local))
    upload_seconds = timed(lambda: (shutil.rmtree(target, ignore_errors=True), storage.upload_dir(local, str(target))))
    return {
        "checkpointMB": megabytes * 1.048576,
        "sha256Seconds": hash_seconds,
        "localUploadSeconds": upload_seconds,
        "sha256MBps": megabytes * 1.048576 / hash_seconds,
        "hashOverUpload": hash_seconds / upload_seconds,
    }


def huge_document(work: Path, megabytes: int) -> dict[str, float]:
    figures = measure(work, megabytes * 1024 * 1024)
    growth = figures["peakRss"] - figures["baselineRss"]
    return {
        "documentMB": figures["documentBytes"] / 1e6,
        "baselineRssMB": figures["baselineRss"] / 1e6,
        "peakRssMB": figures["peakRss"] / 1e6,
        "growthOverDocument": growth / figures["documentBytes"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="corpus / checkpoint size in MB")
    parser.add_argument("--doc-mb", type=int, default=20, help="size of the single-line document")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpt-bench-integrity-"))
    try:
        results = {
            "cacheHit": cache_hit(work / "cache", args.mb),
            "checkpointChecksums": checkpoint_hash(work / "ckpt", args.mb),
            "hugeDocument": huge_document(work / "doc", args.doc_mb),
            "maxRssMB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for section, figures in results.items():
        print(section, json.dumps(figures, indent=1) if isinstance(figures, dict) else figures)
    out = ROOT / "bench" / "results" / "integrity.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
