"""Trainer benchmark: every figure next to a baseline measured in the same run.

1. step time of our `Trainer` (DeepSpeed engine, data loader, LR schedule, progress; one
   process) vs a bare PyTorch AdamW loop on the same model and the same batches
   (target >= 0.9 of the bare loop's steps/s) -- for the tiny test model and a small one;
2. Ray Train: start-up (Ray Train controller, worker group, DeepSpeed init, teardown) and the
   per-step overhead of running the same Trainer under Ray Train with 2 workers;
3. checkpoint: save + upload MB/s to a real S3 server (SeaweedFS) vs a raw parallel boto3
   upload of the same files to the same server (target >= 0.8), and the training stall.

    python bench/trainer.py [--skip-ray]

Writes bench/results/trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for key, value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}.items():
    os.environ.setdefault(key, value)

import torch

from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.data import prepare
from cpt_trainer.distributed import init_distributed_single_process
from cpt_trainer.train.hooks import StepTimes
from cpt_trainer.train.state import RNGState
from cpt_trainer.distributed import RunContext
from cpt_trainer.train.trainer import Trainer
from devkit.jobs import tiny_job_doc
from devkit.seaweed import SeaweedS3

SIZES = {
    # name: (hidden, intermediate, layers, heads, seq_len, micro_batch)
    "tiny": (64, 128, 2, 4, 128, 4),
    "small": (384, 1024, 6, 6, 256, 4),
}


def model_dir(work: Path, size: str) -> Path:
    """A config-only model directory (random init) of the given size, with the tiny tokenizer."""
    hidden, inter, layers, heads, _, _ = SIZES[size]
    src = ROOT / "examples" / "models" / "tiny-llama"
    out = work / f"model-{size}"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    config = json.loads((src / "config.json").read_text())
    config.update(
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
    )
    (out / "config.json").write_text(json.dumps(config))
    return out


def spec_for(work: Path, size: str, steps: int, run: str, **extra: Any) -> CPTJobSpec:
    _, _, _, _, seq, mbs = SIZES[size]
    doc = tiny_job_doc(
        spec={
            "model": {"source": str(model_dir(work, size))},
            "data": {"sequenceLength": seq, "cacheUri": str(work / "cache") + "/"},
            "training": {
                "steps": steps,
                "globalBatchTokens": seq * mbs * 2,
                "microBatchSize": mbs,
                "gradientCheckpointing": False,
            },
            "checkpoint": {"uri": run, "intervalSteps": 10**6, "export": {"enabled": False}},
            "evaluation": {"intervalSteps": 10**6, "maxBatches": 1},
            **extra,
        }
    )
    return CPTJobSpec.model_validate(doc["spec"])


def bench_step_time(work: Path, size: str, steps: int = 40, warmup: int = 5) -> dict[str, Any]:
    spec = spec_for(work, size, steps + warmup, str(work / f"run-step-{size}") + "/")
    prepared = prepare(spec.resolved(), Storage()).sources
    times = StepTimes()
    stamps = times.stamps
    batches: list[Any] = []
    trainer = Trainer(spec, prepared, S3Settings(), RunContext(job=f"bench-{size}"), hooks=[times])
    trainer.setup()
    # The same batches for the bare loop.
    for step in range(steps + warmup):
        for micro in range(trainer.accumulation):
            batches.append(trainer.data.loader.micro_batch(step, micro))
    trainer.fit()
    ours = (steps) / (stamps[steps + warmup] - stamps[warmup])

    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(spec.training.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec.model.source))
    optim = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
    tensors = [{k: torch.from_numpy(getattr(b, k)) for k in ("input_ids", "labels", "position_ids")} for b in batches]
    accumulation = trainer.accumulation

    def bare_step(step: int) -> None:
        for micro in range(accumulation):
            loss = model(**tensors[step * accumulation + micro]).loss / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)

    for step in range(warmup):
        bare_step(step)
    t0 = time.perf_counter()
    for step in range(warmup, warmup + steps):
        bare_step(step)
    bare = steps / (time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "ours_steps_per_s": ours,
        "bare_steps_per_s": bare,
        "ratio": ours / bare,
        "micro_batches_per_step": accumulation,
    }


def bench_ray(work: Path) -> dict[str, Any]:
    from cpt_core.validation.validate import parse_job
    from cpt_trainer.launch.driver import LaunchOptions, run_job
    from cpt_trainer.launch.local_ray import local_ray

    steps = 40
    doc = tiny_job_doc(
        metadata={"name": "bench-ray"},
        spec={
            "data": {"cacheUri": str(work / "cache") + "/"},
            "training": {"steps": steps, "globalBatchTokens": 1024, "microBatchSize": 4},
            "checkpoint": {"uri": str(work / "run-ray") + "/", "intervalSteps": 10**6, "export": {"enabled": False}},
            "evaluation": {"intervalSteps": 10**6, "maxBatches": 1},
        },
    )
    job = parse_job(doc)
    prepare(job.spec.resolved(), Storage())  # warm the data cache: measure training, not tokenization
    with local_ray(num_cpus=2):
        t0 = time.perf_counter()
        run_job(
            job,
            LaunchOptions(2, False, {"CPU": 0.75}, 0, cpu_threads=1),
            attempt=1,
            storage_path=str(work / "ray-results"),
        )
        total = time.perf_counter() - t0
    metrics = [json.loads(line) for line in (work / "run-ray" / "report" / "metrics.jsonl").read_text().splitlines()]
    step_seconds = [1024 / m["tokensPerSecond"] for m in metrics if m["kind"] == "train"][5:]
    ray_step = statistics.median(step_seconds)

    # The same 2-rank job without Ray is not possible in one process; compare against the one-process
    # Trainer on the same per-rank work (2 micro-batches of 4 rows per rank per step).
    spec = CPTJobSpec.model_validate(
        {
            **doc["spec"],
            "training": {**doc["spec"]["training"], "globalBatchTokens": 512},
            "checkpoint": {**doc["spec"]["checkpoint"], "uri": str(work / "run-noray") + "/"},
        }
    )
    times = StepTimes()
    stamps = times.stamps
    trainer = Trainer(
        spec, prepare(spec.resolved(), Storage()).sources, S3Settings(), RunContext(job="bench-noray"), hooks=[times]
    )
    trainer.setup()
    trainer.fit()
    local_step = (stamps[steps] - stamps[5]) / (steps - 5)
    return {
        "steps": steps,
        "total_seconds": total,
        "startup_and_teardown_seconds": total - steps * ray_step,
        "ray_step_seconds": ray_step,
        "one_process_step_seconds_same_per_rank_work": local_step,
        "per_step_overhead_seconds": ray_step - local_step,
    }


def bench_checkpoint(work: Path) -> dict[str, Any]:
    from cpt_trainer.checkpoint.store import CheckpointStore

    with SeaweedS3(work / "s3") as s3:
        settings = S3Settings(endpoint=s3.endpoint, access_key_id=s3.access_key, secret_access_key=s3.secret_key)
        spec = spec_for(work, "small", 2, f"s3://{s3.bucket}/bench/")
        prepared = prepare(spec.resolved(), Storage()).sources
        os.environ.update(s3.env())
        trainer = Trainer(spec, prepared, settings, RunContext(job="bench-ckpt"))
        trainer.setup()
        trainer.fit()
        store = CheckpointStore(Storage(settings), spec.checkpoint.uri)
        results = []
        for i in range(3):
            t0 = time.perf_counter()
            pending = store.save(trainer.engine, 100 + i, {"rng": RNGState().state_dict()})
            stall = time.perf_counter() - t0
            local_files = [p for p in pending.local_dir.rglob("*") if p.is_file()]
            pending.thread.join()
            upload_seconds = pending.seconds
            size = pending.bytes

            # Baseline: the same files, raw boto3, 16 parallel uploads, same server.
            client = s3.client()
            t1 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                keys = [f"raw/{i}/{p.name}" for p in local_files]
                list(pool.map(client.upload_file, [str(p) for p in local_files], [s3.bucket] * len(keys), keys))
            raw_seconds = time.perf_counter() - t1
            store.finish_upload()
            results.append({"mb": size / 1e6, "stall_s": stall, "upload_s": upload_seconds, "raw_s": raw_seconds})
    mb = statistics.median(r["mb"] for r in results)
    stall = statistics.median(r["stall_s"] for r in results)
    upload = statistics.median(r["upload_s"] for r in results)
    raw = statistics.median(r["raw_s"] for r in results)
    return {
        "checkpoint_mb": mb,
        "training_stall_s": stall,
        "ours_upload_mb_per_s": mb / upload,
        "ours_save_plus_upload_mb_per_s": mb / (stall + upload),
        "raw_boto3_mb_per_s": mb / raw,
        "upload_ratio": raw / upload,
        "save_plus_upload_ratio": raw / (stall + upload),
        "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    init_distributed_single_process()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="cpt-bench-trainer-") as tmp:
        work = Path(tmp)
        results["step_time"] = {size: bench_step_time(work, size) for size in ("tiny", "small")}
        results["checkpoint"] = bench_checkpoint(work)
        if not args.skip_ray:
            results["ray_train"] = bench_ray(work)

    print("\n== step time: our Trainer (DeepSpeed ZeRO-2, one process) vs bare PyTorch AdamW loop ==")
    for size, r in results["step_time"].items():
        print(
            f"{size:6s} ({r['params'] / 1e6:.1f} M params): ours {r['ours_steps_per_s']:.2f} steps/s, bare {r['bare_steps_per_s']:.2f} steps/s, ratio {r['ratio']:.2f} (target >= 0.9)"
        )
    c = results["checkpoint"]
    print("\n== checkpoint to S3 (SeaweedFS) ==")
    print(
        f"{c['checkpoint_mb']:.0f} MB: training stall {c['training_stall_s']:.2f} s (local save; upload runs in the background)"
    )
    print(
        f"upload {c['ours_upload_mb_per_s']:.0f} MB/s vs raw parallel boto3 {c['raw_boto3_mb_per_s']:.0f} MB/s: ratio {c['upload_ratio']:.2f} (target >= 0.8)"
    )
    print(f"save + upload {c['ours_save_plus_upload_mb_per_s']:.0f} MB/s: ratio {c['save_plus_upload_ratio']:.2f}")
    if "ray_train" in results:
        r = results["ray_train"]
        print("\n== Ray Train (2 CPU workers, tiny model) ==")
        print(
            f"start-up + teardown {r['startup_and_teardown_seconds']:.1f} s; step {r['ray_step_seconds'] * 1e3:.1f} ms vs one process with the same per-rank work {r['one_process_step_seconds_same_per_rank_work'] * 1e3:.1f} ms: overhead {r['per_step_overhead_seconds'] * 1e3:+.1f} ms/step"
        )
    out = ROOT / "bench" / "results" / "trainer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
