"""Batched greedy generation for evaluation (knowledge probes, instruction-following prompts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def render(tokenizer: Any, user_text: str, plain: str) -> str:
    """The prompt as the model expects it: its chat template, or `plain` (a format with {text}) without one."""
    if tokenizer.chat_template:
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
            )
        )
    return plain.format(text=user_text)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    device: torch.device,
    max_new_tokens: int,
    synced: bool,
    batch_size: int = 16,
) -> list[str]:
    """Greedy answers to the rendered `texts`, in batches (left padding, so answers start aligned).

    `synced` (ZeRO-3 across processes): every process must call this with the same texts, since each
    forward pass gathers parameter shards from all of them.
    """
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[str] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            encoded = tokenizer(
                batch, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template
            )
            out = model.generate(
                input_ids=encoded["input_ids"].to(device),
                attention_mask=encoded["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                synced_gpus=synced,
                use_cache=True,
            )
            width = encoded["input_ids"].shape[1]
            answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return answers
