"""The model: where it comes from, how it is built for training, and generation.

Where weights and tokenizers come from (`source`: hf://, s3://, local, GGUF, pkg://), building
the causal LM to train (`build`: dtype, RoPE scaling, LoRA, activation checkpointing), and batched greedy
`generation` (shared by evaluation and synthesis).
"""
