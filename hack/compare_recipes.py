"""Run two or more CPTJobs from scratch with `cpt run` and print their results side by side.

    make compare        # examples/local-smollm2.yaml (plain CPT) vs examples/pit-smollm2.yaml (PIT)
    make compare-ki     # plain CPT vs examples/knowledge-instruct-smollm2.yaml (synthesised QA + replay)

Each job runs in a fresh run directory under runs/compare/, so earlier runs are not resumed. The
table compares the evaluation at step 0 and at the end: domain, general and chat holdout loss,
probe exact match and F1 (held-out questions), instruction-following retention. It is also written
to runs/compare/results.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "compare"


def run(job_file: Path) -> dict:
    doc = yaml.safe_load(job_file.read_text())
    name = doc["metadata"]["name"]
    run_dir = OUT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    doc["spec"]["checkpoint"]["uri"] = str(run_dir) + "/"
    absolute = lambda u: str((job_file.parent / u).resolve()) + ("/" if u.endswith("/") else "")  # noqa: E731
    for source in doc["spec"]["data"]["sources"]:
        if "uris" in source:
            source["uris"] = [absolute(u) for u in source["uris"]]
        if source.get("synthesize", {}).get("output"):
            source["synthesize"]["output"] = absolute(source["synthesize"]["output"])
    probes = doc["spec"].get("evaluation", {}).get("probes")
    if probes:
        doc["spec"]["evaluation"]["probes"] = str((job_file.parent / probes).resolve())
    copy = OUT / f"{name}.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(yaml.safe_dump(doc, sort_keys=False))
    began = time.monotonic()
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "cpt"), "run", str(copy)], text=True)
    progress = json.loads((run_dir / "_status" / "progress.json").read_text())
    progress["seconds"] = round(time.monotonic() - began)
    progress["exitCode"] = result.returncode
    return progress


def value(evaluation: dict | None, key: str) -> float | None:
    if not evaluation:
        return None
    if key in ("domainLoss", "generalLoss", "instructionLoss"):
        return evaluation.get(key)
    if key in ("exactMatch", "f1"):
        return (evaluation.get("probes") or {}).get(key)
    return (evaluation.get("instructionFollowing") or {}).get("promptAccuracy")


ROWS = [
    ("domain holdout loss", "domainLoss"),
    ("general holdout loss", "generalLoss"),
    ("chat holdout loss", "instructionLoss"),
    ("probe exact match", "exactMatch"),
    ("probe F1", "f1"),
    ("instruction following", "promptAccuracy"),
]


def main() -> None:
    files = [Path(f) for f in (sys.argv[1:] or ["examples/local-smollm2.yaml", "examples/pit-smollm2.yaml"])]
    results = {f.stem: run(f) for f in files}
    names = list(results)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    header = f"{'metric':<24}" + "".join(f"{n + ' before':>24}{n + ' after':>24}" for n in names)
    lines = [header, "-" * len(header)]
    for label, key in ROWS:
        cells = ""
        for n in names:
            ev = results[n].get("evaluation") or {}
            cells += f"{fmt(value(ev.get('baseline'), key)):>24}{fmt(value(ev.get('latest'), key)):>24}"
        lines.append(f"{label:<24}{cells}")
    for n in names:
        p, t = results[n], results[n]["progress"]
        lines.append(f"{n}: {p['state']} after {t['step']} steps, {t['tokens']:,} tokens, {p['seconds']} s")
    print("\n".join(lines))
    (OUT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
