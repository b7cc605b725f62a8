"""Synthesis: documents -> question-answer pairs -> quality gates -> chat data (see `pipeline`)."""

from cpt_trainer.synthesis.pipeline import (
    SynthesisError,
    SynthesisResult,
    synthesize,
    synthesize_source,
    with_synthesized,
)

__all__ = [
    "SynthesisError",
    "SynthesisResult",
    "synthesize",
    "synthesize_source",
    "with_synthesized",
]
