"""The exported model's card (`final/README.md`), written with huggingface_hub's ModelCard.

Metadata the Hub reads (base_model, datasets, license, language, pipeline_tag, tags) plus the CPT
recipe (stages, data mixture, steps, tokens) and the evaluation before and after training (domain and
general holdout loss, probes, instruction following) as tables. The license is `export.license`, else
the base model's (from its own card, when the base model directory has one).

The card in `final/` names where the model and the data came from. The card uploaded to the Hub does not
(`locations=False`, unless `export.push.includeLocations`): bucket names, prefixes and local paths say
more about an organisation than a public card should; only Hub ids (`hf://`) are public anyway.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cpt_core.api.v1alpha1 import CPTJobSpec
from huggingface_hub import ModelCard, ModelCardData

log = logging.getLogger(__name__)

#: (label, summary key prefix, lower is better) of the evaluation table; the summary holds
#: `<prefix>Before` / `<prefix>After` (Evaluator.summary).
EVAL_ROWS: list[tuple[str, str, bool]] = [
    ("domain holdout loss", "domainLoss", True),
    ("general holdout loss", "generalLoss", True),
    ("chat holdout loss", "instructionLoss", True),
    ("probe F1", "probeF1", False),
    ("probe exact match", "probeExactMatch", False),
    ("instruction following (prompt accuracy)", "instructionFollowing", False),
]


def hub_id(uri: str) -> str:
    """`hf://org/name` -> `org/name` (what the Hub links); any other URI as it is."""
    return uri[len("hf://") :].strip("/") if uri.startswith("hf://") else uri


#: What a card without locations says in place of one that is not a Hub id.
PRIVATE = "(private)"


def shown(uri: str, locations: bool) -> str:
    """`uri` as a card shows it: itself, or without `locations` only a Hub id (`hf://...`)."""
    return uri if locations or uri.startswith("hf://") else PRIVATE


def base_card(directory: Path | None) -> dict[str, Any]:
    """The metadata of the base model's own card (license, language), or {} without one."""
    if directory is None or not (directory / "README.md").is_file():
        return {}
    try:
        return ModelCard.load(directory / "README.md").data.to_dict()
    except Exception as exc:  # a card we cannot parse only costs us its license and language
        log.warning("the base model's README.md has no readable card metadata: %s", exc)
        return {}


def base_model_id(spec: CPTJobSpec) -> str | None:
    """The Hub id the job continued: `hf://org/name`, also when a resolved spec reads it from its mirror."""
    source, mirror = spec.model.source, spec.model.mirror
    if source.startswith("hf://"):
        return hub_id(source)
    if mirror is not None and source.startswith(mirror.rstrip("/") + "/"):
        return source[len(mirror.rstrip("/")) + 1 :].strip("/") or None
    return None


def card_data(spec: CPTJobSpec, job: str, base: dict[str, Any], locations: bool = True) -> ModelCardData:
    uris = [uri for s in spec.data.sources for uri in s.uris if locations or uri.startswith("hf://")]
    datasets = list(dict.fromkeys(hub_id(uri) for uri in uris))
    return ModelCardData(
        model_name=job,
        base_model=base_model_id(spec),
        datasets=datasets or None,
        license=spec.checkpoint.export.license or base.get("license"),
        language=base.get("language"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["continued-pretraining", "cpt-operator", f"{spec.model.kind}-model"],
    )


def _base(spec: CPTJobSpec, locations: bool) -> str:
    """The starting model as the card names it: its Hub id where it has one (also read from a mirror)."""
    hub = base_model_id(spec)
    if hub is not None and not spec.model.source.startswith("hf://") and not locations:
        return f"`hf://{hub}`"
    where = shown(spec.model.source, locations)
    return "a model in a private location" if where == PRIVATE else f"`{where}`"


def _recipe(spec: CPTJobSpec, summary: dict[str, Any], locations: bool) -> str:
    from cpt_trainer.plan.stages import plan

    stages = plan(spec)
    lines = [
        "## Continued pre-training recipe",
        "",
        f"Continued from {_base(spec, locations)} ({spec.model.kind} model"
        + (", LoRA merged into the weights" if spec.training.lora is not None else "")
        + ").",
        "",
        f"- steps: {summary.get('steps', spec.total_steps)} of {spec.total_steps}, "
        f"{spec.training.global_batch_tokens:,} tokens per step, "
        f"{summary.get('tokens', spec.total_steps * spec.training.global_batch_tokens):,} tokens in all",
        f"- sequence length {spec.data.sequence_length}, peak learning rate {spec.learning_rate:g} "
        f"({spec.training.schedule.type.value} schedule), seed {spec.training.seed}",
        f"- DeepSpeed ZeRO stage {spec.deepspeed.zero_stage}, exported as {spec.checkpoint.export.dtype}",
        "",
        "### Stages and data mixture",
        "",
        "| source | role | " + " | ".join(f"{s.name} ({s.steps} steps)" for s in stages) + " | uris |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for source in spec.data.sources:
        shares = [
            f"{100 * stage.weights.get(source.name, 0) / max(1, sum(stage.weights.values())):.1f} %" for stage in stages
        ]
        lines.append(
            f"| {source.name} | {source.role.value} | {' | '.join(shares)} | "
            + ", ".join(dict.fromkeys(shown(str(uri), locations) for uri in source.uris))
            + " |"
        )
    return "\n".join(lines)


def _evaluation(summary: dict[str, Any]) -> str:
    rows = []
    for label, key, lower_is_better in EVAL_ROWS:
        before, after = summary.get(f"{key}Before"), summary.get(f"{key}After")
        if before is None and after is None:
            continue
        change = "" if before is None or after is None else f"{after - before:+.4f}"
        better = "lower is better" if lower_is_better else "higher is better"
        rows.append(f"| {label} ({better}) | {_num(before)} | {_num(after)} | {change} |")
    if not rows:
        return "## Evaluation\n\nNo evaluation ran (spec.evaluation)."
    head = ["## Evaluation", "", "| metric | before | after | change |", "|---|---|---|---|"]
    return "\n".join(head + rows)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def model_card(
    spec: CPTJobSpec,
    job: str,
    summary: dict[str, Any],
    base_model_dir: Path | None = None,
    locations: bool = True,
) -> ModelCard:
    """The card of the export (`ModelCard(...).save(path)` writes README.md); without `locations`, the card for
    the Hub: no `s3://`, `file://` or local path in it, Hub ids only."""
    data = card_data(spec, job, base_card(base_model_dir), locations)
    body = "\n\n".join(
        [
            f"# {job}",
            f"Continued pre-training of {_base(spec, locations)} with "
            "[cpt-operator](https://github.com/cpt-operator/cpt-operator).",
            _recipe(spec, summary, locations),
            _evaluation(summary),
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")
