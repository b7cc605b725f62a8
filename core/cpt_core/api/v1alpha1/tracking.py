"""`spec.tracking`: where training metrics go besides the progress file and `report/`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator

from cpt_core.api.v1alpha1.base import (
    DNSLabel,
    _Model,
    embedded_credentials,
    has_userinfo,
)

#: Where an MLflow tracking server's credentials go instead of its URI.
MLFLOW_SECRET = "spec.tracking.mlflow.credentialsSecret"


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

    @field_validator("tracking_uri", mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        # Before the pattern check, so that no message about the URI shows the credentials in it.
        if isinstance(value, str) and has_userinfo(value):
            raise ValueError(embedded_credentials("the tracking URI", MLFLOW_SECRET))
        return value


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
