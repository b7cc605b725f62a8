"""`spec.model`: the model to continue, where it comes from, and how its context is extended."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from cpt_core.api.v1alpha1.base import (
    MODEL_SCHEMES,
    URI,
    DNSLabel,
    _Model,
    check_uri,
    has_userinfo,
    uri_credentials,
    uri_scheme,
)
from cpt_core.contract.names import HF_TOKEN


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
        return None if value is None else check_uri(value, MODEL_SCHEMES)

    @field_validator("mirror")
    @classmethod
    def _mirror_scheme(cls, value: str | None) -> str | None:
        if value is not None and has_userinfo(value):
            raise ValueError(uri_credentials(("s3",)))
        if value is not None and uri_scheme(value) != "s3":
            raise ValueError(f"must be an s3:// prefix, e.g. s3://models/hf/ (got {value!r})")
        return None if value is None else check_uri(value, ("s3",))

    def from_mirror(self, uri: str | None) -> str | None:
        """`uri` read from the mirror when it is an `hf://` id and a mirror is set; else unchanged."""
        if uri is None or self.mirror is None or not uri.startswith("hf://"):
            return uri
        return self.mirror.rstrip("/") + "/" + uri[len("hf://") :].strip("/") + "/"


class SecretKeyRef(_Model):
    """One key of a Secret in the job's namespace."""

    name: DNSLabel
    """The Secret's name."""
    key: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = HF_TOKEN
    """The key whose value is used."""
