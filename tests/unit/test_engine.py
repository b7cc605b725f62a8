"""DeepSpeed config generation and batch geometry (pure)."""

from __future__ import annotations

import pytest
import torch
from cpt_trainer.train.engine import GeometryError, batch_geometry, deepspeed_config

from devkit.jobs import tiny_job


def test_geometry_derives_gradient_accumulation() -> None:
    spec = tiny_job(spec={"training": {"globalBatchTokens": 128 * 16, "microBatchSize": 2}}).spec
    assert batch_geometry(spec, world=1) == (16, 8)
    assert batch_geometry(spec, world=4) == (16, 2)
    with pytest.raises(GeometryError, match="does not divide over 3 training processes"):
        batch_geometry(spec, world=3)


def test_config_from_spec_with_overrides_merged_last() -> None:
    spec = tiny_job(
        spec={
            "training": {"globalBatchTokens": 1024, "microBatchSize": 4, "gradClip": 0.5, "weightDecay": 0.01},
            "deepspeed": {"zeroStage": 3, "config": {"zero_optimization": {"stage3_prefetch_bucket_size": 123}}},
        }
    ).spec
    config = deepspeed_config(spec, world=2, dtype=torch.bfloat16)
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.5 and config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["stage3_prefetch_bucket_size"] == 123  # override merged, siblings kept
    assert config["optimizer"]["params"]["weight_decay"] == 0.01
    assert config["optimizer"]["params"]["lr"] == spec.learning_rate
    assert config["optimizer"]["params"]["torch_adam"] is True  # no JIT-compiled op


def test_cpu_offload_uses_deepspeed_cpu_adam() -> None:
    spec = tiny_job(spec={"deepspeed": {"offloadOptimizer": "cpu"}}).spec
    config = deepspeed_config(spec, world=1, dtype=torch.float32)
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "torch_adam" not in config["optimizer"]["params"]


def test_gpu_configs_use_fused_adamw_and_skip_the_bf16_overflow_scan() -> None:
    spec = tiny_job().spec
    gpu = deepspeed_config(spec, world=1, dtype=torch.bfloat16, cuda=True)
    assert gpu["optimizer"]["params"]["fused"] is True
    assert gpu["bf16"] == {"enabled": True, "check_grad_overflow": False}
    cpu = deepspeed_config(spec, world=1, dtype=torch.float32, cuda=False)
    assert "fused" not in cpu["optimizer"]["params"] and "check_grad_overflow" not in cpu["bf16"]
    offloaded = tiny_job(spec={"deepspeed": {"offloadOptimizer": "cpu"}}).spec
    assert "fused" not in deepspeed_config(offloaded, world=1, dtype=torch.bfloat16, cuda=True)["optimizer"]["params"]


def test_a_checkpoint_stalls_only_for_the_snapshot_and_the_files_load_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The snapshot engine copies, returns, and serialises in the background; the files are torch.save's."""
    from cpt_trainer.checkpoint.snapshot import SnapshotCheckpointEngine

    engine = SnapshotCheckpointEngine()
    weights = torch.randn(64, 64)
    before = weights.clone()
    state = {"module": {"a": weights, "tied": weights}, "step": 3, "nested": [torch.arange(5)]}
    engine.save(state, str(tmp_path / "states.pt"))
    weights.add_(1.0)  # training goes on and changes the weights: the checkpoint keeps the old values
    engine.flush()
    loaded = torch.load(tmp_path / "states.pt", weights_only=False)
    assert torch.equal(loaded["module"]["a"], before) and loaded["step"] == 3
    assert loaded["module"]["tied"].data_ptr() == loaded["module"]["a"].data_ptr()  # still one tensor
    assert torch.equal(loaded["nested"][0], torch.arange(5))
    engine.save(state, str(tmp_path / "again.pt"))  # the host buffers are reused
    engine.flush()
    assert torch.equal(torch.load(tmp_path / "again.pt", weights_only=False)["module"]["a"], weights)
    engine.cleanup()
