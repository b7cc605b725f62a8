"""Build the model to train from `spec.model`.

"Init from" and "resume" are separate paths: `build_model(..., load_weights=True)` loads the
starting weights from `model.source` (a fresh run); `load_weights=False` builds the same
architecture without reading any weights, because a resumed run takes every weight from its
checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from cpt_core.api.v1alpha1 import ModelSpec, TrainingSpec
from cpt_core.storage import Storage

from cpt_trainer.model.source import ModelSourceError, ResolvedSource, resolve

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def training_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """The requested dtype where the hardware supports it; float32 on CPUs."""
    if device.type == "cpu":
        if spec.dtype != "float32":
            log.info("training in float32 on CPU (spec.model.dtype %s needs a GPU)", spec.dtype)
        return torch.float32
    if spec.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bfloat16 support; training in float16")
        return torch.float16
    return DTYPES[spec.dtype]


def load_config(spec: ModelSpec, source: ResolvedSource, max_length: int) -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.directory, **source.kwargs())
    except Exception as exc:
        raise ModelSourceError(f"spec.model.source: cannot read a model config from {source.identity}: {exc}") from None
    if spec.rope_scaling is not None:
        rope = spec.rope_scaling
        original = rope.original_max_position_embeddings or config.max_position_embeddings
        params = dict(getattr(config, "rope_parameters", None) or {})
        params.update(
            {"rope_type": rope.type.value, "factor": rope.factor, "original_max_position_embeddings": original}
        )
        config.rope_parameters = params
        config.max_position_embeddings = int(original * rope.factor)
    if max_length > getattr(config, "max_position_embeddings", max_length):
        raise ModelSourceError(
            f"data.sequenceLength {max_length} exceeds the model's max_position_embeddings "
            f"{config.max_position_embeddings}; lower it or set spec.model.ropeScaling"
        )
    config.use_cache = False
    return config


def build_model(
    spec: ModelSpec,
    training: TrainingSpec,
    storage: Storage,
    dtype: torch.dtype,
    max_length: int,
    load_weights: bool,
    seed: int,
) -> tuple[Any, ResolvedSource]:
    """The causal LM to train (with LoRA adapters and activation checkpointing when configured)."""
    from transformers import AutoModelForCausalLM

    source = resolve(spec.source, storage)
    config = load_config(spec, source, max_length)
    torch.manual_seed(seed)
    try:
        if spec.init == "random" or not load_weights:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                source.directory, config=config, dtype=dtype, **source.kwargs()
            )
    except ModelSourceError:
        raise
    except Exception as exc:
        raise ModelSourceError(f"spec.model.source: cannot load the model from {source.identity}: {exc}") from None
    if source.gguf_file and getattr(model, "hf_quantizer", None) is not None:
        # transformers dequantizes GGUF weights into plain tensors but keeps its GGUF quantizer, which
        # refuses save_pretrained; what trains (and is exported) is an ordinary float model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.to(dtype)
    if training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if training.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = training.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    return model, source


def check_tokenizer_matches(model: Any, tokenizer: Any) -> None:
    """A tokenizer whose ids exceed the embedding table would fail deep inside a kernel: fail here."""
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        raise ModelSourceError(
            f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but the model embeds only "
            f"{embeddings}; set spec.model.tokenizer to the model's own tokenizer"
        )


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and embeddings' 1-D parameters."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "decay": True},
        {"params": no_decay, "weight_decay": 0.0, "decay": False},
    ]
