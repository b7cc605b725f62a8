"""The vocabulary of a CPTJob's life: condition types and reasons, as types.

Every reason the trainer, the launcher, KubeRay or the operator can report is a `Reason` with a
terminal flag (a restart cannot fix it: the job fails at once), the place a user sees it, and a
one-line meaning and fix. The state machine decides retry-or-fail from the flag, writers can only
name members (a typo is a NameError, not a silent retry), and the troubleshooting table in
docs/operations.md is generated from here (`cpt api-docs --reasons`, drift-tested).
"""

from __future__ import annotations

from enum import Enum


class ConditionType(str, Enum):
    """The `type` of a status condition (metav1.Condition)."""

    Validated = "Validated"
    StorageReady = "StorageReady"
    ClusterReady = "ClusterReady"
    Training = "Training"
    ForgettingDetected = "ForgettingDetected"
    ProbesPassed = "ProbesPassed"
    ProgressIgnored = "ProgressIgnored"
    RayAuth = "RayAuth"
    Succeeded = "Succeeded"
    Failed = "Failed"


CONDITIONS: dict[ConditionType, str] = {
    ConditionType.Validated: "the spec passed every check (ValidWithWarnings: with recommended-practice warnings)",
    ConditionType.StorageReady: "credentials, buckets, data and checkpoint prefix checked before any GPU is requested",
    ConditionType.ClusterReady: "the Ray cluster of the current attempt is up",
    ConditionType.Training: "the trainer reports steps (False with the reason when an attempt failed or the job ended)",
    ConditionType.ForgettingDetected: "a forgetting signal passed its limit (evaluation.forgetting)",
    ConditionType.ProbesPassed: "the latest probe F1 reaches evaluation.probeTargetF1 (only with a target)",
    ConditionType.ProgressIgnored: "the progress file was not taken into the status (damaged, foreign or unreadable)",
    ConditionType.RayAuth: "the Ray cluster of the latest attempt requires a token (KubeRay's authOptions); False: it "
    "runs without authentication",
    ConditionType.Succeeded: "training finished and the model was exported",
    ConditionType.Failed: "the job ended without success; the reason says why",
}

PREFLIGHT = "StorageReady=False"
CLUSTER = "ClusterReady=False"
PROGRESS = "ProgressIgnored=True"
FAILED = "Failed=True"
RETRIED = "AttemptFailed event"
EVENT = "event"
CONDITION = "condition"


class Reason(str, Enum):
    """A CamelCase reason: in conditions, events and the progress file."""

    terminal: bool
    where: str
    description: str

    def __new__(cls, value: str, terminal: bool, where: str, description: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.terminal = terminal
        member.where = where
        member.description = description
        return member

    # -- preflight: checked before any GPU is requested; retried with backoff ----------------
    SecretNotFound = (
        "SecretNotFound",
        False,
        PREFLIGHT,
        "the `spec.storage.credentialsSecret` Secret is missing, lacks `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, "
        "or is unreadable; the message has the `kubectl create secret` command. Retried with backoff.",
    )
    AccessDenied = (
        "AccessDenied",
        False,
        PREFLIGHT,
        "S3 rejected the credentials, or they cannot write below `checkpoint.uri`. Check the keys and the bucket "
        "policy. Retried with backoff.",
    )
    BucketUnreachable = (
        "BucketUnreachable",
        False,
        PREFLIGHT,
        "the bucket does not exist at the endpoint (or S3 answered with an unexpected error); check the bucket "
        "names in the URIs. Retried with backoff.",
    )
    StorageUnreachable = (
        "StorageUnreachable",
        False,
        PREFLIGHT,
        "the S3 endpoint refused the connection or did not answer within the operator's timeouts (the message "
        "names the endpoint and the timeouts); check `spec.storage.endpoint`. Only this job waits: calls to an "
        "endpoint that just failed are skipped for a short while. Retried with backoff.",
    )
    DataNotFound = (
        "DataNotFound",
        False,
        PREFLIGHT,
        "a data URI (named in the message as `spec.data.sources[i].uris[j]`) or the s3:// model source lists no "
        "objects. Retried with backoff.",
    )
    ModelNotFound = (
        "ModelNotFound",
        False,
        PREFLIGHT,
        "the Hugging Face Hub says an `hf://` model (named in the message) does not exist, is gated or private "
        "for the token of `spec.model.tokenSecret`, or rejects that token; fix the id, the token or its access "
        "on the Hub, or set `spec.model.mirror`. Not raised when the operator cannot reach the Hub (a setting). "
        "Retried with backoff.",
    )
    CheckpointNotOnObjectStorage = (
        "CheckpointNotOnObjectStorage",
        False,
        PREFLIGHT,
        "`checkpoint.uri` is a local path; on a cluster it must be `s3://` (local paths work with `cpt run`).",
    )

    # -- reported by the trainer: a restart cannot fix these ---------------------------------
    NonFiniteLoss = (
        "NonFiniteLoss",
        True,
        FAILED,
        "the loss became NaN/inf; nothing was saved after it. Lower the learning rate or check the data; re-apply "
        "to resume from the last committed checkpoint.",
    )
    DataError = (
        "DataError",
        True,
        FAILED,
        "unreadable or malformed data; the message names the source, file and line.",
    )
    SynthesisFailed = (
        "SynthesisFailed",
        True,
        FAILED,
        "a synthesised source (`synthesize`) gave no usable question-answer pairs; the message counts the "
        "rejections per quality gate: loosen `synthesize.filters` or use a stronger generator model.",
    )
    ModelSourceError = (
        "ModelSourceError",
        True,
        FAILED,
        "the model or tokenizer cannot be loaded, or they do not match.",
    )
    ResumeMismatch = (
        "ResumeMismatch",
        True,
        FAILED,
        "the data, weights or seed changed since the checkpoint; restore them, use a new `checkpoint.uri`, or set "
        "`data.allowChangesOnResume: true`.",
    )
    CheckpointOwnedByAnotherJob = (
        "CheckpointOwnedByAnotherJob",
        True,
        FAILED,
        "`checkpoint.uri` holds the run of a job with another name. Use another URI.",
    )
    CheckpointUnloadable = (
        "CheckpointUnloadable",
        True,
        FAILED,
        "a committed checkpoint passed verification but DeepSpeed cannot load it (a DeepSpeed, model or "
        "`deepspeed` config change since it was written); restore them, or use a new `checkpoint.uri`.",
    )
    CacheDamaged = (
        "CacheDamaged",
        True,
        FAILED,
        "a data cache shard changed after it was verified (while training); run again (re-apply): the cache is "
        "verified before training and the entry rebuilt.",
    )
    InvalidSpec = (
        "InvalidSpec",
        True,
        FAILED,
        "the object passed the CRD schema but not the semantic checks; the message names the field and the fix "
        "(`cpt validate` says the same). A running attempt's RayJob is deleted, checkpoints are kept; correct the "
        "spec and the job resumes (event SpecCorrected).",
    )
    RefusedByPolicy = (
        "RefusedByPolicy",
        True,
        FAILED,
        "the job asks for what the cluster's admin policy does not allow: the operator's own identity for storage "
        "(no `spec.storage.credentialsSecret`), a storage endpoint, or a Ray pod setting (image, ServiceAccount, "
        "Secret, volume, securityContext). The message names the field and the rule (docs/security.md); fix the "
        "spec and apply it again: the job resumes (event SpecCorrected).",
    )
    ForgettingDetected = (
        "ForgettingDetected",
        True,
        FAILED,
        "general loss rose past `maxGeneralLossIncrease`; with `action: stop` the job checkpointed and stopped. "
        "Add replay data or lower the LR.",
    )

    # -- reported by the trainer: retried from the last committed checkpoint ------------------
    TrainingFailed = (
        "TrainingFailed",
        False,
        RETRIED,
        "the training processes crashed (lost node, OOM, a bug); the message has the root cause. Retried.",
    )
    FencedOut = (
        "FencedOut",
        False,
        RETRIED,
        "a newer attempt took over the run directory; this attempt stopped without writing.",
    )
    Interrupted = (
        "Interrupted",
        False,
        RETRIED,
        "SIGINT or SIGTERM (Ctrl-C, pod eviction, preemption): the trainer finished its step, committed a "
        "checkpoint when `checkpoint.interruptGraceSeconds` allowed, and stopped; the next attempt resumes.",
    )

    # -- KubeRay's RayJob status.reason ------------------------------------------------------
    DeadlineExceeded = (
        "DeadlineExceeded",
        True,
        FAILED,
        "`runPolicy.activeDeadlineSeconds` passed (KubeRay stopped the attempt).",
    )
    ValidationFailed = (
        "ValidationFailed",
        True,
        FAILED,
        "KubeRay rejected the RayJob the operator built; the message has KubeRay's words. Report it as a bug.",
    )
    SubmissionFailed = (
        "SubmissionFailed",
        False,
        RETRIED,
        "KubeRay could not submit the training entrypoint to the Ray cluster. Retried.",
    )
    AppFailed = (
        "AppFailed",
        False,
        RETRIED,
        "the Ray job failed; see the Ray head's logs. Retried.",
    )
    JobDeploymentStatusTransitionGracePeriodExceeded = (
        "JobDeploymentStatusTransitionGracePeriodExceeded",
        False,
        RETRIED,
        "KubeRay gave up waiting for the Ray cluster (image pull, scheduling). Retried.",
    )

    # -- decided by the operator --------------------------------------------------------------
    RayJobFailed = (
        "RayJobFailed",
        False,
        RETRIED,
        "the RayJob failed without a reason from KubeRay or the trainer. Retried.",
    )
    RayJobMissing = (
        "RayJobMissing",
        False,
        RETRIED,
        "the RayJob was deleted by someone else. Retried.",
    )
    NoResult = (
        "NoResult",
        False,
        RETRIED,
        "the RayJob completed but the trainer wrote no final state (e.g. killed during export). Retried.",
    )
    RestartLimitReached = (
        "RestartLimitReached",
        True,
        FAILED,
        "`runPolicy.maxRestarts` attempts failed. Fix the cause (see the AttemptFailed events and the Ray logs), "
        "then delete and re-apply the job: it resumes.",
    )
    Completed = ("Completed", False, "Succeeded=True", "training finished and the model was exported.")
    ForeignObject = (
        "ForeignObject",
        False,
        CLUSTER,
        "a RayJob, ConfigMap, NetworkPolicy or token Secret with the name this job needs exists but is not owned by "
        "it (left by an earlier CPTJob of the same name, or made by someone else). The operator neither adopts nor "
        "deletes it: delete it (the message has the command). Retried with backoff.",
    )
    RayAuthSecretDamaged = (
        "RayAuthSecretDamaged",
        False,
        CLUSTER,
        "the Secret `<job>-ray-auth` that the operator made for the job's Ray token has no usable `auth_token` "
        "(changed by hand); delete it and the operator makes a new one. Retried with backoff.",
    )

    # -- Ray's authentication (condition RayAuth), set when an attempt starts -----------------
    TokenAuth = (
        "TokenAuth",
        False,
        CONDITION,
        "RayAuth=True: the attempt's Ray cluster requires a token: the job's own, in the Secret `<job>-ray-auth` the "
        "operator owns (KubeRay 1.6+), or one KubeRay generates per Ray cluster (1.5.1+).",
    )
    RayAuthUnsupported = (
        "RayAuthUnsupported",
        False,
        "warning; RayAuth=False",
        "the installed KubeRay's RayJob CRD has no `rayClusterSpec.authOptions` (KubeRay before 1.5.1): the Ray "
        "cluster runs without authentication, and only the job's NetworkPolicy keeps other pods out of it. "
        "Upgrade KubeRay (1.6 or later).",
    )
    RayAuthUnverified = (
        "RayAuthUnverified",
        False,
        "warning; RayAuth=Unknown",
        "the operator could not read the `rayjobs.ray.io` CRD (the message says why) and asked for token "
        "authentication anyway, which a KubeRay before 1.5.1 ignores. Grant the operator `get` on that CRD, or set "
        "the chart's `operator.kuberayAuth` to what the installed KubeRay supports.",
    )
    RayAuthDisabled = (
        "RayAuthDisabled",
        False,
        "RayAuth=False",
        "the operator's setting `kuberayAuth` is `off`: the Ray cluster runs without authentication.",
    )

    # -- the progress file: ignored, never a phase change ------------------------------------
    ProgressUnreadable = (
        "ProgressUnreadable",
        False,
        PROGRESS,
        "`_status/progress.json` is damaged or carries impossible values (e.g. step beyond totalSteps, negative "
        "counts); it is ignored and the status keeps the last good values.",
    )
    ProgressForeign = (
        "ProgressForeign",
        False,
        PROGRESS,
        "`_status/progress.json` below `checkpoint.uri` was written by another job; two jobs share a run "
        "directory. Give each job its own `checkpoint.uri`.",
    )
    ProgressUnavailable = (
        "ProgressUnavailable",
        False,
        PROGRESS,
        "the progress file could not be read (S3 timeout or error, named in the message); read again at the next poll.",
    )
    ProgressAccepted = ("ProgressAccepted", False, "ProgressIgnored=False", "the progress file is read again.")

    # -- events and the other conditions ------------------------------------------------------
    CheckpointDamaged = (
        "CheckpointDamaged",
        False,
        "warning; `status.checkpoint.skipped`",
        "a committed checkpoint failed verification (a file missing, cut short or changed) or loading; it was "
        "moved to `<checkpoint.uri>/_damaged/` and the run resumed from the newest good one.",
    )
    AttemptStarted = ("AttemptStarted", False, EVENT, "a RayJob was created for a new attempt.")
    AttemptFailed = (
        "AttemptFailed",
        False,
        EVENT,
        "an attempt failed; the event names the cause and the checkpoint step the next attempt resumes from.",
    )
    LogsCopied = (
        "LogsCopied",
        False,
        EVENT,
        "the logs of an ended attempt's pods (driver, Ray head, workers) were copied to "
        "`<checkpoint.uri>/logs/attempt-N/` before its RayJob was deleted.",
    )
    LogsNotCopied = (
        "LogsNotCopied",
        False,
        EVENT,
        "warning: some or all logs of an ended attempt could not be copied (pods gone, API or storage error); the "
        "message says which and why.",
    )
    Resumed = ("Resumed", False, EVENT, "`runPolicy.suspend` was set back to false; a new attempt resumes.")
    SpecCorrected = (
        "SpecCorrected",
        False,
        EVENT,
        "a job that failed with InvalidSpec or RefusedByPolicy has a valid spec again; a new attempt resumes from "
        "the last committed checkpoint.",
    )
    RecommendedPractice = (
        "RecommendedPractice",
        False,
        EVENT,
        "the spec deviates from recommended CPT practice (learning rate, data mix); a warning, never a rejection.",
    )
    Valid = ("Valid", False, CONDITION, "Validated=True: the spec passed every check.")
    ValidWithWarnings = ("ValidWithWarnings", False, CONDITION, "Validated=True, with recommended-practice warnings.")
    Ready = ("Ready", False, CONDITION, "StorageReady=True: credentials, buckets, data and checkpoint prefix checked.")
    StageStarted = ("StageStarted", False, EVENT, "training entered the next stage of spec.stages.")
    ProbeTargetMet = (
        "ProbeTargetMet",
        False,
        CONDITION,
        "ProbesPassed=True: the latest probe F1 reaches evaluation.probeTargetF1.",
    )
    ProbeTargetMissed = (
        "ProbeTargetMissed",
        False,
        CONDITION,
        "ProbesPassed=False: the latest probe F1 is below evaluation.probeTargetF1 (training goes on).",
    )
    Creating = ("Creating", False, CONDITION, "ClusterReady=False: the RayJob was created, the cluster is starting.")
    Running = ("Running", False, CONDITION, "ClusterReady=True: the Ray cluster is up.")
    Training = ("Training", False, CONDITION, "Training=True: the trainer reports steps.")
    Suspended = ("Suspended", False, CONDITION, "`runPolicy.suspend` is true: the RayJob is deleted, checkpoints kept.")
    GeneralLossIncreased = (
        "GeneralLossIncreased",
        False,
        CONDITION,
        "ForgettingDetected=True: general loss rose past the limit (with `action: warn` training goes on).",
    )

    @classmethod
    def parse(cls, text: str | None) -> Reason | None:
        """The member named `text`; None for a reason this version does not know (never terminal)."""
        return cls._value2member_map_.get(text or "")  # type: ignore[return-value]

    @classmethod
    def is_terminal(cls, text: str | None) -> bool:
        reason = cls.parse(text)
        return reason is not None and reason.terminal

    def __str__(self) -> str:
        return self.value


def reason_of(error: BaseException) -> Reason | None:
    """The Reason an error carries, if any: the one way an exception says why it happened is a class
    attribute `reason = Reason.X` (the trainer's launcher classifies failures by it)."""
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, Reason) else None


def reasons_table() -> str:
    """The condition and troubleshooting tables of docs/operations.md (generated; a test fails on drift)."""
    lines = ["| condition | meaning |", "|---|---|"]
    lines += [f"| `{kind.value}` | {text} |" for kind, text in CONDITIONS.items()]
    lines += ["", "| reason | where | terminal | meaning and fix |", "|---|---|---|---|"]
    for reason in Reason:
        lines.append(
            f"| `{reason.value}` | {reason.where} | {'yes' if reason.terminal else ''} | {reason.description} |"
        )
    return "\n".join(lines) + "\n"
