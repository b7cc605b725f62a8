"""Synthesis: documents -> question-answer pairs -> quality gates -> chat data (see `pipeline`)."""

from .launch import synthesize_sources
from .pipeline import SynthesisError, SynthesisResult, synthesize, synthesize_source, with_synthesized

__all__ = [
    "SynthesisError",
    "SynthesisResult",
    "synthesize",
    "synthesize_source",
    "synthesize_sources",
    "with_synthesized",
]
