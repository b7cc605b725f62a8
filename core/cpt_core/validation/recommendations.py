"""Recommended continued pre-training practice, as warnings (never a rejection).

An Event and a condition message on a cluster, a `warning:` line from `cpt validate` and `cpt run` --
never a rejection (the user may know better). The recommended ranges are here, beside the checks that use
them.
"""

from __future__ import annotations

from cpt_core.api import v1alpha1 as api
from cpt_core.validation.problem import Problem

#: Recommended learning-rate ranges by model kind. Continued pre-training of an instruct model wants a gentle
#: LR (it already sits in a good basin and forgets fast); a base model tolerates and needs more.
LR_RANGES: dict[str, tuple[float, float]] = {"instruct": (2.0e-5, 1.0e-4), "base": (1.0e-4, 5.0e-4)}
#: Recommended share (percent of weight) of general replay data and of instruction data.
REPLAY_RANGE_PCT = (5.0, 10.0)
INSTRUCTION_RANGE_PCT = (1.0, 5.0)
#: Recommended training length (optimizer steps) by model kind: instruct models forget fast and need
#: little; base models take more to absorb a domain.
DURATION_STEPS: dict[str, tuple[int, int | None]] = {"instruct": (100, 500), "base": (500, None)}


def _learning_rate(path: str, lr: float, kind: str) -> list[Problem]:
    low, high = LR_RANGES[kind]
    if low <= lr <= high:
        return []
    direction = "above" if lr > high else "below"
    why = (
        "a high learning rate on an instruct model erases instruction following and general knowledge"
        if lr > high and kind == "instruct"
        else "too high a learning rate causes loss spikes and forgetting"
        if lr > high
        else "too low a learning rate learns little new domain knowledge"
    )
    return [Problem(path, f"{lr:g} is {direction} the recommended range {low:g}..{high:g} for {kind} models; {why}")]


def _mixture(path: str, spec: api.CPTJobSpec, weights: dict[str, int]) -> list[Problem]:
    """Replay and instruction shares of one mixture (the job's, or a CPT stage's)."""
    out: list[Problem] = []
    total = sum(weights.values())
    if total <= 0:
        return out
    # Question-answer pairs synthesised from the domain documents carry domain knowledge, not general
    # instruction following: they count as domain data here.
    roles = {s.name: api.SourceRole.domain if s.synthesize is not None else s.role for s in spec.data.sources}
    share = {
        role: 100.0 * sum(weights.get(s.name, 0) for s in spec.data.sources if roles[s.name] == role) / total
        for role in api.SourceRole
    }
    replay = share[api.SourceRole.replay]
    lo, hi = REPLAY_RANGE_PCT
    if replay == 0:
        out.append(
            Problem(
                path,
                "no source with role: replay (weight > 0); without replay of general data continued "
                f"pre-training tends to catastrophically forget general capabilities; add {lo:g}-{hi:g} % "
                "general data, which also gives the forgetting watch its general holdout",
            )
        )
    elif not lo <= replay <= hi:
        effect = "too little to prevent forgetting" if replay < lo else "slows domain learning"
        out.append(Problem(path, f"replay is {replay:.1f} % of the mixture; recommended {lo:g}-{hi:g} % ({effect})"))
    if spec.model.kind == "instruct":
        instruction = share[api.SourceRole.instruction]
        lo, hi = INSTRUCTION_RANGE_PCT
        if instruction == 0:
            out.append(
                Problem(
                    path,
                    "instruct model without instruction data: continued pre-training on raw text erodes "
                    f"instruction following; add {lo:g}-{hi:g} % chat data (role: instruction, format: chat)",
                )
            )
        elif not lo <= instruction <= hi:
            out.append(
                Problem(
                    path,
                    f"instruction data is {instruction:.1f} % of the mixture; recommended {lo:g}-{hi:g} % "
                    "(enough to keep instruction following without diluting the domain signal)",
                )
            )
    return out


def _is_cpt(spec: api.CPTJobSpec, weights: dict[str, int]) -> bool:
    """A stage that trains on domain documents (not a QA- or instruction-tuning stage)."""
    return any(weights.get(s.name, 0) > 0 for s in spec.data.sources if s.role == api.SourceRole.domain)


def _duration(spec: api.CPTJobSpec) -> list[Problem]:
    kind, steps = spec.model.kind, spec.total_steps
    low, high = DURATION_STEPS[kind]
    path = "spec.stages" if spec.stages else "spec.training.steps"
    article, span = ("an" if kind == "instruct" else "a"), (f"{low}-{high}" if high else f"{low}+")
    if steps < low:
        return [
            Problem(
                path,
                f"{steps} steps is short for {article} {kind} model (recommended {span}); expect little domain gain",
            )
        ]
    if high is not None and steps > high:
        return [
            Problem(
                path,
                f"{steps} steps is long for an {kind} model (recommended {low}-{high}); long runs erode "
                "instruction following and general knowledge: watch the forgetting signals",
            )
        ]
    return []


def recommendations(spec: api.CPTJobSpec) -> list[Problem]:
    """Deviations from recommended CPT practice. Warnings only: the user may know better."""
    kind = spec.model.kind
    out = _learning_rate("spec.training.learningRate", spec.learning_rate, kind)
    if spec.stages:
        for i, stage in enumerate(spec.stages):
            if stage.learning_rate is not None:
                out += _learning_rate(f"spec.stages[{i}].learningRate", stage.learning_rate, kind)
            if _is_cpt(spec, stage.weights):
                out += _mixture(f"spec.stages[{i}].weights", spec, stage.weights)
    else:
        out += _mixture("spec.data.sources", spec, {s.name: s.weight or 0 for s in spec.data.sources})
    out += _duration(spec)
    for i, source in enumerate(spec.data.sources):
        if source.role == api.SourceRole.instruction and source.format != api.SourceFormat.chat:
            out.append(
                Problem(
                    f"spec.data.sources[{i}].format",
                    "instruction sources are usually format: chat, so that loss falls on assistant turns only",
                )
            )
    if spec.data.validation.holdout_documents == 0:
        out.append(
            Problem(
                "spec.data.validation.holdoutDocuments",
                "0 disables evaluation: no domain/general loss and no forgetting watch",
            )
        )
    if spec.checkpoint.interval_steps >= spec.total_steps:
        out.append(
            Problem(
                "spec.checkpoint.intervalSteps",
                f"{spec.checkpoint.interval_steps} >= the job's {spec.total_steps} steps: only the final "
                "checkpoint is written, so a failure restarts from step 0",
            )
        )
    out += _network(spec)
    resolved = spec.resolved()
    s3 = [
        resolved.checkpoint.uri,
        resolved.cache_uri,
        resolved.model.source,
        *(u for s in spec.data.sources for u in s.uris),
    ]
    if not spec.storage.credentials_secret and any(uri.startswith("s3://") for uri in s3):
        out.append(
            Problem(
                "spec.storage.credentialsSecret",
                "unset: the operator and the Ray pods would use their ambient identity for s3:// (an IAM role); a "
                "shared cluster refuses that unless its admin allows it for the namespace (docs/security.md)",
            )
        )
    managed = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"}
    for key in sorted(managed & set(spec.deepspeed.config)):
        out.append(
            Problem(
                f"spec.deepspeed.config.{key}",
                "overrides the batch geometry derived from training.globalBatchTokens and microBatchSize",
            )
        )
    return out


def _network(spec: api.CPTJobSpec) -> list[Problem]:
    """Models fetched from the Hugging Face Hub need internet access where the job runs."""
    out = [
        Problem(
            field,
            f"hf://{repo} is downloaded from the Hugging Face Hub when the job starts: a cluster without internet "
            "egress (or behind a proxy: set HTTPS_PROXY in spec.cluster.podOverrides[].env) fails there; set "
            "spec.model.mirror to an S3 copy of the Hub, or use an s3:// source",
        )
        for field, repo in spec.hub_models()
    ]
    uris = [spec.model.source, spec.model.tokenizer]
    uris += [s.synthesize.generator.model for s in spec.data.sources if s.synthesize is not None]
    if spec.model.mirror is not None and not any(uri and uri.startswith("hf://") for uri in uris):
        out.append(Problem("spec.model.mirror", "unused: no model, tokenizer or generator is an hf:// id"))
    return out
