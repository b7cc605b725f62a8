"""Question writers: turn documents into candidate question-answer pairs.

- `ClozeWriter`: no model. Cuts a number (with its unit) or a name out of a sentence and asks for it.
  Deterministic: the same document always gives the same questions.
- `ModelWriter`: a language model prompted once per question (type in turn, each about another
  sentence of the document), greedy and batched; `transformers` (the `generate()` the evaluator uses)
  or vLLM when it is installed and a GPU is visible. The reply is pre-filled with `Question:` so even a
  small model answers in the expected form; what still does not parse is kept as a format rejection.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cpt_core.api.v1alpha1 import GeneratorKind, SynthesisBackend, SynthesisGenerator
from cpt_core.storage import Storage

from cpt_trainer.synthesis.quality import Candidate

log = logging.getLogger(__name__)

PROMPTS: dict[str, str] = {
    "factual": (
        "Read this text.\n\n{document}\n\nWrite one question about a fact stated in this sentence of the text: "
        '"{focus}"\nThen write the short answer, copied from the text. Reply in exactly this form:\n'
        "Question: <the question>\nAnswer: <the answer>"
    ),
    "reasoning": (
        "Read this text.\n\n{document}\n\nWrite one question that can only be answered by combining this sentence: "
        '"{focus}" with another fact of the text. Then write the short answer. Reply in exactly this form:\n'
        "Question: <the question>\nAnswer: <the answer>"
    ),
    "summary": (
        "Read this text.\n\n{document}\n\nWrite one question that asks what the text says about its main subject, "
        "and answer it in one sentence using the words of the text. Reply in exactly this form:\n"
        "Question: <the question>\nAnswer: <the answer>"
    ),
}
_REPLY_PREFIX = "Question:"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_PAIR = re.compile(r"^\s*(?P<q>.+?)\s*\n+\s*(?:\*\*)?Answer\s*:(?:\*\*)?\s*(?P<a>.+?)\s*$", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"\b\d[\d,]*(?:\.\d+)?(?:\s+(?P<unit>[a-z]+))?")
_NAME = re.compile(r"\b[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*")
_UNIT_STOP = frozenset("a an the of in on at to and or for by with from since is are was were per".split())  # noqa: SIM905


@dataclass(frozen=True)
class SourceDocument:
    """A training document of the origin source: its file's index in the listing, its line, its text."""

    file: int
    line: int
    text: str


class QuestionWriter(Protocol):
    def write(self, documents: Sequence[SourceDocument]) -> list[list[Candidate]]:
        """Candidate pairs per document, in document order."""
        ...


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text.strip()) if len(s.split()) >= 3]


# --------------------------------------------------------------------------- cloze


class ClozeWriter:
    """Fill-in-the-blank questions: a number (with its unit word) or a capitalised name, blanked out."""

    def __init__(self, questions_per_document: int) -> None:
        self.questions_per_document = questions_per_document

    @staticmethod
    def _spans(sentence: str) -> list[tuple[int, int]]:
        spans = []
        for match in _NUMBER.finditer(sentence):
            end = match.end()
            if match.group("unit") and match.group("unit") in _UNIT_STOP:
                end = match.start("unit") - 1
            spans.append((match.start(), end))
        for match in _NAME.finditer(sentence):
            # A capital at the start of a sentence is not a name, nor one before a number ("Article 84": a label).
            if match.start() > 0 and not re.match(r"\s+\d", sentence[match.end() :]):
                spans.append((match.start(), match.end()))
        return spans

    def questions(self, document: SourceDocument) -> list[Candidate]:
        options = []
        for index, sentence in enumerate(sentences(document.text)):
            for start, end in self._spans(sentence):
                digest = hashlib.blake2b(f"{document.file}:{document.line}:{index}:{start}".encode(), digest_size=8)
                options.append((index, start, end, sentence, digest.hexdigest()))
        # One question per sentence before a second from any sentence; a fixed hash decides the order.
        rank: dict[int, int] = {}
        ordered = []
        for option in sorted(options, key=lambda o: o[4]):
            rank[option[0]] = rank.get(option[0], -1) + 1
            ordered.append((rank[option[0]], option[4], option))
        out = []
        for _, _, (_, start, end, sentence, _) in sorted(ordered)[: self.questions_per_document]:
            blanked = sentence[:start] + "____" + sentence[end:]
            question = f'Fill in the blank: "{blanked}" What is missing?'
            out.append(Candidate("cloze", question, sentence[start:end], document.file, document.line))
        return out

    def write(self, documents: Sequence[SourceDocument]) -> list[list[Candidate]]:
        return [self.questions(d) for d in documents]


# --------------------------------------------------------------------------- model


def parse_reply(reply: str) -> tuple[str, str] | None:
    """(question, answer) from `<question>\\nAnswer: <answer>` (the `Question:` prefix was pre-filled)."""
    text = reply.strip()
    if text.lower().startswith("question:"):
        text = text[len("question:") :]
    match = _PAIR.match(text)
    if not match:
        return None
    answer = match.group("a").split("\n\n")[0].strip()
    answer = re.split(r"\n\s*Question\s*:", answer, flags=re.IGNORECASE)[0].strip()
    return match.group("q").strip().strip("*").strip(), answer


@dataclass(frozen=True)
class Prompt:
    document: int
    type: str
    text: str


class ModelWriter:
    """Questions from a language model: one prompt per question, generated in batches."""

    def __init__(self, settings: SynthesisGenerator, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.templates = {t.value: settings.prompts.get(t.value, PROMPTS[t.value]) for t in settings.types}

    def prompts(self, documents: Sequence[SourceDocument]) -> list[Prompt]:
        out = []
        types = [t.value for t in self.settings.types]
        for d, document in enumerate(documents):
            text = document.text[: self.settings.max_document_chars]
            focus = sentences(text) or [text]
            for i in range(self.settings.questions_per_document):
                kind = types[i % len(types)]
                # Each question about another sentence: greedy decoding would repeat itself otherwise.
                body = self.templates[kind].format(document=text, focus=focus[i % len(focus)])
                out.append(Prompt(d, kind, body))
        return out

    def write(self, documents: Sequence[SourceDocument]) -> list[list[Candidate]]:
        prompts = self.prompts(documents)
        replies = self.engine.complete([p.text for p in prompts])
        out: list[list[Candidate]] = [[] for _ in documents]
        for prompt, reply in zip(prompts, replies, strict=True):
            document = documents[prompt.document]
            parsed = parse_reply(reply)
            if parsed is None:
                problem = "reply not in the form 'Question: ... Answer: ...'"
                pair = Candidate(prompt.type, reply[:300], "", document.file, document.line, problem=problem)
            else:
                pair = Candidate(prompt.type, parsed[0], parsed[1], document.file, document.line)
            out[prompt.document].append(pair)
        return out


class TransformersEngine:
    """Greedy batched generation with transformers, through the evaluator's `generate()`."""

    def __init__(self, model_uri: str, settings: SynthesisGenerator, storage: Storage, field: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from cpt_trainer.model.source import ModelSourceError, load_tokenizer, resolve

        self.settings = settings
        source = resolve(model_uri, storage, field)
        self.tokenizer = load_tokenizer(model_uri, storage, field)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        try:
            self.model = AutoModelForCausalLM.from_pretrained(source.directory, dtype=dtype, **source.kwargs())
        except Exception as exc:
            raise ModelSourceError(f"{field}: cannot load the generator model from {source.identity}: {exc}") from None
        self.model.eval().to(self.device)

    def render(self, text: str) -> str:
        from cpt_trainer.model.generation import render

        return render(self.tokenizer, text, "{text}\n\n") + _REPLY_PREFIX

    def complete(self, texts: Sequence[str]) -> list[str]:
        from cpt_trainer.model.generation import generate

        rendered = [self.render(t) for t in texts]
        # Similar lengths share a batch: less left padding to compute on.
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        replies = generate(
            self.model,
            self.tokenizer,
            [rendered[i] for i in order],
            self.device,
            self.settings.max_new_tokens,
            synced=False,
            batch_size=self.settings.batch_size,
        )
        out = [""] * len(rendered)
        for i, reply in zip(order, replies, strict=True):
            out[i] = reply
        return out


class VLLMEngine:
    """Greedy generation with vLLM (GPU images that install it). Not exercised by the CPU test suite."""

    def __init__(self, model_uri: str, settings: SynthesisGenerator, storage: Storage, field: str) -> None:
        from vllm import LLM, SamplingParams

        from cpt_trainer.model.source import load_tokenizer, resolve

        source = resolve(model_uri, storage, field)
        self.tokenizer = load_tokenizer(model_uri, storage, field)
        model = str(source.directory / source.gguf_file) if source.gguf_file else str(source.directory)
        self.llm = LLM(model=model, tokenizer=self.tokenizer.name_or_path, seed=0)
        self.params = SamplingParams(temperature=0.0, max_tokens=settings.max_new_tokens)

    def complete(self, texts: Sequence[str]) -> list[str]:
        from cpt_trainer.model.generation import render

        prompts = [render(self.tokenizer, t, "{text}\n\n") + _REPLY_PREFIX for t in texts]
        return [o.outputs[0].text.strip() for o in self.llm.generate(prompts, self.params, use_tqdm=False)]


def vllm_usable() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def build_writer(settings: SynthesisGenerator, model_uri: str | None, storage: Storage, field: str) -> QuestionWriter:
    """The writer a generator spec asks for (loading its model, if any, once)."""
    if settings.kind == GeneratorKind.cloze:
        return ClozeWriter(settings.questions_per_document)
    assert model_uri is not None
    backend = settings.backend
    if backend == SynthesisBackend.auto:
        backend = SynthesisBackend.vllm if vllm_usable() else SynthesisBackend.transformers
    if backend == SynthesisBackend.vllm:
        if not vllm_usable():
            from cpt_trainer.model.source import ModelSourceError

            raise ModelSourceError(
                f"{field.rsplit('.', 1)[0]}.backend: vllm needs the vllm package and a GPU on the workers; "
                "use backend: transformers or auto"
            )
        return ModelWriter(settings, VLLMEngine(model_uri, settings, storage, field))
    log.info("generator: %s with transformers", model_uri)
    return ModelWriter(settings, TransformersEngine(model_uri, settings, storage, field))
