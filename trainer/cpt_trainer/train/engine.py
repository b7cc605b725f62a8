"""The DeepSpeed engine: a config generated from the spec (raw overrides merged last) and its start-up.

On CPU the engine uses gloo (or oneCCL when installed) and never JIT-builds an op at run time:
the shared-memory comm op is switched off (it is an intra-node optimisation that costs a ~60 s
compile), and CPU-offloaded Adam is only used when asked for.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.contract.reasons import Reason


class GeometryError(ValueError):
    """The batch geometry does not divide over the workers."""

    reason = Reason.InvalidSpec


def batch_geometry(spec: CPTJobSpec, world: int) -> tuple[int, int]:
    """(rows per global batch, gradient accumulation steps) for `world` training processes."""
    rows = spec.training.global_batch_tokens // spec.data.sequence_length
    mbs = spec.training.micro_batch_size
    if rows % (world * mbs):
        raise GeometryError(
            f"training.globalBatchTokens / data.sequenceLength = {rows} rows per step does not divide over "
            f"{world} training processes x training.microBatchSize {mbs}; make it a multiple of {world * mbs} rows "
            f"(globalBatchTokens {world * mbs * spec.data.sequence_length * max(1, rows // (world * mbs))}) "
            "or change cluster.workers"
        )
    return rows, rows // (world * mbs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def deepspeed_config(spec: CPTJobSpec, world: int, dtype: torch.dtype, cuda: bool | None = None) -> dict[str, Any]:
    """The DeepSpeed config for this job (pure given `cuda`; unit-tested).

    On GPUs: torch's fused AdamW (one kernel for all parameters), and no per-parameter overflow scan
    in bf16 -- bf16 needs no loss scaling, and the step's NaN guard (step.py) already stops a run whose
    loss is not finite (a NaN weight update shows up as a NaN loss one step later, before any save)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    rows, accumulation = batch_geometry(spec, world)
    training = spec.training
    zero: dict[str, Any] = {
        "stage": spec.deepspeed.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
    }
    if spec.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    offload = spec.deepspeed.offload_optimizer == "cpu"
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    config: dict[str, Any] = {
        "train_batch_size": rows,
        "train_micro_batch_size_per_gpu": training.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": training.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16, **({"check_grad_overflow": False} if cuda else {})},
        "fp16": {"enabled": dtype == torch.float16, "initial_scale_power": 16},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": spec.learning_rate,
                "betas": [training.optimizer.beta1, training.optimizer.beta2],
                "eps": training.optimizer.eps,
                "weight_decay": training.weight_decay,
                # torch's AdamW unless offloading: no JIT-compiled fused op is needed.
                **({} if offload else {"torch_adam": True, "adam_w_mode": True}),
                **({"fused": True} if cuda and not offload else {}),
            },
        },
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    return _merge(config, spec.deepspeed.config)


def prepare_deepspeed_runtime() -> None:
    """Process-wide settings that must precede `deepspeed.initialize` (idempotent)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops

    # The shared-memory allreduce op would JIT-compile for ~60 s on first use; gloo is enough here.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def create_engine(model: Any, groups: list[dict[str, Any]], config: dict[str, Any]) -> Any:
    import deepspeed

    from cpt_trainer.checkpoint.snapshot import SnapshotCheckpointEngine

    prepare_deepspeed_runtime()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
    # Checkpoints stall the loop only for a copy to host memory; serialising happens in the background.
    engine.checkpoint_engine = SnapshotCheckpointEngine(engine._config)
    return engine
