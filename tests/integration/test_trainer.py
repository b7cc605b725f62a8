"""The Trainer in one process (real DeepSpeed on CPU, gloo): resume, export, forgetting, faults, fencing.

The same class runs under Ray Train in test_ray_train.py; here it runs without Ray, which is
also how torchrun runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.contract import layout
from cpt_core.storage import S3Settings, Storage
from cpt_trainer.checkpoint.store import CheckpointStore, FencedOut, IdentityMismatch
from cpt_trainer.data import SamplerStateMismatch, prepare
from cpt_trainer.distributed import RunContext
from cpt_trainer.model.source import ModelSourceError
from cpt_trainer.train.trainer import Trainer

from devkit.jobs import tiny_job
from tests.support.faults import Faults, InjectedFault
from tests.support.trainer_runs import AfterStep, Record, TrainerFactory, read_progress, spec_for

# Every test runs with the one-process group, also those that build a Trainer by hand.
pytestmark = pytest.mark.usefixtures("process_group")


def test_interrupted_run_resumes_exactly(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    reference = trainer_factory(spec_for(tmp_path / "a")).fit()
    assert reference.state == "succeeded" and len(reference.losses) == 8

    run = tmp_path / "b"
    first = trainer_factory(spec_for(run), hooks=(Faults(raise_at_step=5),))
    with pytest.raises(InjectedFault):
        first.fit()
    first.checkpointer.finish()  # what a crash would leave is at most an uncommitted upload
    assert CheckpointStore(Storage(), str(run)).latest_committed().step == 4

    record = Record()
    resumed = trainer_factory(spec_for(run), attempt=2, hooks=(record,))
    assert resumed.step == 4
    # The next sample is the one the uninterrupted run took at step 5.
    next_batch = resumed.data.loader.micro_batch(4, 0)
    assert next_batch.indices.tolist() == reference_indices(spec_for(tmp_path / "a"), step=4)
    outcome = resumed.fit()
    assert outcome.state == "succeeded"
    assert [s for s, _ in record.seen] == [5, 6, 7, 8]
    for step in range(5, 9):
        assert outcome.losses[step] == pytest.approx(reference.losses[step], abs=1e-6), step
    # Steps before the interruption come from the checkpoint's history.
    assert outcome.losses[3] == pytest.approx(reference.losses[3], abs=1e-6)
    assert read_progress(run).attempt == 2


def reference_indices(spec: CPTJobSpec, step: int) -> list[int]:
    from cpt_trainer.data import BlendedSampler

    rows = spec.training.global_batch_tokens // spec.data.sequence_length
    return BlendedSampler.rank_indices(step, 0, 1, rows)[: spec.training.micro_batch_size].tolist()


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_export_loads_with_transformers_and_has_equal_logits(
    tmp_path: Path, zero_stage: int, trainer_factory: TrainerFactory
) -> None:
    from transformers import AutoModelForCausalLM

    spec = spec_for(tmp_path / "run", deepspeed={"zeroStage": zero_stage}, training={"steps": 4})
    trainer = trainer_factory(spec)
    outcome = trainer.fit()
    assert outcome.state == "succeeded"
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert "### Stages and data mixture" in (final / "README.md").read_text()  # the model card (model_card.py)
    exported = AutoModelForCausalLM.from_pretrained(final)
    ids = torch.tensor([[5, 17, 99, 400, 3, 1000, 2047, 12]])
    with torch.no_grad():
        trained = trainer.engine.module(input_ids=ids).logits
        loaded = exported(input_ids=ids).logits
    assert torch.allclose(trained, loaded, atol=1e-5), (trained - loaded).abs().max()
    progress = read_progress(tmp_path / "run")
    assert progress.state == "succeeded" and progress.output.model_uri == f"file://{final}/"
    assert (tmp_path / "run" / "report" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    metrics = [json.loads(line) for line in (tmp_path / "run" / "report" / "metrics.jsonl").read_text().splitlines()]
    assert {m["kind"] for m in metrics} == {"train", "eval"}


def test_forgetting_stop_checkpoints_and_ends_stopped(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    # A small model that knows "general" text first ...
    general_only = {
        "sources": [
            {"name": "general", "role": "domain", "uris": tiny_job().spec.data.sources[1].uris, "weight": 1},
        ]
    }
    pre = spec_for(
        tmp_path / "pre",
        data=general_only,
        training={"steps": 40, "learningRate": 3e-3},
        evaluation={"intervalSteps": 40},
    )
    assert trainer_factory(pre).fit().state == "succeeded"
    # ... then continued on domain data only, with replay at weight 0 (evaluated, never trained on).
    spec = spec_for(
        tmp_path / "cpt",
        model={"source": str(tmp_path / "pre" / "final"), "init": "pretrained"},
        data={
            "sources": [
                {**tiny_job().spec.data.sources[0].wire(), "weight": 1},
                {**tiny_job().spec.data.sources[1].wire(), "weight": 0},
            ]
        },
        training={"steps": 40, "learningRate": 1e-2, "schedule": {"warmupSteps": 0, "type": "constant"}},
        evaluation={"intervalSteps": 2, "forgetting": {"maxGeneralLossIncrease": 0.02, "action": "stop"}},
        checkpoint={"intervalSteps": 100},
    )
    trainer = trainer_factory(spec)
    outcome = trainer.fit()
    assert outcome.state == "stopped" and outcome.reason == "ForgettingDetected"
    assert outcome.step < 40
    progress = read_progress(tmp_path / "cpt")
    assert progress.state == "stopped" and progress.reason == "ForgettingDetected"
    assert progress.evaluation.forgetting_detected and progress.evaluation.general_loss_increase > 0.02
    assert progress.checkpoint is not None and progress.checkpoint.step == outcome.step
    assert (tmp_path / "cpt" / f"step-{outcome.step:08d}" / layout.COMMITTED).exists()
    assert not (tmp_path / "cpt" / "final").exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    run = tmp_path / "run"
    trainer = trainer_factory(spec_for(run), hooks=(Faults(nan_at_step=5),))
    outcome = trainer.fit()
    assert outcome.state == "failed" and outcome.reason == "NonFiniteLoss"
    progress = read_progress(run)
    assert progress.state == "failed" and "NaN/inf at step 5" in progress.message
    assert "last committed checkpoint (step 4) is intact" in progress.message
    latest = CheckpointStore(Storage(), str(run)).latest_committed()
    assert latest is not None and latest.step == 4
    # The weights in memory never saw the NaN: the engine is still finite.
    assert all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())


def test_uncommitted_checkpoints_are_ignored_and_retention_keeps_the_newest(
    tmp_path: Path, trainer_factory: TrainerFactory
) -> None:
    run = tmp_path / "run"
    trainer_factory(spec_for(run, checkpoint={"keepLast": 1})).fit()
    steps = sorted(p.name for p in run.glob("step-*"))
    assert steps == ["step-00000008"]
    fake = run / "step-00000099"
    (fake / "ckpt").mkdir(parents=True)
    (fake / "trainer_state.json").write_text("{}")
    store = CheckpointStore(Storage(), str(run))
    assert store.latest_committed().step == 8
    assert store.retain(1, newest=8) == []  # never deletes the newest committed one


def test_another_jobs_run_directory_is_never_resumed(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    run = tmp_path / "run"
    trainer_factory(spec_for(run, training={"steps": 2})).fit()
    with pytest.raises(IdentityMismatch, match="already holds the run of job 't'"):
        trainer_factory(spec_for(run, training={"steps": 2}), job="other")


def test_a_recreated_job_adopts_its_predecessors_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = Trainer(
        spec_for(run),
        prepare(spec_for(run).resolved(), Storage()).sources,
        S3Settings(),
        RunContext(attempt=3, job="t", uid="uid-old"),
    )
    first.setup()
    assert first.fit().state == "succeeded"
    # Deleted and applied again: a new uid, attempts counted from 1 again, same checkpoints.
    again = Trainer(
        spec_for(run, training={"steps": 10}),
        prepare(spec_for(run).resolved(), Storage()).sources,
        S3Settings(),
        RunContext(attempt=1, job="t", uid="uid-new"),
    )
    again.setup()
    assert again.step == 8
    assert again.fit().state == "succeeded"
    # The old incarnation is fenced out for good.
    with pytest.raises(FencedOut):
        zombie = CheckpointStore(Storage(), str(run))
        zombie.claim("t", "uid-old", attempt=99)
        CheckpointStore(Storage(), str(run)).claim("t", "uid-new", attempt=2)
        zombie.check_fence(99)


def test_an_older_attempt_is_fenced_out(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    run = tmp_path / "run"

    def takeover(trainer: Trainer) -> None:
        if trainer.step == 3:
            CheckpointStore(Storage(), str(run)).claim("t", None, attempt=7)

    trainer = trainer_factory(spec_for(run), hooks=(AfterStep(takeover),))
    outcome = trainer.fit()
    assert outcome.state == "failed" and outcome.reason == "FencedOut"
    committed = CheckpointStore(Storage(), str(run)).committed_steps()
    assert max(committed) <= 4 and not (run / "step-00000006" / layout.COMMITTED).exists()
    with pytest.raises(FencedOut):
        trainer_factory(spec_for(run), attempt=6)


def test_resume_with_changed_mixture_is_refused_unless_allowed(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    run = tmp_path / "run"
    with pytest.raises(InjectedFault):
        trainer_factory(spec_for(run), hooks=(Faults(raise_at_step=3),)).fit()
    changed = {
        "sources": [{**s.wire(), "weight": w} for s, w in zip(tiny_job().spec.data.sources, (80, 20), strict=True)]
    }
    with pytest.raises(SamplerStateMismatch, match="allowChangesOnResume"):
        trainer_factory(spec_for(run, data=changed), attempt=2)
    allowed = trainer_factory(spec_for(run, data={**changed, "allowChangesOnResume": True}), attempt=3)
    assert allowed.step == 2
    assert allowed.fit().state == "succeeded"
    assert read_progress(run).data.resumed_with_changes


def test_tokenizer_model_mismatch_is_a_clear_error(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    model_dir = tmp_path / "small-vocab"
    model_dir.mkdir()
    config = json.loads((Path(tiny_job().spec.model.source) / "config.json").read_text())
    config["vocab_size"] = 1000
    (model_dir / "config.json").write_text(json.dumps(config))
    spec = spec_for(tmp_path / "run", model={"source": str(model_dir), "tokenizer": tiny_job().spec.model.source})
    with pytest.raises(ModelSourceError, match="tokenizer/model mismatch: the tokenizer has 2048 tokens"):
        trainer_factory(spec)


def test_progress_accounting(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    run = tmp_path / "run"
    trainer_factory(spec_for(run, training={"steps": 4})).fit()
    progress = read_progress(run)
    consumed = {s.name: s.tokens_consumed for s in progress.data.sources}
    assert sum(consumed.values()) == progress.progress.tokens == 4 * 512
    assert consumed["veloria"] == pytest.approx(0.9 * progress.progress.tokens, abs=128)
    assert np.isfinite(progress.evaluation.baseline.domain_loss) and progress.evaluation.latest.step == 4


def test_lora_run_exports_merged_weights(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    from transformers import AutoModelForCausalLM

    spec = spec_for(
        tmp_path / "run", training={"steps": 3, "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}}
    )
    trainer = trainer_factory(spec)
    trainable = sum(p.numel() for p in trainer.engine.module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.engine.module.parameters())
    assert 0 < trainable < total / 10  # only the adapters train
    assert trainer.fit().state == "succeeded"
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert not any("lora" in name for name, _ in exported.named_parameters())
    ids = torch.tensor([[4, 8, 15, 16, 23, 42]])
    with torch.no_grad():
        assert torch.allclose(trainer.engine.module(input_ids=ids).logits, exported(input_ids=ids).logits, atol=1e-5)


def test_model_from_s3_is_downloaded_once_and_trains(
    tmp_path: Path, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "node-cache"))
    storage = Storage(S3Settings.from_spec(None))
    model_uri = f"s3://{s3_env.bucket}/models/tiny-llama/"
    storage.upload_dir(tiny_job().spec.model.source, model_uri)
    spec = spec_for(
        tmp_path / "run", model={"source": model_uri}, training={"steps": 2}, storage={"endpoint": s3_env.endpoint}
    )
    prepared = prepare(spec.resolved(), storage).sources
    trainer = Trainer(spec, prepared, S3Settings.from_spec(spec.storage), RunContext(job="s3-model"))
    trainer.setup()
    assert trainer.fit().state == "succeeded"
    cached = list((tmp_path / "node-cache" / "models").iterdir())
    assert (
        len([p for p in cached if p.is_dir()]) == 1 and (next(p for p in cached if p.is_dir()) / "config.json").exists()
    )


def test_missing_model_source_is_a_clear_error(tmp_path: Path, trainer_factory: TrainerFactory) -> None:
    spec = spec_for(tmp_path / "run", model={"source": str(tmp_path / "nowhere")})
    with pytest.raises(ModelSourceError, match=r"spec\.model\.source: .*nowhere does not exist"):
        trainer_factory(spec)


def test_rope_scaling_is_applied_before_weights_load(tmp_path: Path) -> None:
    from cpt_trainer.model.build import load_config
    from cpt_trainer.model.source import resolve

    spec = spec_for(
        tmp_path / "run", model={"ropeScaling": {"type": "yarn", "factor": 4, "originalMaxPositionEmbeddings": 1024}}
    )
    config = load_config(spec.model, resolve(spec.model.source), max_length=4096)
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["factor"] == 4
    assert config.max_position_embeddings == 4096
    with pytest.raises(ModelSourceError, match="exceeds the model's max_position_embeddings"):
        load_config(spec.model, resolve(spec.model.source), max_length=8192)
