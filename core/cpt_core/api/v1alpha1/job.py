"""The CPTJob: its spec (the sections together, with the rules that span them), its status and metadata."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from cpt_core.api.v1alpha1.base import (
    FieldError,
    _Model,
    uri_scheme,
)
from cpt_core.api.v1alpha1.checkpoint import CheckpointSpec
from cpt_core.api.v1alpha1.cluster import ClusterSpec, RunPolicy
from cpt_core.api.v1alpha1.data import DataSource, DataSpec, SourceRole
from cpt_core.api.v1alpha1.evaluation import EvaluationSpec
from cpt_core.api.v1alpha1.model import ModelSpec
from cpt_core.api.v1alpha1.status import StatusSections
from cpt_core.api.v1alpha1.storage import StorageSpec
from cpt_core.api.v1alpha1.synthesis import GeneratorKind
from cpt_core.api.v1alpha1.tracking import TrackingSpec
from cpt_core.api.v1alpha1.training import (
    LR_DEFAULTS,
    DeepSpeedSpec,
    RegularizationType,
    StageSpec,
    TrainingSpec,
    steps_for,
)
from cpt_core.contract import layout


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
        return self.data.cache_uri or layout.under(self.checkpoint.uri, layout.CACHE)

    @property
    def total_steps(self) -> int:
        """Optimizer steps this job trains for (all stages)."""
        if self.stages:
            return sum(self.stage_steps(stage) for stage in self.stages)
        return steps_for(self.training.steps, self.training.tokens, self.training.global_batch_tokens)

    def stage_steps(self, stage: StageSpec) -> int:
        return steps_for(stage.steps, stage.tokens, self.training.global_batch_tokens)

    def with_base_dir(self, base_dir: str) -> CPTJobSpec:
        """A copy whose relative local paths are made absolute against `base_dir` (the job file's
        directory), so `cpt run` works from any working directory."""
        import os.path

        def fix(uri: str | None) -> str | None:
            if uri is None or uri_scheme(uri) or os.path.isabs(uri):
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
        return source.synthesize.output or self.cache_uri.rstrip("/") + f"/{layout.SYNTHETIC}{source.name}/"


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


class JobState(_Model):
    """Where the job stands: phase, conditions, attempts (the operator's own part of the status)."""

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


class CPTJobStatus(StatusSections, JobState):
    """Observed state of a CPTJob, written by the operator: where the job stands, the trainer's sections
    (mirrored from the progress file as they are), then what the operator keeps for itself."""

    model_config = ConfigDict(extra="forbid")

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

    # Literal values cannot be names; tests/unit/test_layers.py checks they equal names.API_VERSION and KIND.
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
