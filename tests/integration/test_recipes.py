"""Recipes in one process (real DeepSpeed on CPU): stages, exact resume inside a stage, adaptive
replay reproduced after a resume, probes and instruction following at every evaluation, and the
regularisation penalties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cpt_trainer.train.step import reset_optimizer

from devkit.jobs import tiny_job
from tests.support.faults import Faults, InjectedFault
from tests.support.trainer_runs import AfterStep, TrainerFactory, read_progress, spec_for

ROWS = 4  # globalBatchTokens 512 / sequenceLength 128
SEQ = 128


def staged_spec(run: Path, **overrides: Any) -> Any:
    stages = [
        {"name": "qa", "steps": 4, "weights": {"veloria": 1}},
        {"name": "cpt", "steps": 6, "weights": {"veloria": 3, "general": 1}, "resetOptimizer": False},
        {"name": "final", "steps": 2, "weights": {"general": 1}, "learningRate": 5e-4},
    ]
    doc: dict[str, Any] = {"stages": stages, "training": {"steps": None}, **overrides}
    return spec_for(run, **doc)


def optimizer_steps(trainer: Any) -> int:
    """The AdamW step count of the first parameter group (0 after a reset)."""
    optimizer = trainer.engine.optimizer
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    state = next(iter(optimizer.state.values()), None)
    return 0 if state is None else int(state["step"])


def test_stages_train_in_order_with_their_own_mixture_schedule_and_optimizer(
    tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    seen: dict[int, int] = {}
    trainer = trainer_factory(
        staged_spec(tmp_path / "run"), hooks=(AfterStep(lambda t: seen.update({t.step: optimizer_steps(t)})),)
    )
    outcome = trainer.fit()
    assert outcome.state == "succeeded" and outcome.step == 12
    progress = read_progress(tmp_path / "run")
    stages = {s.name: s for s in progress.stages}
    assert [s.name for s in progress.stages] == ["qa", "cpt", "final"] and progress.stage == "final"
    for name, end in (("qa", 4), ("cpt", 10), ("final", 12)):
        assert stages[name].phase == "Succeeded" and stages[name].evaluation.step == end
        assert stages[name].started_at and stages[name].finished_at
    # Mixtures: qa draws only veloria, final only general; cpt 3:1 (exactly, its period is 4 samples).
    consumed = {s.name: s.tokens_consumed // SEQ for s in progress.data.sources}
    assert consumed == {"veloria": 4 * ROWS + 6 * ROWS * 3 // 4, "general": 6 * ROWS // 4 + 2 * ROWS}
    # Schedules restart per stage: warmup (3 steps) at each stage's first step, final's own peak.
    lrs = {m["step"]: m["lr"] for m in trainer.state.metrics if m["kind"] == "train"}
    peak = trainer.spec.learning_rate
    assert (
        lrs[1] == pytest.approx(peak / 3) and lrs[5] == pytest.approx(peak / 3) and lrs[11] == pytest.approx(5e-4 / 2)
    )
    assert {m["stage"] for m in trainer.state.metrics if m["kind"] == "train" and m["step"] in (4, 5, 11)} == {
        "qa",
        "cpt",
        "final",
    }
    # cpt kept qa's optimizer moments (resetOptimizer: false); final started fresh (the default).
    assert seen[5] == 5 and seen[11] == 1 and seen[12] == 2
    assert (tmp_path / "run" / "report" / "loss.png").exists()


def test_resume_inside_the_second_stage_is_exact(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    reference = trainer_factory(staged_spec(tmp_path / "a")).fit()
    run = tmp_path / "b"
    crashing = trainer_factory(staged_spec(run), hooks=(Faults(raise_at_step=7),))
    with pytest.raises(InjectedFault):
        crashing.fit()
    # Step 6's checkpoint may still be uploading when step 7 crashes (on a loaded machine it is): let it
    # commit, so the resume point is step 6 every time (an older one is tested in test_checkpoint_integrity).
    crashing.checkpointer.finish()
    resumed = trainer_factory(staged_spec(run), attempt=2)
    assert resumed.step == 6 and resumed.data.stage.name == "cpt"
    outcome = resumed.fit()
    assert outcome.state == "succeeded"
    for step in range(7, 13):
        assert outcome.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step
    progress = read_progress(run)
    assert [s.phase for s in progress.stages] == ["Succeeded"] * 3


def test_a_resume_exactly_at_a_stage_boundary_resets_like_the_uninterrupted_run(
    tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    reference = trainer_factory(staged_spec(tmp_path / "a")).fit()
    run = tmp_path / "b"
    crashing = trainer_factory(staged_spec(run), hooks=(Faults(raise_at_step=10),))
    with pytest.raises(InjectedFault):
        crashing.fit()
    crashing.checkpointer.finish()  # the boundary's checkpoint was uploading when the process died: commit it
    resumed = trainer_factory(staged_spec(run), attempt=2)
    assert resumed.step == 10  # the checkpoint at the end of cpt
    outcome = resumed.fit()
    for step in (11, 12):
        assert outcome.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step


def forgetting_spec(run: Path, pretrained: Path, **overrides: Any) -> Any:
    """Continue a model that knows the general text on domain text only: general loss rises."""
    sources = tiny_job().spec.data.sources
    return spec_for(
        run,
        model={"source": str(pretrained), "init": "pretrained"},
        data={"sources": [{**sources[0].wire(), "weight": 19}, {**sources[1].wire(), "weight": 1}]},
        training={"steps": 16, "learningRate": 1e-2, "schedule": {"warmupSteps": 0, "type": "constant"}},
        evaluation={
            "intervalSteps": 2,
            "forgetting": {"maxGeneralLossIncrease": 0.02, "action": "adapt", "maxReplayShare": 0.5, "adaptStep": 0.1},
        },
        checkpoint={"intervalSteps": 2},
        **overrides,
    )


@pytest.fixture(scope="module")
def general_model(tmp_path_factory: pytest.TempPathFactory, trainer_factory: TrainerFactory) -> Path:
    root = tmp_path_factory.mktemp("general")
    general_only = {"sources": [{**tiny_job().spec.data.sources[1].wire(), "role": "domain", "weight": 1}]}
    spec = spec_for(
        root / "pre", data=general_only, training={"steps": 40, "learningRate": 3e-3}, evaluation={"intervalSteps": 40}
    )
    assert trainer_factory(spec).fit().state == "succeeded"
    return root / "pre" / "final"


def test_adaptive_replay_raises_the_share_and_a_resume_reproduces_it(
    tmp_path: Path, general_model: Path, trainer_factory: TrainerFactory
) -> None:
    reference = trainer_factory(forgetting_spec(tmp_path / "a", general_model)).fit()
    changes = read_progress(tmp_path / "a").data.mixture_changes
    assert changes, "the watch never adapted the mixture"
    assert changes[0].replay_share == pytest.approx(0.15) and changes[0].reason.startswith("forgetting: generalLoss")
    assert all(c.replay_share <= 0.5 for c in changes)
    assert read_progress(tmp_path / "a").state == "succeeded"  # adapt never stops the run

    run = tmp_path / "b"
    crash = changes[0].step + 3  # after the first change, before the next checkpoint
    with pytest.raises(InjectedFault):
        trainer_factory(forgetting_spec(run, general_model), hooks=(Faults(raise_at_step=crash),)).fit()
    outcome = trainer_factory(forgetting_spec(run, general_model), attempt=2).fit()
    assert read_progress(run).data.mixture_changes == changes
    for step in range(crash, 17):
        assert outcome.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step


def test_probes_and_instruction_following_at_every_evaluation(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    probes = tmp_path / "probes.jsonl"
    probes.write_text(
        "".join(json.dumps({"question": f"What is item {i}?", "answer": f"item {i}"}) + "\n" for i in range(30))
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Say hi in lowercase.", "rules": [{"type": "lowercase"}]})
        + "\n"
        + json.dumps({"prompt": "Write at most three words.", "rules": [{"type": "word_count", "max": 3}]})
        + "\n"
    )
    spec = spec_for(
        tmp_path / "run",
        training={"steps": 4},
        evaluation={
            "intervalSteps": 2,
            "probes": str(probes),
            "maxProbes": 25,
            "probeMaxNewTokens": 4,
            "instructionFollowing": {"enabled": True, "prompts": str(prompts), "maxNewTokens": 6},
        },
    )
    trainer = trainer_factory(spec)
    assert trainer.fit().state == "succeeded"
    evals = [m for m in trainer.state.metrics if m["kind"] == "eval"]
    assert [m["step"] for m in evals] == [0, 2, 4]
    for row in evals:
        assert row["probes"]["count"] == 25 and row["probes"]["available"] == 30  # the limit, said, not silent
        assert row["instructionFollowing"]["count"] == 2
    status = read_progress(tmp_path / "run").evaluation
    assert status.baseline.probes.count == 25 and status.latest.instruction_following is not None
    assert status.instruction_following_drop is not None
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    assert {"probeF1Before", "probeF1After", "instructionFollowingBefore", "instructionFollowingAfter"} <= set(summary)


def distance_from_start(trainer: Any, start: list[torch.Tensor], fisher: list[torch.Tensor] | None = None) -> float:
    """sqrt(sum F (w - w0)^2): the quantity the penalty (F = 1 for l2-init) keeps small."""
    params = [p for p in trainer.engine.module.parameters() if p.requires_grad]
    weights = fisher or [torch.ones_like(s) for s in start]
    total = sum((f * (p.detach() - s) ** 2).sum() for p, s, f in zip(params, start, weights, strict=True))
    return float(total) ** 0.5


@pytest.mark.parametrize("kind", ["l2-init", "ewc"])
def test_regularization_holds_weights_near_their_anchor_and_resumes_exactly(
    tmp_path: Path, kind: str, trainer_factory: TrainerFactory
) -> None:
    def run(path: Path, strength: float | None, hooks: tuple[Any, ...] = (), attempt: int = 1) -> Any:
        training: dict[str, Any] = {"steps": 6, "learningRate": 3e-3}
        if strength is not None:
            training["regularization"] = {"type": kind, "strength": strength, "fisherBatches": 2}
        return trainer_factory(
            spec_for(path, training=training, model={"init": "random"}), hooks=hooks, attempt=attempt
        )

    free = run(tmp_path / "free", None)
    start = [p.detach().clone() for p in free.engine.module.parameters() if p.requires_grad]
    free.fit()
    held = run(tmp_path / "held", 50.0 if kind == "l2-init" else 5e5)
    held.fit()
    assert held.regularizer is not None and held.regularizer.anchor is not None
    fisher = held.regularizer.fisher
    assert (fisher is not None) == (kind == "ewc")
    assert distance_from_start(held, start, fisher) < 0.5 * distance_from_start(free, start, fisher)

    # The anchor (and Fisher) are checkpointed once and restored, so a resume continues exactly.
    path = tmp_path / "resumed"
    with pytest.raises(InjectedFault):
        run(path, 50.0 if kind == "l2-init" else 5e5, hooks=(Faults(raise_at_step=5),)).fit()
    assert (path / "step-00000004" / "shared_state.pt").exists()
    outcome = run(path, 50.0 if kind == "l2-init" else 5e5, attempt=2).fit()
    reference = held.state.losses
    for step in (5, 6):
        assert outcome.losses[step] == pytest.approx(reference[step], abs=1e-6), step


def test_reset_optimizer_clears_the_moments(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    trainer = trainer_factory(spec_for(tmp_path / "run", training={"steps": 2}))
    trainer.fit()
    assert optimizer_steps(trainer) == 2
    reset_optimizer(trainer.engine)
    assert optimizer_steps(trainer) == 0
