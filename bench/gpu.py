"""GPU benchmark (not part of `make test`): what the Trainer adds to a fast loop, and what checkpoints
and evaluations cost.

A 1B-class random-init Llama in bf16 on one GPU, per sequence length (2048 and 4096 by default):
our `Trainer` (DeepSpeed ZeRO-2, loader, LR schedule, progress, evaluation, checkpoints; no Ray)
against a bare PyTorch loop (fused AdamW, autocast bf16, the same model kernels and batches) in the
same run. From the Trainer's per-step wall times (GPU synchronised at each step end):

- steady step: the median over steps with neither evaluation nor checkpoint -> tokens/s/GPU, MFU;
- checkpoint stall: a checkpoint step's time minus the steady step (the loop is blocked this long);
- evaluation cost: an evaluation step's time minus the steady step, and its share of the step time
  at the default interval (evaluation.intervalSteps 50);
- start-up: model build + engine init + resume check (`setup()`), and peak GPU memory.

MFU counts FLOPs per token as 6 x parameters + 12 x layers x hidden x sequence (the attention
matmuls, PaLM's formula; causal masking not discounted); the 6N-only figure is printed too.

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


def flops_per_token(params: int, config: dict[str, Any], seq_len: int) -> tuple[float, float]:
    """(6N, 6N + attention) FLOPs per trained token."""
    attention = 12 * config["num_hidden_layers"] * config["hidden_size"] * seq_len
    return 6.0 * params, 6.0 * params + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--tokens-per-step", type=int, default=16384, help="rows x seq_len per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per forward at seq 2048 (halved at 4096)")
    parser.add_argument("--steps", type=int, default=20, help="measured steps (after the warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args()
    if args.cpu_smoke:
        args.seq_lens, args.tokens_per_step, args.micro_batch, args.steps, args.warmup = [64], 256, 2, 14, 1
    elif not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a GPU (use --cpu-smoke to exercise the code on CPU)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "mfu_flops": "6 x params + 12 x layers x hidden x seq per token (attention counted, causal not discounted)",
        "runs": [],
    }
    for seq_len in args.seq_lens:
        results["runs"].append(run(args, seq_len, device))
    out = ROOT / "bench" / "results" / ("gpu-smoke.json" if args.cpu_smoke else "gpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def run(args: Any, seq_len: int, device: torch.device) -> dict[str, Any]:
    import statistics

    from cpt_core.api.v1alpha1 import CPTJobSpec
    from cpt_core.storage import S3Settings, Storage
    from cpt_trainer.data import prepare
    from cpt_trainer.distributed import init_distributed_single_process
    from cpt_trainer.train.hooks import StepTimes
    from cpt_trainer.distributed import RunContext
    from cpt_trainer.train.trainer import Trainer
    from devkit.jobs import tiny_job_doc

    config = SMOKE if args.cpu_smoke else ONE_B
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    init_distributed_single_process()
    rows = max(1, args.tokens_per_step // seq_len)
    micro = max(1, min(rows, args.micro_batch * 2048 // max(seq_len, 2048)))
    accumulation = rows // micro
    total = args.warmup + args.steps
    # Evaluations and checkpoints on distinct steps inside the measured window (and both at the end).
    eval_every = max(2, args.steps // 3)
    ckpt_every = eval_every + 1  # coprime: the two meet only past the measured window (and at the end)
    with tempfile.TemporaryDirectory(prefix="cpt-bench-gpu-") as tmp:
        work = Path(tmp)
        doc = tiny_job_doc(
            spec={
                "model": {"source": str(model_dir(work, config, seq_len)), "dtype": dtype},
                "data": {
                    "sequenceLength": seq_len,
                    "cacheUri": str(work / "cache") + "/",
                    "validation": {"holdoutDocuments": 4},
                },
                "training": {
                    "steps": total,
                    "globalBatchTokens": rows * seq_len,
                    "microBatchSize": micro,
                    "learningRate": 3e-4,
                    "gradientCheckpointing": False,
                },
                "deepspeed": {"zeroStage": 2},
                "checkpoint": {
                    "uri": str(work / "run") + "/",
                    "intervalSteps": ckpt_every,
                    "export": {"enabled": False},
                },
                "evaluation": {"intervalSteps": eval_every, "maxBatches": 1},
                "tracking": {"tensorboard": False},
            }
        )
        spec = CPTJobSpec.model_validate(doc["spec"])
        prepared = prepare(spec.resolved(), Storage()).sources
        times = StepTimes(synchronize=device.type == "cuda")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        trainer = Trainer(spec, prepared, S3Settings(), RunContext(job="bench-gpu"), hooks=[times])
        trainer.setup()
        startup = time.perf_counter() - began
        batches = [trainer.data.loader.micro_batch(s, m) for s in range(total) for m in range(trainer.accumulation)]
        params = sum(p.numel() for p in trainer.engine.module.parameters())
        fit_began = time.perf_counter()
        trainer.fit()
        fit_seconds = time.perf_counter() - fit_began
        peak_memory = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        stamps = times.stamps
        seconds = {s: stamps[s] - stamps[s - 1] for s in range(args.warmup + 1, total + 1)}
        evals = {s for s in seconds if s % eval_every == 0 or s == total}
        ckpts = {s for s in seconds if s % ckpt_every == 0 or s == total}
        steady = statistics.median(v for s, v in seconds.items() if s not in evals | ckpts)
        ckpt_stall = statistics.median(seconds[s] - steady for s in ckpts - evals) if ckpts - evals else None
        eval_cost = statistics.median(seconds[s] - steady for s in evals - ckpts) if evals - ckpts else None
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bare_steady = bare_loop(spec, batches, accumulation, args, device)

    tokens = rows * seq_len
    ours, bare = tokens / steady, tokens / bare_steady
    peak = peak_flops(args.peak_tflops)
    flops_6n, flops_attn = flops_per_token(params, config, seq_len)
    result = {
        "seq_len": seq_len,
        "params": params,
        "rows_per_step": rows,
        "micro_batch": micro,
        "steady_step_s": steady,
        "bare_steady_step_s": bare_steady,
        "ours_tokens_per_s_per_gpu": ours,
        "bare_tokens_per_s_per_gpu": bare,
        "ratio": ours / bare,
        "ours_mfu": flops_attn * ours / peak if peak else None,
        "bare_mfu": flops_attn * bare / peak if peak else None,
        "ours_mfu_6n": flops_6n * ours / peak if peak else None,
        "checkpoint_stall_s": ckpt_stall,
        "evaluation_s": eval_cost,
        "evaluation_share_at_interval_50": eval_cost / (50 * steady) if eval_cost is not None else None,
        "startup_s": startup,
        "fit_s": fit_seconds,
        "peak_gpu_memory_gb": peak_memory / 1e9 if peak_memory else None,
    }
    mfu = lambda v: f", MFU {v:.1%}" if v is not None else ""  # noqa: E731
    print(
        f"\n== {'GPU' if device.type == 'cuda' else 'CPU smoke'}: {params / 1e9:.2f} B params, seq {seq_len}, {rows} rows/step =="
    )
    print(
        f"ours (Trainer, DeepSpeed ZeRO-2): steady step {steady:.3f} s, {ours:,.0f} tokens/s/GPU{mfu(result['ours_mfu'])}"
    )
    print(
        f"bare loop (same kernels, fused AdamW): {bare_steady:.3f} s, {bare:,.0f} tokens/s/GPU{mfu(result['bare_mfu'])}"
    )
    print(f"ratio ours/bare: {result['ratio']:.3f}")
    if ckpt_stall is not None:
        print(f"checkpoint stall: {ckpt_stall:.3f} s")
    if eval_cost is not None:
        print(
            f"evaluation: {eval_cost:.3f} s = {result['evaluation_share_at_interval_50']:.2%} of step time at interval 50"
        )
    print(
        f"start-up (setup): {startup:.1f} s"
        + (f", peak GPU memory {result['peak_gpu_memory_gb']:.1f} GB" if peak_memory else "")
    )
    return result


def bare_loop(spec: Any, batches: list[Any], accumulation: int, args: Any, device: torch.device) -> float:
    """The median steady step of a bare PyTorch loop on the same model and batches."""
    import statistics

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
    durations = []
    for step in range(len(tensors) // accumulation):
        began = time.perf_counter()
        for micro in range(accumulation):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**tensors[step * accumulation + micro]).loss / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        durations.append(time.perf_counter() - began)
    return statistics.median(durations[args.warmup :])


if __name__ == "__main__":
    main()
