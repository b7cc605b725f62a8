"""The `CPTJob` API (`cpt.dev/v1alpha1`) as typed models: the single source of truth.

The CRD's openAPIV3Schema (`cpt crd`), the API reference (`docs/api.md`), `cpt validate`,
`cpt run` and the operator all derive from these classes. Wire format is camelCase; every
field's docstring becomes its description in the CRD and the docs.

Only pydantic here: the trainer imports this module without torch or Ray, and so does the
operator image.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from .base import URI, DNSLabel, FieldError, Quantity, _Model
from .pods import PodOverride, check_mounts
from .progress import CheckpointRef, DataStatus, EvaluationStatus, OutputStatus, StageStatus, TrainingProgress

GROUP = "cpt.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "CPTJob"
PLURAL = "cptjobs"
SINGULAR = "cptjob"
SHORT_NAMES = ["cpt"]
CATEGORIES = ["all", "ml"]

#: Learning-rate defaults and recommended ranges by model kind. Continued pre-training of
#: an instruct model wants a gentle LR (it already sits in a good basin and forgets fast);
#: a base model tolerates and needs more.
LR_DEFAULTS: dict[str, float] = {"instruct": 5.0e-5, "base": 2.0e-4}
LR_RANGES: dict[str, tuple[float, float]] = {"instruct": (2.0e-5, 1.0e-4), "base": (1.0e-4, 5.0e-4)}
#: Recommended share (percent of weight) of general replay data and of instruction data.
REPLAY_RANGE_PCT = (5.0, 10.0)
INSTRUCTION_RANGE_PCT = (1.0, 5.0)

MODEL_SCHEMES = ("hf", "s3", "file", "pkg")
DATA_SCHEMES = ("s3", "file")


def _scheme(uri: str) -> str:
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", uri)
    return match.group(1) if match else ""


def _check_uri(uri: str, allowed: tuple[str, ...]) -> str:
    scheme = _scheme(uri)
    if scheme and scheme not in allowed:
        raise ValueError(
            f"unsupported URI scheme '{scheme}://' (use one of "
            + ", ".join(f"{s}://" for s in allowed)
            + " or a plain local path)"
        )
    if scheme == "s3":
        rest = uri[len("s3://") :]
        bucket = rest.split("/", 1)[0]
        if "@" in bucket or ":" in bucket:
            raise ValueError(
                "credentials must not be embedded in a URI; put them in a Kubernetes Secret "
                "and set spec.storage.credentialsSecret"
            )
        if not re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket):
            raise ValueError(f"'{bucket}' is not a valid S3 bucket name (s3://BUCKET/prefix)")
    return uri


# --------------------------------------------------------------------------- model


class RopeScalingType(str, Enum):
    yarn = "yarn"
    linear = "linear"
    dynamic = "dynamic"


class RopeScaling(_Model):
    """Context extension applied to the model config before its weights load."""

    type: RopeScalingType = RopeScalingType.yarn
    """RoPE scaling method. `yarn` is the recommended method for long-context CPT."""
    factor: float = Field(gt=1.0, le=64.0)
    """Context length multiplier, e.g. 4 turns an 8k model into a 32k one."""
    original_max_position_embeddings: int | None = Field(default=None, gt=0)
    """Context length the model was trained with. Default: the model config's max_position_embeddings."""


class ModelSpec(_Model):
    """The model to continue pre-training (the starting weights, never a resume point)."""

    source: URI
    """Where the starting model lives: `hf://org/name` (Hugging Face cache, offline when cached),
    `s3://bucket/path/` (a Hugging Face model directory), `file:///path` or a plain path (a model
    directory or a `.gguf` file), or `pkg://python_package/file.gguf` (a file shipped inside an
    installed Python package)."""
    kind: Literal["instruct", "base"]
    """Whether `source` is an instruction-tuned or a base model. Drives the default learning rate
    (instruct 5e-5, base 2e-4) and the data-mix warnings."""
    init: Literal["pretrained", "random"] = "pretrained"
    """`pretrained` loads the weights at `source`; `random` builds the architecture from the config
    at `source` with random weights (smoke tests, benchmarks)."""
    tokenizer: URI | None = None
    """Where to load the tokenizer from. Default: `source`."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Training precision. bfloat16 on GPUs; the trainer falls back to float32 on CPUs."""
    rope_scaling: RopeScaling | None = None
    """Optional RoPE scaling for context extension (set `data.sequenceLength` to the new length)."""
    token_secret: SecretKeyRef | None = None
    """A Secret holding a Hugging Face token for `hf://` models (gated or private ones): its key reaches
    the Ray pods as HF_TOKEN by reference, never inlined. The operator's preflight uses it too."""
    mirror: URI | None = None
    """An S3 copy of the Hub for clusters without internet egress: `hf://org/name` is read from
    `<mirror>/org/name/` (a model directory, e.g. written by `huggingface-cli download` and `aws s3 sync`)
    instead of the Hugging Face Hub. Also applies to `tokenizer` and synthesis generator models."""

    @field_validator("source", "tokenizer")
    @classmethod
    def _source_scheme(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, MODEL_SCHEMES)

    @field_validator("mirror")
    @classmethod
    def _mirror_scheme(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) != "s3":
            raise ValueError(f"must be an s3:// prefix, e.g. s3://models/hf/ (got {value!r})")
        return None if value is None else _check_uri(value, ("s3",))

    def from_mirror(self, uri: str | None) -> str | None:
        """`uri` read from the mirror when it is an `hf://` id and a mirror is set; else unchanged."""
        if uri is None or self.mirror is None or not uri.startswith("hf://"):
            return uri
        return self.mirror.rstrip("/") + "/" + uri[len("hf://") :].strip("/") + "/"


class SecretKeyRef(_Model):
    """One key of a Secret in the job's namespace."""

    name: DNSLabel
    """The Secret's name."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = "HF_TOKEN"
    """The key whose value is used."""


# --------------------------------------------------------------------------- data


class SourceRole(str, Enum):
    domain = "domain"
    replay = "replay"
    instruction = "instruction"


class SourceFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    text = "text"
    chat = "chat"


class DataSource(_Model):
    """One dataset of the training mixture."""

    name: DNSLabel
    """Unique name of the source; used in status, metrics and the cache."""
    role: SourceRole
    """`domain` (the new knowledge), `replay` (general data that guards against forgetting; also the
    general-loss evaluation set) or `instruction` (chat data that keeps instruction following)."""
    uris: list[URI] = Field(default_factory=list, max_length=64)
    """Objects or prefixes (`s3://bucket/prefix/`, `file:///dir/`, plain paths) to read. A prefix
    means every object below it. Required unless `synthesize` is set (a synthesised source reads the
    files its synthesis wrote)."""
    format: SourceFormat = SourceFormat.jsonl
    """`jsonl` (one JSON object per line, `.gz`/`.zst` allowed), `parquet`, `text` (one document per
    file) or `chat` (JSON lines with a `messages` list, rendered with the chat template)."""
    text_field: Annotated[str, StringConstraints(min_length=1, max_length=256)] = "text"
    """Field holding the document text (`jsonl`, `parquet`)."""
    messages_field: Annotated[str, StringConstraints(min_length=1, max_length=256)] = "messages"
    """Field holding the message list (`chat`)."""
    weight: int | None = Field(default=None, ge=0, le=1_000_000)
    """Relative sampling weight (an integer). Shares are weight / sum of weights; 0 disables the
    source for training but keeps it for evaluation. Required unless `spec.stages` gives the weights
    (a stage's weights then replace these)."""
    skip_malformed: bool = False
    """Skip malformed records (invalid JSON, missing field) instead of failing. Skips are counted
    and the first examples recorded in the data manifest."""

    synthesize: Synthesize | None = None
    """Generate this source (question-answer pairs in chat format) from another source's documents
    instead of reading `uris`; see Synthesize."""

    @field_validator("uris")
    @classmethod
    def _uris_scheme(cls, value: list[str]) -> list[str]:
        return [_check_uri(uri, DATA_SCHEMES) for uri in value]

    @model_validator(mode="after")
    def _synthesized(self) -> DataSource:
        if self.synthesize is None:
            if not self.uris:
                raise FieldError(("uris",), "required: give at least 1 item (or set synthesize to generate the source)")
            return self
        if self.uris:
            raise FieldError(
                ("uris",), "leave unset on a synthesised source: its files are written to synthesize.output"
            )
        if "format" not in self.model_fields_set:
            self.format = SourceFormat.chat  # synthesised data is chat data; saying so is optional
        elif self.format != SourceFormat.chat:
            raise FieldError(
                ("format",), f"a synthesised source is chat data: set format: chat (got {self.format.value})"
            )
        return self


# --------------------------------------------------------------------------- synthesis


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
        return None if value is None else _check_uri(value, MODEL_SCHEMES)


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
        return None if value is None else _check_uri(value, DATA_SCHEMES)


class Validation(_Model):
    """Held-out documents for evaluation, taken before any training sample is packed."""

    holdout_documents: int = Field(default=200, ge=0, le=1_000_000)
    """Documents held out per source for evaluation; they never appear in training data."""


class DataSpec(_Model):
    """The training mixture and how it is tokenized."""

    sequence_length: int = Field(default=2048, ge=16, le=1_048_576)
    """Tokens per packed training row."""
    sources: list[DataSource] = Field(min_length=1, max_length=64)
    """Datasets of the mixture. At least one needs weight > 0."""
    validation: Validation = Field(default_factory=Validation)
    """Held-out evaluation data."""
    cache_uri: URI | None = None
    """Content-addressed cache of tokenized shards, shareable across jobs. Default:
    `<checkpoint.uri>/_cache/`."""
    allow_changes_on_resume: bool = False
    """Allow resuming although weights, seed or data changed since the checkpoint was written. The
    sampler then restarts its mixture from the checkpoint's sample count; the status records it."""

    @field_validator("cache_uri")
    @classmethod
    def _cache_scheme(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, DATA_SCHEMES)

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[DataSource]) -> list[DataSource]:
        seen: set[str] = set()
        for i, source in enumerate(value):
            if source.name in seen:
                raise FieldError((i, "name"), f"duplicate source name '{source.name}'; names must be unique")
            seen.add(source.name)
        by_name = {source.name: source for source in value}
        for i, source in enumerate(value):
            if source.synthesize is None:
                continue
            origin = by_name.get(source.synthesize.from_)
            documents = [s.name for s in value if s.synthesize is None and s.format != SourceFormat.chat]
            hint = f" (sources with documents: {', '.join(documents)})" if documents else ""
            if origin is None or origin is source:
                what = (
                    "itself" if origin is source else f"'{source.synthesize.from_}', not a source in spec.data.sources"
                )
                raise FieldError((i, "synthesize", "from"), f"names {what}; name a source with documents{hint}")
            if origin.synthesize is not None or origin.format == SourceFormat.chat:
                kind = "synthesised" if origin.synthesize is not None else "chat data"
                raise FieldError(
                    (i, "synthesize", "from"),
                    f"'{origin.name}' is {kind}, not documents; name a source with documents{hint}",
                )
        return value


# --------------------------------------------------------------------------- training


class ScheduleType(str, Enum):
    cosine = "cosine"
    wsd = "wsd"
    constant = "constant"


class Schedule(_Model):
    """Learning-rate schedule: linear warmup, then cosine decay, warmup-stable-decay or constant."""

    type: ScheduleType = ScheduleType.cosine
    """`cosine`, `wsd` (warmup-stable-decay: constant, then linear decay over the last
    `decayFraction` of steps; easy to extend) or `constant`."""
    warmup_steps: int = Field(default=0, ge=0)
    """Linear warmup steps from 0 to `learningRate`."""
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    """Final learning rate as a fraction of `learningRate` (cosine, wsd)."""
    decay_fraction: float = Field(default=0.2, gt=0.0, le=1.0)
    """Fraction of the steps spent decaying (wsd only)."""


class Optimizer(_Model):
    """AdamW hyper-parameters."""

    beta1: float = Field(default=0.9, ge=0.0, lt=1.0)
    """AdamW beta1."""
    beta2: float = Field(default=0.95, ge=0.0, lt=1.0)
    """AdamW beta2."""
    eps: float = Field(default=1.0e-8, gt=0.0, le=1.0e-2)
    """AdamW epsilon."""


class LoRA(_Model):
    """Optional low-rank adaptation instead of full fine-tuning (via peft)."""

    r: int = Field(default=64, ge=1, le=4096)
    """Rank of the update matrices."""
    alpha: int = Field(default=128, ge=1)
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, max_length=64
    )
    """Module names to adapt."""


class TrainingSpec(_Model):
    """How long and how to train. Give exactly one of `steps` and `tokens`."""

    steps: int | None = Field(default=None, gt=0)
    """Optimizer steps to train (unset when `spec.stages` gives the length of each stage)."""
    tokens: int | None = Field(default=None, gt=0)
    """Tokens to train on; converted to steps as ceil(tokens / globalBatchTokens)."""
    global_batch_tokens: int = Field(default=1_048_576, gt=0)
    """Tokens per optimizer step across all workers. Must be a multiple of
    sequenceLength x microBatchSize; gradient accumulation is derived from it."""
    micro_batch_size: int = Field(default=1, gt=0, le=4096)
    """Sequences per forward pass per worker."""
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Peak learning rate. Default: 5e-5 for instruct models, 2e-4 for base models."""
    schedule: Schedule = Field(default_factory=Schedule)
    """Learning-rate schedule."""
    weight_decay: float = Field(default=0.1, ge=0.0, le=10.0)
    """AdamW weight decay."""
    grad_clip: float = Field(default=1.0, ge=0.0)
    """Gradient norm clipping threshold (0 disables clipping)."""
    optimizer: Optimizer = Field(default_factory=Optimizer)
    """AdamW hyper-parameters."""
    seed: int = Field(default=1234, ge=0, le=2**31 - 1)
    """Seed of the mixture sampler, holdout selection and initialisation."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about 30 % more compute."""
    lora: LoRA | None = None
    """Optional LoRA adapters; when unset, all weights train."""
    regularization: Regularization | None = None
    """Optional penalty that holds the weights near where they started (against forgetting)."""


class RegularizationType(str, Enum):
    l2_init = "l2-init"
    ewc = "ewc"


class Regularization(_Model):
    """A penalty on moving away from the starting weights: `l2-init` (strength/2 x ||w - w0||^2, w0 = the
    weights at the start of the job) or `ewc` (Elastic Weight Consolidation: strength/2 x sum F (w - w*)^2,
    w* = the weights at the start of each stage, F = a diagonal Fisher estimate from replay data taken
    there). Both need the full weights on every process: ZeRO stage 3 is not supported. With LoRA the
    penalty applies to the adapter weights. It keeps one (l2-init) or two (ewc) extra copies of the
    trainable weights in float32 memory."""

    type: RegularizationType
    """`l2-init` or `ewc`."""
    strength: float = Field(gt=0.0, le=1.0e9)
    """Penalty weight (lambda)."""
    fisher_batches: int = Field(default=8, ge=1, le=10_000)
    """`ewc`: replay micro-batches used to estimate the Fisher information at a stage start."""


def _steps_for(steps: int | None, tokens: int | None, global_batch_tokens: int) -> int:
    if steps is not None:
        return steps
    assert tokens is not None
    return -(-tokens // global_batch_tokens)


# --------------------------------------------------------------------------- deepspeed, checkpoint, eval


class DeepSpeedSpec(_Model):
    """DeepSpeed engine settings. The trainer generates the config; `config` is merged last."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    """ZeRO stage: 2 shards optimizer state and gradients; 3 also shards the weights (large models)."""
    offload_optimizer: Literal["none", "cpu"] = "none"
    """Keep optimizer state in CPU memory (DeepSpeedCPUAdam): slower, fits larger models."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Raw DeepSpeed config keys merged over the generated config, for what the spec does not cover."""


class HubPushSpec(_Model):
    """Upload the exported model (`final/`, with its model card) to a Hugging Face Hub model repository."""

    #: The Secret key that holds the token, and the variable the Ray pods receive it in.
    TOKEN_KEY: ClassVar[str] = "HF_TOKEN"
    TOKEN_ENV: ClassVar[str] = "CPT_HUB_PUSH_TOKEN"

    repo: Annotated[
        str,
        StringConstraints(
            min_length=3, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
        ),
    ]
    """Repository id `owner/name`; created (with `private`) when it does not exist."""
    private: bool = True
    """Create the repository as private (an existing repository keeps its visibility)."""
    token_secret: DNSLabel | None = None
    """Secret in the job's namespace with the key HF_TOKEN (a write token); never inlined or logged.
    `cpt run` reads HF_TOKEN from the environment."""


class ExportSpec(_Model):
    """The final Hugging Face model written to `<checkpoint.uri>/final/`."""

    enabled: bool = True
    """Export a consolidated Hugging Face model when training ends."""
    format: Literal["safetensors"] = "safetensors"
    """Weight file format."""
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Precision of the exported weights."""
    license: (
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._+-]*$")] | None
    ) = None
    """License id of the model card (a Hub license id such as `apache-2.0`, `llama3.1`, `other`). Default:
    the base model's license, read from its model card when it has one."""
    push: HubPushSpec | None = None
    """Also upload `final/` to a Hugging Face Hub repository after the export (bounded retries; the model
    in `final/` stays the result when the upload fails)."""


class CheckpointSpec(_Model):
    """Where and how often training state is saved. Resume always starts from the newest committed
    checkpoint below `uri`."""

    uri: URI
    """Run directory: checkpoints, `_status/progress.json`, `final/` and `report/` go below it
    (`s3://bucket/prefix/` or a local path)."""
    interval_steps: int = Field(default=100, gt=0)
    """Save a checkpoint every this many steps (and always at the end)."""
    keep_last: int = Field(default=3, ge=1, le=1000)
    """Committed checkpoints to keep; older ones are deleted. The newest committed one is never deleted."""
    interrupt_grace_seconds: int = Field(default=60, ge=0, le=3600)
    """On SIGINT/SIGTERM (Ctrl-C, pod eviction, preemption) the trainer finishes its step and, when a
    checkpoint of it can be committed within this many seconds (judged by this attempt's last save),
    commits one before it exits; 0 never saves on an interruption. `cpt run` and `cpt train` wait this
    long (plus 30 s) before abandoning the step. Keep it below the pods' terminationGracePeriodSeconds."""
    export: ExportSpec = Field(default_factory=ExportSpec)
    """Final model export."""

    @field_validator("uri")
    @classmethod
    def _uri_scheme(cls, value: str) -> str:
        return _check_uri(value, DATA_SCHEMES)


class ForgettingAction(str, Enum):
    warn = "warn"
    stop = "stop"
    adapt = "adapt"


class Forgetting(_Model):
    """The forgetting watch: the price of domain gain, measured at every evaluation against step 0.
    Forgetting is detected when any signal passes its limit."""

    max_general_loss_increase: float = Field(default=0.10, gt=0.0, le=10.0)
    """Relative increase of the general (replay) holdout loss over its step-0 baseline that counts as
    forgetting, e.g. 0.10 = 10 %."""
    max_instruction_loss_increase: float | None = Field(default=None, gt=0.0, le=10.0)
    """Relative increase of the chat (instruction) holdout loss that counts as forgetting. Unset: not watched."""
    max_instruction_following_drop: float | None = Field(default=None, gt=0.0, le=1.0)
    """Drop of instruction-following prompt accuracy (absolute, e.g. 0.1 = 10 points) below its step-0
    value that counts as forgetting. Unset: not watched."""
    action: ForgettingAction = ForgettingAction.warn
    """`warn` (log, flag in status), `stop` (checkpoint, then end with reason ForgettingDetected) or
    `adapt` (raise the replay share by `adaptStep` at each evaluation that detects forgetting, up to
    `maxReplayShare`, and lower it back while the signals stay under half their limits; every change is
    recorded in status and in checkpoints, so a resume reproduces it)."""
    max_replay_share: float = Field(default=0.3, gt=0.0, lt=1.0)
    """`adapt`: the highest share of samples that replay sources may get."""
    adapt_step: float = Field(default=0.05, gt=0.0, le=0.5)
    """`adapt`: how much the replay share moves per evaluation."""


class InstructionFollowing(_Model):
    """Instruction-following retention: prompts with verifiable constraints (IFEval-style rules such as
    word counts, required or forbidden keywords, JSON, bullets, case, start/end phrases), answered by the
    model and scored by the rules at step 0 and at every evaluation."""

    enabled: bool | None = None
    """Score instruction following. Default: on for `model.kind: instruct`, off for base models."""
    prompts: URI | None = None
    """JSON-lines file of `{"prompt": ..., "rules": [{"type": ..., ...}]}`. Default: the set shipped with
    the trainer (docs/user-guide.md lists the rule types)."""
    max_prompts: int | None = Field(default=None, gt=0, le=100_000)
    """Score at most this many prompts per evaluation (a warning says when it cuts). Unset: all."""
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    """Longest answer generated per prompt."""

    @field_validator("prompts")
    @classmethod
    def _prompts_scheme(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, DATA_SCHEMES)


class EvaluationSpec(_Model):
    """Periodic evaluation on the holdouts: domain gain against general forgetting."""

    interval_steps: int = Field(default=50, gt=0)
    """Evaluate every this many steps (and at step 0 for the baseline, and at the end)."""
    max_batches: int = Field(default=50, gt=0)
    """Upper bound on evaluation micro-batches per holdout, to bound evaluation time."""
    forgetting: Forgetting = Field(default_factory=Forgetting)
    """Forgetting threshold and action."""
    probes: URI | None = None
    """Optional JSON-lines file of `{"question": ..., "answer": ...}` pairs, answered greedily at step 0
    and at every evaluation and scored by exact match (normalised equality) and token F1."""
    max_probes: int | None = Field(default=None, gt=0, le=100_000)
    """Score at most this many probes per evaluation (a warning says when it cuts). Unset: all."""
    probe_max_new_tokens: int = Field(default=32, gt=0, le=1024)
    """Longest answer generated per probe."""
    probe_target_f1: float | None = Field(default=None, ge=0.0, le=1.0)
    """Optional target: the ProbesPassed condition says whether the latest probe F1 reaches it."""
    instruction_following: InstructionFollowing = Field(default_factory=InstructionFollowing)
    """Instruction-following retention."""

    @field_validator("probes")
    @classmethod
    def _probes_scheme(cls, value: str | None) -> str | None:
        return None if value is None else _check_uri(value, DATA_SCHEMES)


class StorageSpec(_Model):
    """S3-compatible object storage used by `s3://` URIs. Credentials are only ever referenced."""

    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    """Endpoint URL of an S3-compatible server, e.g. `http://minio.minio:9000`. Unset: AWS S3."""
    region: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "us-east-1"
    """Region name sent with requests."""
    credentials_secret: DNSLabel | None = None
    """Name of a Secret in the job's namespace with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
    (optionally AWS_SESSION_TOKEN). Unset: the pods' ambient credentials (IRSA, instance role).
    `cpt run` reads the same keys from the environment."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """S3 addressing style; most self-hosted servers need `path`."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+(/.*)?$", value):
            raise ValueError("must be an http:// or https:// URL, e.g. http://minio.minio:9000")
        if "@" in value.split("//", 1)[1].split("/", 1)[0]:
            raise ValueError(
                "credentials must not be embedded in the endpoint URL; put them in a Kubernetes "
                "Secret and set spec.storage.credentialsSecret"
            )
        return value


# --------------------------------------------------------------------------- tracking


class MLflow(_Model):
    """An MLflow tracking server that receives the run's metrics (needs `mlflow` or `mlflow-skinny` in the
    trainer image)."""

    tracking_uri: Annotated[
        str, StringConstraints(min_length=1, max_length=2048, pattern=r"^(https?|file|databricks)[:]")
    ]
    """The tracking server, e.g. `http://mlflow.mlflow:5000` (or `file:///path` for a local store)."""
    experiment: Annotated[str, StringConstraints(min_length=1, max_length=256)] = "cpt"
    """Experiment name; the run is named after the CPTJob and resumed with it."""
    credentials_secret: DNSLabel | None = None
    """Secret in the job's namespace with MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD (each optional); `cpt run` reads the same variables from the environment."""


class WandB(_Model):
    """Weights & Biases (needs `wandb` in the trainer image)."""

    project: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    """W&B project."""
    entity: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    """W&B entity (team or user). Default: the API key's."""
    mode: Literal["online", "offline"] = "online"
    """`offline` writes the run below `<checkpoint.uri>/wandb/` for a later `wandb sync`."""
    api_key_secret: DNSLabel | None = None
    """Secret in the job's namespace with the key WANDB_API_KEY; `cpt run` reads it from the environment."""


class TrackingSpec(_Model):
    """Where training metrics go besides the progress file and `report/`."""

    tensorboard: bool = True
    """TensorBoard event files under `<checkpoint.uri>/tensorboard/` (loss, learning rate, tokens/s,
    evaluations, per-source losses, stages)."""
    mlflow: MLflow | None = None
    """Optional MLflow sink."""
    wandb: WandB | None = None
    """Optional Weights & Biases sink."""
    log_every_steps: int = Field(default=10, ge=1, le=1_000_000)
    """A plain progress line in the trainer's log every this many steps (what `kubectl logs` shows)."""


# --------------------------------------------------------------------------- cluster, run policy


class Resources(_Model):
    """CPU and memory for a Ray pod (requests = limits)."""

    cpu: Quantity | None = None
    """CPU cores, e.g. "32" or "500m"."""
    memory: Quantity | None = None
    """Memory, e.g. "512Gi"."""


class Toleration(_Model):
    """A pod toleration (as in core/v1)."""

    key: str | None = None
    """Taint key to tolerate; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""
    value: str | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ClusterSpec(_Model):
    """The Ray cluster the operator requests. Ignored by `cpt run`."""

    image: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    """Trainer image for head and workers. Default: the operator's configured trainer image."""
    workers: int = Field(default=1, ge=1, le=4096)
    """Ray worker pods; each runs one training process per GPU (or one on CPU)."""
    gpus_per_worker: int = Field(default=1, ge=0, le=64)
    """`nvidia.com/gpu` per worker pod; 0 trains on CPU."""
    worker_resources: Resources = Field(default_factory=Resources)
    """CPU and memory per worker pod."""
    head_resources: Resources = Field(default_factory=Resources)
    """CPU and memory for the Ray head pod (which does not train)."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the worker pods (e.g. for tainted GPU nodes)."""
    priority_class_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """PriorityClass of the Ray pods."""
    service_account_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    """ServiceAccount of the Ray pods (e.g. one bound to a cloud IAM role)."""
    shm_size: Quantity = "8Gi"
    """Size of the memory-backed /dev/shm volume (NCCL and data loaders need more than the default 64M)."""
    pod_overrides: list[PodOverride] = Field(default_factory=list, max_length=16)
    """Changes to the Ray pods (env, volumes, affinity, securityContext, extra resources, ...), applied in
    order over what the operator builds; each targets the head, the workers or both. See PodOverride."""

    @model_validator(mode="after")
    def _mounts(self) -> ClusterSpec:
        try:
            check_mounts(self.pod_overrides)
        except FieldError as exc:
            raise FieldError(("podOverrides", *exc.loc), exc.message) from None
        return self


class RunPolicy(_Model):
    """Restarts, deadlines and suspension."""

    max_restarts: int = Field(default=3, ge=0, le=1000)
    """New attempts after a failed one; each resumes from the last committed checkpoint."""
    active_deadline_seconds: int = Field(default=0, ge=0)
    """Fail an attempt that runs longer than this; 0 means no deadline."""
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    """Keep the finished RayJob this long for inspection."""
    suspend: bool = False
    """Suspend the job: the Ray cluster is deleted, checkpoints are kept; setting it back to false
    starts a new attempt that resumes. Compatible with Kueue."""


# --------------------------------------------------------------------------- stages


class StageSpec(_Model):
    """One stage of a multi-stage recipe, trained in order on the same engine: e.g. Pre-Instruction-
    Tuning (QA tuning, then documents + QA + replay, then instruction tuning) or progressive mixing
    (a replay share stepping down over stages). Each stage has its own length, mixture and learning-rate
    schedule (warmup and decay over the stage); training.* values it does not set apply."""

    name: DNSLabel
    """Unique name of the stage (status, events, report)."""
    steps: int | None = Field(default=None, gt=0)
    """Optimizer steps of the stage. Give exactly one of steps and tokens."""
    tokens: int | None = Field(default=None, gt=0)
    """Tokens of the stage; converted to steps as ceil(tokens / training.globalBatchTokens)."""
    weights: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(min_length=1, max_length=64)
    """Sampling weights by source name; sources not named get 0 in this stage (they are still evaluated)."""
    learning_rate: float | None = Field(default=None, gt=0.0, le=1.0)
    """Peak learning rate of the stage. Default: training.learningRate (or the model kind's default)."""
    schedule: Schedule | None = None
    """Learning-rate schedule over the stage. Default: training.schedule."""
    weight_decay: float | None = Field(default=None, ge=0.0, le=10.0)
    """AdamW weight decay in this stage. Default: training.weightDecay."""
    reset_optimizer: bool = True
    """Start the stage with fresh optimizer moments (AdamW state), as a separate run would."""

    @model_validator(mode="after")
    def _stage(self) -> StageSpec:
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps and tokens")
        if not any(weight > 0 for weight in self.weights.values()):
            raise FieldError(("weights",), "at least one weight must be > 0")
        return self


# --------------------------------------------------------------------------- spec and status


class CPTJobSpec(_Model):
    """Desired state of a continued pre-training job."""

    model: ModelSpec
    """The model to continue pre-training."""
    data: DataSpec
    """The training mixture."""
    training: TrainingSpec
    """Duration, batch and optimisation."""
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    """DeepSpeed engine."""
    checkpoint: CheckpointSpec
    """Checkpoints, progress, export: the run directory."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Domain and general evaluation."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """S3-compatible storage."""
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """The Ray cluster on Kubernetes."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Restarts, deadline, suspension."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """TensorBoard, MLflow, Weights & Biases, log lines."""
    stages: list[StageSpec] = Field(default_factory=list, max_length=32)
    """Optional stages trained in order by one Ray cluster (see StageSpec). Unset: one stage with
    training.steps/tokens and the sources' weights."""

    @model_validator(mode="after")
    def _length_and_mixture(self) -> CPTJobSpec:
        training, sources = self.training, self.data.sources
        if self.stages:
            if training.steps is not None or training.tokens is not None:
                raise FieldError(("training",), "leave steps and tokens unset: with spec.stages each stage has its own")
            names = [source.name for source in sources]
            seen: set[str] = set()
            for i, stage in enumerate(self.stages):
                if stage.name in seen:
                    raise FieldError(
                        ("stages", i, "name"), f"duplicate stage name '{stage.name}'; names must be unique"
                    )
                seen.add(stage.name)
                unknown = sorted(set(stage.weights) - set(names))
                if unknown:
                    raise FieldError(
                        ("stages", i, "weights"),
                        f"names {', '.join(repr(u) for u in unknown)}, not a source in spec.data.sources "
                        f"(declared: {', '.join(names)})",
                    )
            return self
        if (training.steps is None) == (training.tokens is None):
            raise FieldError(("training",), "give exactly one of steps and tokens")
        for i, source in enumerate(sources):
            if source.weight is None:
                raise FieldError(
                    ("data", "sources", i, "weight"), "required (or give the weights per stage in spec.stages)"
                )
        if not any((source.weight or 0) > 0 for source in sources):
            raise FieldError(("data", "sources"), "at least one source needs weight > 0")
        return self

    @model_validator(mode="after")
    def _regularization(self) -> CPTJobSpec:
        regularization = self.training.regularization
        if regularization is not None and self.deepspeed.zero_stage == 3:
            raise FieldError(
                ("training", "regularization"),
                "needs the full weights on every process; not supported with deepspeed.zeroStage 3 (use 2)",
            )
        no_replay = not any(s.role == SourceRole.replay for s in self.data.sources)
        if regularization is not None and regularization.type == RegularizationType.ewc and no_replay:
            raise FieldError(
                ("training", "regularization", "type"),
                "ewc estimates its Fisher information on replay data: add a source with role: replay",
            )
        return self

    @model_validator(mode="after")
    def _lora_zero3(self) -> CPTJobSpec:
        if self.training.lora is not None and self.deepspeed.zero_stage == 3:
            raise FieldError(
                ("training", "lora"),
                "LoRA is not supported with deepspeed.zeroStage 3 yet (the adapters are small; use zeroStage 2)",
            )
        return self

    @model_validator(mode="after")
    def _batch_geometry(self) -> CPTJobSpec:
        row = self.data.sequence_length * self.training.micro_batch_size
        if self.training.global_batch_tokens % row != 0:
            lower = max(row, self.training.global_batch_tokens // row * row)
            raise FieldError(
                ("training", "globalBatchTokens"),
                f"must be a multiple of data.sequenceLength x "
                f"training.microBatchSize = {row} (got {self.training.global_batch_tokens}; "
                f"e.g. {lower} or {lower + row})",
            )
        return self

    @property
    def learning_rate(self) -> float:
        """The peak learning rate: the explicit one, or the default for the model kind."""
        return self.training.learning_rate or LR_DEFAULTS[self.model.kind]

    @property
    def cache_uri(self) -> str:
        """The tokenized-data cache: the explicit one, or `<checkpoint.uri>/_cache/`."""
        return self.data.cache_uri or self.checkpoint.uri.rstrip("/") + "/_cache/"

    @property
    def total_steps(self) -> int:
        """Optimizer steps this job trains for (all stages)."""
        if self.stages:
            return sum(self.stage_steps(stage) for stage in self.stages)
        return _steps_for(self.training.steps, self.training.tokens, self.training.global_batch_tokens)

    def stage_steps(self, stage: StageSpec) -> int:
        return _steps_for(stage.steps, stage.tokens, self.training.global_batch_tokens)

    def with_base_dir(self, base_dir: str) -> CPTJobSpec:
        """A copy whose relative local paths are made absolute against `base_dir` (the job file's
        directory), so `cpt run` works from any working directory."""
        import os.path

        def fix(uri: str | None) -> str | None:
            if uri is None or _scheme(uri) or os.path.isabs(uri):
                return uri
            trailing = "/" if uri.endswith("/") else ""
            return os.path.normpath(os.path.join(base_dir, uri)) + trailing

        spec = self.model_copy(deep=True)
        spec.model.source = fix(spec.model.source) or spec.model.source
        spec.model.tokenizer = fix(spec.model.tokenizer)
        for source in spec.data.sources:
            source.uris = [fix(u) or u for u in source.uris]
        for source in spec.data.sources:
            if source.synthesize is not None:
                source.synthesize.output = fix(source.synthesize.output)
                source.synthesize.generator.model = fix(source.synthesize.generator.model)
        spec.data.cache_uri = fix(spec.data.cache_uri)
        spec.checkpoint.uri = fix(spec.checkpoint.uri) or spec.checkpoint.uri
        spec.evaluation.probes = fix(spec.evaluation.probes)
        return spec

    def resolved(self) -> CPTJobSpec:
        """A copy with every derived default made explicit (what the trainer runs with)."""
        spec = self.model_copy(deep=True)
        spec.training.learning_rate = self.learning_rate
        spec.data.cache_uri = self.cache_uri
        for source in spec.data.sources:
            if source.synthesize is not None:
                source.synthesize.output = self.synthesis_output(source)
                if source.synthesize.generator.kind == GeneratorKind.model:
                    generator = source.synthesize.generator
                    generator.model = self.model.from_mirror(generator.model or self.model.source)
        spec.model.source = self.model.from_mirror(spec.model.source) or spec.model.source
        spec.model.tokenizer = self.model.from_mirror(spec.model.tokenizer)
        return spec

    def hub_models(self) -> list[tuple[str, str]]:
        """(field, `org/name`) of every `hf://` model or tokenizer the pods fetch from the Hugging Face Hub
        (none when spec.model.mirror is set: those are read from S3)."""
        spec = self.resolved()
        found = [("spec.model.source", spec.model.source), ("spec.model.tokenizer", spec.model.tokenizer)]
        for i, source in enumerate(spec.data.sources):
            if source.synthesize is not None:
                found.append((f"spec.data.sources[{i}].synthesize.generator.model", source.synthesize.generator.model))
        return [(field, uri[len("hf://") :].strip("/")) for field, uri in found if uri and uri.startswith("hf://")]

    def synthesis_output(self, source: DataSource) -> str:
        """Where a synthesised source's files go: synthesize.output, or `<cacheUri>/synthetic/<name>/`."""
        assert source.synthesize is not None
        return source.synthesize.output or self.cache_uri.rstrip("/") + f"/synthetic/{source.name}/"


class Phase(str, Enum):
    Pending = "Pending"
    Preparing = "Preparing"
    Running = "Running"
    Restarting = "Restarting"
    Suspended = "Suspended"
    Succeeded = "Succeeded"
    Failed = "Failed"


class Condition(_Model):
    """A metav1.Condition."""

    type: str
    """Condition type: Validated, StorageReady, ClusterReady, Training, ForgettingDetected, Succeeded or Failed."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """CamelCase reason a program can act on."""
    message: str = ""
    """Human-readable detail and the fix."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The .metadata.generation the condition was set for."""


class KeptRayJob(_Model):
    """An ended attempt's RayJob, kept for inspection (`kubectl describe`, its pods' logs) for a while."""

    name: str
    """The RayJob."""
    uid: str | None = None
    """Its uid: only that object is deleted, never a namesake."""
    delete_after: str
    """When the operator deletes it: runPolicy.ttlSecondsAfterFinished after the attempt ended (RFC 3339)."""


class CPTJobStatus(_Model):
    """Observed state of a CPTJob, written by the operator."""

    phase: Phase | None = None
    """Pending, Preparing, Running, Restarting, Suspended, Succeeded or Failed."""
    message: str | None = None
    """Why the job is in this phase."""
    conditions: list[Condition] = Field(default_factory=list)
    """Latest observations of the job's state."""
    observed_generation: int | None = None
    """The .metadata.generation the operator last acted on."""
    attempt: int = 0
    """Current attempt (1 for the first RayJob)."""
    restarts: int = 0
    """Attempts started after a failure."""
    ray_job_name: str | None = None
    """The RayJob of the current attempt."""
    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    """Ray dashboard of the current attempt."""
    start_time: str | None = None
    """When the first attempt started."""
    completion_time: str | None = None
    """When the job succeeded or failed."""
    progress: TrainingProgress | None = None
    """Training progress."""
    evaluation: EvaluationStatus | None = None
    """Latest evaluation."""
    checkpoint: CheckpointRef | None = None
    """Newest committed checkpoint."""
    data: DataStatus | None = None
    """Per-source token accounting."""
    output: OutputStatus | None = None
    """The exported model and report."""
    stage: str | None = None
    """The stage being trained."""
    stages: list[StageStatus] | None = None
    """Every stage: phase, steps, and the evaluation at its end."""
    warnings: list[str] = Field(default_factory=list)
    """Recommended-practice deviations found at validation (never a rejection)."""
    preflight_failures: int = 0
    """Consecutive failed storage preflights (drives the retry backoff)."""
    next_preflight_time: str | None = None
    """When the next preflight is due after a failure (RFC 3339)."""
    logs_uri: str | None = None
    """Where the pod logs of ended attempts are copied, one folder per attempt (`attempt-N/`)."""
    kept_ray_jobs: list[KeptRayJob] = Field(default_factory=list)
    """Ended attempts' RayJobs kept until their deleteAfter (runPolicy.ttlSecondsAfterFinished)."""


class ObjectMeta(BaseModel):
    """The subset of metav1.ObjectMeta the trainer and CLI use; everything else is passed through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class CPTJob(_Model):
    """A continued pre-training job."""

    api_version: Literal["cpt.dev/v1alpha1"]
    """cpt.dev/v1alpha1"""
    kind: Literal["CPTJob"]
    """CPTJob"""
    metadata: ObjectMeta
    """Standard object metadata."""
    spec: CPTJobSpec
    """Desired state."""
    status: CPTJobStatus | None = None
    """Observed state."""
