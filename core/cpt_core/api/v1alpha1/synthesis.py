"""`spec.data.sources[].synthesize`: a source generated from another source's documents (documents ->
question-answer pairs -> quality gates -> chat data)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator, model_validator

from cpt_core.api.v1alpha1.base import (
    DATA_SCHEMES,
    MODEL_SCHEMES,
    URI,
    DNSLabel,
    FieldError,
    _Model,
    check_uri,
)


class QuestionType(str, Enum):
    factual = "factual"
    reasoning = "reasoning"
    summary = "summary"


class GeneratorKind(str, Enum):
    model = "model"
    cloze = "cloze"


class SynthesisBackend(str, Enum):
    auto = "auto"
    transformers = "transformers"
    vllm = "vllm"


_PROMPT_FIELDS = {"document", "focus"}


class SynthesisGenerator(_Model):
    """What writes the question-answer pairs: a (small) language model prompted per question type, or
    `cloze`, deterministic fill-in-the-blank questions cut from the documents' sentences (no model)."""

    kind: GeneratorKind = GeneratorKind.model
    """`model` (a language model answers a prompt per question type) or `cloze` (no model: a sentence
    with a number or a name blanked out, deterministic)."""
    model: URI | None = None
    """`kind: model`: the generator model, in any scheme of spec.model.source (hf://, s3://, file, .gguf,
    pkg://). Default: spec.model.source."""
    questions_per_document: int = Field(default=3, ge=1, le=64)
    """Questions asked per document (spread over `types` in turn, each about another sentence)."""
    types: list[QuestionType] = Field(
        default_factory=lambda: [QuestionType.factual, QuestionType.reasoning, QuestionType.summary],
        min_length=1,
        max_length=3,
    )
    """`kind: model`: question types asked in turn: `factual` (a fact stated in one sentence),
    `reasoning` (combines two facts), `summary` (what the text is about)."""
    prompts: dict[str, Annotated[str, StringConstraints(min_length=1, max_length=8192)]] = Field(
        default_factory=dict, max_length=3
    )
    """`kind: model`: prompt templates by question type, replacing the built-in ones. `{document}` is the
    document text, `{focus}` the sentence the question should be about; the model must answer in the
    form `Question: ...` newline `Answer: ...`."""
    max_new_tokens: int = Field(default=96, ge=8, le=4096)
    """`kind: model`: longest generation per question."""
    max_document_chars: int = Field(default=2000, ge=100, le=1_000_000)
    """`kind: model`: documents are cut to this many characters in the prompt."""
    batch_size: int = Field(default=8, ge=1, le=4096)
    """`kind: model`: prompts generated together per forward pass."""
    backend: SynthesisBackend = SynthesisBackend.auto
    """`kind: model`: `transformers` (batched greedy generate), `vllm` (needs vllm installed and a GPU),
    or `auto` (vllm when it is importable and a GPU is visible, transformers otherwise)."""

    @field_validator("types")
    @classmethod
    def _unique_types(cls, value: list[QuestionType]) -> list[QuestionType]:
        for i, kind in enumerate(value):
            if kind in value[:i]:
                raise FieldError((i,), f"duplicate question type '{kind.value}'")
        return value

    @model_validator(mode="after")
    def _generator(self) -> SynthesisGenerator:
        import string

        if self.kind == GeneratorKind.cloze:
            # Checked by value, not by presence: a resolved spec travels to the workers with defaults spelled out.
            unused = {
                "model": self.model is not None,
                "types": self.types != list(QuestionType),
                "prompts": bool(self.prompts),
                "backend": self.backend != SynthesisBackend.auto,
            }
            for name, set_ in unused.items():
                if set_:
                    raise FieldError((name,), "not used by kind: cloze (which needs no model); remove it")
            return self
        known = {t.value for t in self.types}
        for key, template in self.prompts.items():
            if key not in known:
                raise FieldError(
                    ("prompts", key), f"'{key}' is not one of the requested types ({', '.join(sorted(known))})"
                )
            try:
                fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
            except ValueError as exc:
                raise FieldError(("prompts", key), f"not a valid template ({exc}); write braces as {{{{ }}}}") from None
            unknown = sorted(fields - _PROMPT_FIELDS)
            if unknown:
                raise FieldError(
                    ("prompts", key), f"unknown placeholder {{{unknown[0]}}}; use {{document}} and {{focus}}"
                )
            if "document" not in fields:
                raise FieldError(("prompts", key), "must contain {document} (the text the question is about)")
        return self

    @field_validator("model")
    @classmethod
    def _model_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, MODEL_SCHEMES)


class SynthesisFilters(_Model):
    """Quality gates on generated pairs, applied in this order; each rejection is counted (and
    exemplified) in the synthesis manifest and report."""

    min_question_tokens: int = Field(default=3, ge=1, le=1000)
    """Shortest question kept, in words."""
    max_question_tokens: int = Field(default=64, ge=1, le=10_000)
    """Longest question kept, in words."""
    min_answer_tokens: int = Field(default=1, ge=1, le=1000)
    """Shortest answer kept, in words."""
    max_answer_tokens: int = Field(default=64, ge=1, le=10_000)
    """Longest answer kept, in words."""
    grounding: float = Field(default=0.6, ge=0.0, le=1.0)
    """Least support of the answer by its source document: 1 when the answer appears verbatim
    (normalised) in the document, else the share of its content words found in the document."""
    dedupe: bool = True
    """Drop exact duplicates (same normalised question) and near duplicates (see nearDuplicate)."""
    near_duplicate: float = Field(default=0.8, gt=0.0, le=1.0)
    """Jaccard similarity of word bigrams (question and answer) from which a pair counts as a near
    duplicate of an earlier kept one."""
    max_type_share: float = Field(default=0.6, gt=0.0, le=1.0)
    """Question-type balance: when pairs of several types are kept, no type may exceed this share of
    them (the surplus of the largest type is dropped). 1 disables the cut."""

    @model_validator(mode="after")
    def _ranges(self) -> SynthesisFilters:
        if self.max_question_tokens < self.min_question_tokens:
            raise FieldError(("maxQuestionTokens",), f"must be >= minQuestionTokens ({self.min_question_tokens})")
        if self.max_answer_tokens < self.min_answer_tokens:
            raise FieldError(("maxAnswerTokens",), f"must be >= minAnswerTokens ({self.min_answer_tokens})")
        return self


class Synthesize(_Model):
    """A source synthesised from another source's documents: documents -> question-answer pairs
    (a small LM or cloze) -> quality gates -> chat data. Runs before data preparation (`cpt synthesize`,
    `cpt prepare`, `cpt run`, the operator's RayJob) when its output is missing or stale; content-
    addressed (documents, generator, model identity) and resumable. Holdout documents of `from` are
    never used, so evaluation stays held out."""

    from_: DNSLabel = Field(alias="from")
    """Name of the source (in spec.data.sources, with documents, not itself synthesised) whose training
    documents the questions are about."""
    generator: SynthesisGenerator = Field(default_factory=SynthesisGenerator)
    """The question writer."""
    filters: SynthesisFilters = Field(default_factory=SynthesisFilters)
    """Quality gates."""
    output: URI | None = None
    """Where the generated JSON lines (`part-NNNNN.jsonl`, chat format) and the synthesis manifest
    (`_SYNTHESIS`) are written. Default: `<data.cacheUri>/synthetic/<source name>/`."""

    @field_validator("output")
    @classmethod
    def _output_scheme(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value, DATA_SCHEMES)
