"""`spec.checkpoint`: the run directory, how often the training state is saved, and the final export."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints, field_validator

from cpt_core.api.v1alpha1.base import (
    DATA_SCHEMES,
    URI,
    DNSLabel,
    _Model,
    check_uri,
)
from cpt_core.contract.names import HF_TOKEN, HUB_PUSH_TOKEN_ENV


class HubPushSpec(_Model):
    """Upload the exported model (`final/`, with its model card) to a Hugging Face Hub model repository."""

    #: The Secret key that holds the token, and the variable the Ray pods receive it in.
    TOKEN_KEY: ClassVar[str] = HF_TOKEN
    TOKEN_ENV: ClassVar[str] = HUB_PUSH_TOKEN_ENV

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
    include_locations: bool = False
    """Name the run's own locations (the `s3://`, `file://` and local paths of the starting model and the data)
    in the model card uploaded to the Hub. Default: the uploaded card names only Hub models (`hf://`) and says
    "private" for the rest; the card in `final/` always names them."""


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
        return check_uri(value, DATA_SCHEMES)
