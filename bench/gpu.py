"""GPU benchmark (not part of `make test`): tokens/s/GPU and MFU of our Trainer vs a bare loop.

A 1B-class random-init Llama in bf16 on one GPU: our `Trainer` (DeepSpeed ZeRO-2, loader,
LR schedule, progress; no Ray) against a bare PyTorch loop (AdamW, autocast bf16, same batches)
in the same run. MFU = 6 x parameters x tokens/s / peak bf16 FLOP/s of the GPU.

    python bench/gpu.py                      # on a GPU machine (needs torch, transformers, deepspeed)
    python bench/gpu.py --cpu-smoke          # a seconds-long run of the same code on CPU (CI guard)

Writes bench/results/gpu.json.
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}

ONE_B = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
SMOKE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 2048,
}


def peak_flops(override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)


def model_dir(work: Path, config: dict[str, Any], seq_len: int) -> Path:
    src = ROOT / "examples" / "models" / "tiny-llama"
    out = work / "model"
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    base = json.loads((src / "config.json").read_text())
    base.update(config, max_position_embeddings=max(seq_len, 4096))
    (out / "config.json").write_text(json.dumps(base))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if args.cpu_smoke:
        args.seq_len, args.micro_batch, args.accumulation, args.steps, args.warmup = 64, 2, 2, 3, 1
    elif not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a GPU (use --cpu-smoke to exercise the code on CPU)")

    from cpt_core.api.v1alpha1 import CPTJobSpec
    from cpt_core.storage import S3Settings, Storage
    from cpt_trainer.data import prepare
    from cpt_trainer.engine import init_distributed_single_process
    from cpt_trainer.hooks import StepTimes
    from cpt_trainer.trainer import RunContext, Trainer
    from devkit.jobs import tiny_job_doc

    config = SMOKE if args.cpu_smoke else ONE_B
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    init_distributed_single_process()
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    with tempfile.TemporaryDirectory(prefix="cpt-bench-gpu-") as tmp:
        work = Path(tmp)
        rows = args.micro_batch * args.accumulation
        doc = tiny_job_doc(
            spec={
                "model": {"source": str(model_dir(work, config, args.seq_len)), "dtype": dtype},
                "data": {
                    "sequenceLength": args.seq_len,
                    "cacheUri": str(work / "cache") + "/",
                    "validation": {"holdoutDocuments": 4},
                },
                "training": {
                    "steps": args.steps + args.warmup,
                    "globalBatchTokens": rows * args.seq_len,
                    "microBatchSize": args.micro_batch,
                    "learningRate": 3e-4,
                    "gradientCheckpointing": False,
                },
                "deepspeed": {"zeroStage": 2},
                "checkpoint": {"uri": str(work / "run") + "/", "intervalSteps": 10**6, "export": {"enabled": False}},
                "evaluation": {"intervalSteps": 10**6, "maxBatches": 1},
            }
        )
        spec = CPTJobSpec.model_validate(doc["spec"])
        prepared = prepare(spec.resolved(), Storage()).sources
        times = StepTimes(synchronize=device.type == "cuda")
        stamps = times.stamps
        trainer = Trainer(spec, prepared, S3Settings(), RunContext(job="bench-gpu"), hooks=[times])
        trainer.setup()
        batches = [
            trainer.data.loader.micro_batch(s, m)
            for s in range(args.steps + args.warmup)
            for m in range(trainer.accumulation)
        ]
        params = sum(p.numel() for p in trainer.engine.module.parameters())
        trainer.fit()
        ours_tokens_s = args.steps * rows * args.seq_len / (stamps[args.steps + args.warmup] - stamps[args.warmup])
        del trainer
        torch.cuda.empty_cache() if device.type == "cuda" else None

        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec.model.source)).to(device)
        optim = torch.optim.AdamW(
            model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
        )
        tensors = [
            {k: torch.from_numpy(getattr(b, k)).to(device) for k in ("input_ids", "labels", "position_ids")}
            for b in batches
        ]

        def bare_step(step: int) -> None:
            for micro in range(args.accumulation):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model(**tensors[step * args.accumulation + micro]).loss / args.accumulation
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)

        for step in range(args.warmup):
            bare_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(args.warmup, args.warmup + args.steps):
            bare_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare_tokens_s = args.steps * rows * args.seq_len / (time.perf_counter() - t0)

    peak = peak_flops(args.peak_tflops)
    results.update(
        {
            "params": params,
            "seq_len": args.seq_len,
            "tokens_per_step": rows * args.seq_len,
            "ours_tokens_per_s_per_gpu": ours_tokens_s,
            "bare_tokens_per_s_per_gpu": bare_tokens_s,
            "ratio": ours_tokens_s / bare_tokens_s,
            "ours_mfu": 6 * params * ours_tokens_s / peak if peak else None,
            "bare_mfu": 6 * params * bare_tokens_s / peak if peak else None,
        }
    )
    print(f"\n== GPU: {results['device']}, {params / 1e9:.2f} B params, seq {args.seq_len}, {rows} rows/step ==")
    print(
        f"ours (Trainer, DeepSpeed ZeRO-2, bf16): {ours_tokens_s:,.0f} tokens/s/GPU"
        + (f", MFU {results['ours_mfu']:.1%}" if peak else "")
    )
    print(
        f"bare PyTorch loop (AdamW, autocast bf16): {bare_tokens_s:,.0f} tokens/s/GPU"
        + (f", MFU {results['bare_mfu']:.1%}" if peak else "")
    )
    print(f"ratio ours/bare: {results['ratio']:.2f}")
    out = ROOT / "bench" / "results" / ("gpu-smoke.json" if args.cpu_smoke else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
