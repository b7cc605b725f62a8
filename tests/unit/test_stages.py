"""Multi-stage recipes: the spec's rules, the plan, mixture arithmetic, and the stage log."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from cpt_core.validation.validate import validate
from cpt_trainer.data.feed import replay_share, with_replay_share
from cpt_trainer.plan.stages import StageLog, plan

from devkit.jobs import tiny_job_doc

STAGES = [
    {"name": "qa", "steps": 4, "weights": {"veloria": 100}, "learningRate": 1e-3},
    {"name": "cpt", "tokens": 6 * 1024, "weights": {"veloria": 90, "general": 10}, "resetOptimizer": False},
    {"name": "final", "steps": 2, "weights": {"general": 1}, "weightDecay": 0.0, "schedule": {"type": "constant"}},
]


def staged(**spec: Any) -> dict[str, Any]:
    doc = tiny_job_doc()
    del doc["spec"]["training"]["steps"]
    doc["spec"]["stages"] = copy.deepcopy(STAGES)
    for key, value in spec.items():
        doc["spec"][key] = value
    return doc


def errors(doc: dict[str, Any]) -> list[str]:
    return [str(e) for e in validate(doc).errors]


def test_a_staged_job_is_valid_and_plans_its_stages() -> None:
    report = validate(staged())
    assert report.ok, report.errors
    spec = report.job.spec.resolved()
    assert spec.total_steps == 4 + 6 + 2
    stages = plan(spec)
    assert [(s.name, s.start, s.end) for s in stages] == [("qa", 0, 4), ("cpt", 4, 10), ("final", 10, 12)]
    qa, cpt, final = stages
    assert qa.weights == {"veloria": 100, "general": 0} and final.weights == {"veloria": 0, "general": 1}
    assert qa.learning_rate == 1e-3 and cpt.learning_rate == spec.learning_rate  # training's LR by default
    assert not qa.reset_optimizer and not cpt.reset_optimizer and final.reset_optimizer  # the first never resets
    assert final.weight_decay == 0.0 and cpt.weight_decay == spec.training.weight_decay
    # Each stage has its own schedule: warmup starts again at a stage's first step.
    assert cpt.lr_at(4) == pytest.approx(spec.learning_rate / spec.training.schedule.warmup_steps)
    assert final.lr_at(10) == final.lr_at(11) == spec.learning_rate


def test_a_job_without_stages_is_one_stage_with_the_sources_weights() -> None:
    report = validate(tiny_job_doc())
    (main,) = plan(report.job.spec.resolved())
    assert (main.name, main.start, main.steps, main.weights) == ("main", 0, 30, {"veloria": 90, "general": 10})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["spec"]["stages"].append(dict(STAGES[0])), "spec.stages[3].name: duplicate stage name 'qa'"),
        (
            lambda d: d["spec"]["stages"][1]["weights"].update({"legal": 5}),
            "spec.stages[1].weights: names 'legal', not a source in spec.data.sources (declared: veloria, general)",
        ),
        (lambda d: d["spec"]["stages"][0].update({"weights": {"veloria": 0}}), "spec.stages[0].weights: at least one"),
        (
            lambda d: d["spec"]["stages"][0].update({"tokens": 10}),
            "spec.stages[0]: give exactly one of steps and tokens",
        ),
        (lambda d: d["spec"]["training"].update({"steps": 5}), "spec.training: leave steps and tokens unset"),
    ],
)
def test_stage_rules_name_the_field(change: Any, message: str) -> None:
    doc = staged()
    change(doc)
    assert any(e.startswith(message) for e in errors(doc)), errors(doc)


def test_sources_need_weights_only_without_stages() -> None:
    doc = staged()
    for source in doc["spec"]["data"]["sources"]:
        del source["weight"]
    assert validate(doc).ok
    plain = tiny_job_doc()
    del plain["spec"]["data"]["sources"][1]["weight"]
    assert "spec.data.sources[1].weight: required (or give the weights per stage in spec.stages)" in errors(plain)


def test_cel_rules_match_the_models_for_stages() -> None:
    """What `kubectl apply` rejects (the CRD's CEL rules) is what the models reject."""
    from cpt_core.validation.validate import cel_violations

    assert cel_violations(staged()) == []
    doc = staged()
    doc["spec"]["stages"][1]["weights"]["legal"] = 5
    assert [str(p) for p in cel_violations(doc)] == [
        "spec.stages: every weight must name a source of spec.data.sources"
    ]
    doc = staged()
    doc["spec"]["stages"][2]["name"] = "qa"
    assert "spec.stages: stage names must be unique" in [str(p) for p in cel_violations(doc)]
    doc = staged()
    doc["spec"]["training"]["steps"] = 3
    assert "spec.training: give exactly one of steps and tokens" in [str(p) for p in cel_violations(doc)]
    doc = staged()
    doc["spec"]["stages"][0]["weights"] = {"veloria": 0}
    assert "spec.stages[0].weights: at least one weight must be > 0" in [str(p) for p in cel_violations(doc)]
    old = staged()
    new = staged()
    new["spec"]["stages"][0]["steps"] = 5
    assert "spec.stages is immutable" in " ".join(str(p) for p in cel_violations(new, old))


def test_mixture_warnings_apply_to_cpt_stages_only() -> None:
    warnings = [str(w) for w in validate(staged()).warnings]
    # qa (domain only, no replay) is a CPT stage by its weights; final (replay only) is not.
    assert any(w.startswith("spec.stages[0].weights: no source with role: replay") for w in warnings)
    assert not any(w.startswith("spec.stages[1].weights") for w in warnings)  # 10 % replay: in range
    assert not any(w.startswith("spec.stages[2]") for w in warnings)
    assert any("steps is short for a base model" in w for w in warnings)


@pytest.mark.parametrize(("share", "expected"), [(0.2, {"d": 800, "r": 200}), (0.1, {"d": 900, "r": 100})])
def test_replay_share_rescales_weights(share: float, expected: dict[str, int]) -> None:
    roles = {"d": "domain", "r": "replay"}
    assert with_replay_share({"d": 90, "r": 10}, roles, share) == expected
    assert replay_share(expected, roles) == pytest.approx(share)


def test_replay_share_keeps_proportions_and_fills_absent_replay() -> None:
    roles = {"a": "domain", "b": "domain", "chat": "instruction", "r1": "replay", "r2": "replay"}
    weights = with_replay_share({"a": 60, "b": 20, "chat": 20, "r1": 0, "r2": 0}, roles, 0.25)
    assert sum(weights.values()) == 1000
    assert (weights["r1"], weights["r2"]) == (125, 125)  # no replay weight before: shared equally
    assert (weights["a"], weights["b"], weights["chat"]) == (450, 150, 150)  # 3:1:1 kept


def test_stage_log_reports_steps_within_each_stage() -> None:
    stages = plan(validate(staged()).job.spec.resolved())
    log = StageLog(stages)
    assert log.started(stages[0]) and not log.started(stages[0])  # announced once
    log.finished(stages[0], None)
    log.started(stages[1])
    status = {s.name: s for s in log.status(step=6)}
    assert (status["qa"].phase, status["qa"].step) == ("Succeeded", 4)
    assert (status["cpt"].phase, status["cpt"].step, status["cpt"].total_steps) == ("Running", 2, 6)
    assert (status["final"].phase, status["final"].step) == ("Pending", 0)
    restored = StageLog(stages)
    restored.load_state_dict(log.state_dict())
    assert restored.status(6) == log.status(6)
