"""The `CPTJob` API (`cpt.dev/v1alpha1`) as typed models: the single source of truth.

The CRD's openAPIV3Schema (`cpt crd`), the API reference (`docs/api.md`), `cpt validate`, `cpt run`
and the operator all derive from these classes. Wire format is camelCase; every field's docstring
becomes its description in the CRD and the docs. One module per section of the spec, as the API
reference reads:

- `model` (spec.model), `data` (spec.data), `synthesis` (a source's synthesize), `training`
  (spec.training, spec.deepspeed, spec.stages), `checkpoint` (spec.checkpoint and its export),
  `evaluation`, `storage`, `tracking`, `cluster` (spec.cluster, spec.runPolicy), `pods`
  (spec.cluster.podOverrides: Kubernetes' own pod shapes);
- `status` (the sections the trainer reports), `job` (CPTJobSpec with the rules across sections,
  CPTJobStatus, CPTJob); `base` (the base models, field errors, URI rules).

Only pydantic here: the trainer imports this package without torch or Ray, and so does the
operator image. The group, version and kind are words of the contract (`cpt_core.contract.names`).
"""

from cpt_core.api.v1alpha1.checkpoint import CheckpointSpec, ExportSpec, HubPushSpec
from cpt_core.api.v1alpha1.cluster import ClusterSpec, Resources, RunPolicy, Toleration
from cpt_core.api.v1alpha1.data import DataSource, DataSpec, SourceFormat, SourceRole, Validation
from cpt_core.api.v1alpha1.evaluation import EvaluationSpec, Forgetting, ForgettingAction, InstructionFollowing
from cpt_core.api.v1alpha1.job import (
    Condition,
    CPTJob,
    CPTJobSpec,
    CPTJobStatus,
    JobState,
    KeptRayJob,
    ObjectMeta,
    Phase,
)
from cpt_core.api.v1alpha1.model import ModelSpec, RopeScaling, RopeScalingType, SecretKeyRef
from cpt_core.api.v1alpha1.pods import PodOverride, PodTarget
from cpt_core.api.v1alpha1.status import (
    STATUS_SECTIONS,
    CheckpointRef,
    DataStatus,
    EvalResult,
    EvaluationStatus,
    InstructionFollowingScores,
    MixtureChange,
    OutputStatus,
    ProbeScores,
    SkippedCheckpoint,
    SourceProgress,
    StageStatus,
    StatusSections,
    TrainingProgress,
)
from cpt_core.api.v1alpha1.storage import StorageSpec
from cpt_core.api.v1alpha1.synthesis import (
    GeneratorKind,
    QuestionType,
    SynthesisBackend,
    SynthesisFilters,
    SynthesisGenerator,
    Synthesize,
)
from cpt_core.api.v1alpha1.tracking import MLflow, TrackingSpec, WandB
from cpt_core.api.v1alpha1.training import (
    LR_DEFAULTS,
    DeepSpeedSpec,
    LoRA,
    Optimizer,
    Regularization,
    RegularizationType,
    Schedule,
    ScheduleType,
    StageSpec,
    TrainingSpec,
)

__all__ = [
    "LR_DEFAULTS",
    "STATUS_SECTIONS",
    "CPTJob",
    "CPTJobSpec",
    "CPTJobStatus",
    "CheckpointRef",
    "CheckpointSpec",
    "ClusterSpec",
    "Condition",
    "DataSource",
    "DataSpec",
    "DataStatus",
    "DeepSpeedSpec",
    "EvalResult",
    "EvaluationSpec",
    "EvaluationStatus",
    "ExportSpec",
    "Forgetting",
    "ForgettingAction",
    "GeneratorKind",
    "HubPushSpec",
    "InstructionFollowing",
    "InstructionFollowingScores",
    "JobState",
    "KeptRayJob",
    "LoRA",
    "MLflow",
    "MixtureChange",
    "ModelSpec",
    "ObjectMeta",
    "Optimizer",
    "OutputStatus",
    "Phase",
    "PodOverride",
    "PodTarget",
    "ProbeScores",
    "QuestionType",
    "Regularization",
    "RegularizationType",
    "Resources",
    "RopeScaling",
    "RopeScalingType",
    "RunPolicy",
    "Schedule",
    "ScheduleType",
    "SecretKeyRef",
    "SkippedCheckpoint",
    "SourceFormat",
    "SourceProgress",
    "SourceRole",
    "StageSpec",
    "StageStatus",
    "StatusSections",
    "StorageSpec",
    "SynthesisBackend",
    "SynthesisFilters",
    "SynthesisGenerator",
    "Synthesize",
    "Toleration",
    "TrackingSpec",
    "TrainingProgress",
    "TrainingSpec",
    "Validation",
    "WandB",
]
