"""Peak memory of preparing one huge single-line document, in a fresh process (tests and bench).

    python -m devkit.huge_document WORK_DIR SIZE_BYTES   -> one JSON line on stdout

The baseline is the process's RSS after importing everything and preparing a small corpus (so
one-time allocations of the libraries are not counted); the peak is the high-water mark of its
resident memory (`VmHWM`; not `ru_maxrss`, which Linux carries over from the forking parent) after
preparing a source whose one file holds a document of SIZE_BYTES on one line.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

WORDS = ["harbour", "pilotage", "fee", "the", "board", "collects", "within", "days", "vessel", "tonnage", "of"]


def measure(work: Path, size: int) -> dict[str, Any]:
    """Run the measurement in a fresh interpreter; returns documentBytes, baselineRss, peakRss, rows."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "devkit.huge_document", str(work), str(size)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "true"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _high_water_mark() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main(work: Path, size: int) -> None:
    from cpt_core.storage import Storage
    from cpt_trainer.data import prepare
    from cpt_trainer.model.source import load_tokenizer

    from devkit.jobs import TINY_MODEL, tiny_job

    random.seed(0)
    text = " ".join(random.choice(WORDS) for _ in range(size // 6))

    def job(corpus: Path) -> Any:
        data = {
            "sequenceLength": 64,
            "validation": {"holdoutDocuments": 1},
            "sources": [{"name": "h", "role": "domain", "uris": [str(corpus) + "/"], "weight": 1}],
            "cacheUri": str(work / "cache") + "/",
        }
        return tiny_job(spec={"data": data, "training": {"globalBatchTokens": 256}}).spec

    for name, body in (("small", [f"warm-up document {i} " * 20 for i in range(50)]), ("huge", [text] + ["tail"] * 4)):
        (work / name).mkdir(parents=True)
        (work / name / "part.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in body))
    document = len(text.encode())
    del text
    tokenizer = load_tokenizer(str(TINY_MODEL))
    prepare(job(work / "small"), Storage(), tokenizer=tokenizer)
    baseline = _rss()
    rows = prepare(job(work / "huge"), Storage(), tokenizer=tokenizer).sources[0].manifest.train.rows
    peak = _high_water_mark()
    print(json.dumps({"documentBytes": document, "baselineRss": baseline, "peakRss": peak, "rows": rows}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
