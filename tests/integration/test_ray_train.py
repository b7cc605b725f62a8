"""The trainer under real Ray Train: 2 workers, DeepSpeed on CPU (gloo), checkpoints on SeaweedFS S3.

- an uninterrupted ZeRO-2 run: committed checkpoints and the exported model on S3;
- the same run with a worker SIGKILLed after its first committed checkpoint: Ray Train restarts
  the worker group, which resumes from that checkpoint; the per-step losses equal the
  uninterrupted run's to 1e-6;
- a ZeRO-3 run whose consolidated export loads with transformers;
- failure classes: a permanent error on one rank (a cache shard damaged after it was verified) is
  reported once with its reason and one line, never retried; a lost worker is retried.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import layout
from cpt_core.storage import S3Settings, Storage
from cpt_core.storage.progress import read_progress
from cpt_core.validation.validate import parse_job
from cpt_trainer.checkpoint.store import CheckpointStore
from cpt_trainer.launch.driver import LaunchOptions, TrainingError, run_job

from devkit.jobs import tiny_job_doc
from devkit.seaweed import SeaweedS3
from tests.support.faults import fault_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(s3: SeaweedS3) -> Iterator[SeaweedS3]:
    """A local Ray whose workers see the S3 server's endpoint and credentials."""
    from cpt_trainer.launch.local_ray import local_ray

    saved = {k: os.environ.get(k) for k in s3.env()}
    os.environ.update(s3.env())
    try:
        with local_ray(num_cpus=2):
            yield s3
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_on_s3(s3: SeaweedS3, name: str, **spec: Any) -> CPTJob:
    run = f"s3://{s3.bucket}/runs/{name}/"
    doc = tiny_job_doc(
        metadata={"name": name},
        spec={
            "training": {"steps": 8, "globalBatchTokens": 1024, "microBatchSize": 2},
            "checkpoint": {"uri": run, "intervalSteps": 2, "keepLast": 5, "export": {"dtype": "float32"}},
            "evaluation": {"intervalSteps": 4, "maxBatches": 2},
            "storage": {"endpoint": s3.endpoint},
            "data": {"cacheUri": f"s3://{s3.bucket}/cache/"},
            **spec,
        },
    )
    return parse_job(doc)


def options(max_failures: int = 0) -> LaunchOptions:
    return LaunchOptions(
        num_workers=2, use_gpu=False, resources_per_worker={"CPU": 0.5}, max_failures=max_failures, cpu_threads=1
    )


def final_losses(storage: Storage, job: CPTJob) -> dict[int, float]:
    latest = CheckpointStore(storage, job.spec.checkpoint.uri).latest_committed()
    assert latest is not None
    return {int(k): v for k, v in latest.state["train"]["losses"].items()}


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> tuple[CPTJob, Any]:
    job = job_on_s3(ray_cluster, "ray-plain")
    progress = run_job(job, options(), attempt=1, storage_path=str(tmp_path_factory.mktemp("ray-results")))
    return job, progress


def test_checkpoints_and_export_land_on_s3(
    uninterrupted: tuple[CPTJob, Any], ray_cluster: SeaweedS3, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    job, progress = uninterrupted
    assert progress is not None and progress.state == "succeeded" and progress.progress.step == 8
    storage = Storage(S3Settings.from_spec(job.spec.storage, ray_cluster.env()))
    run = job.spec.checkpoint.uri
    keys = {o.location.key.removeprefix(f"runs/{job.metadata.name}/") for o in storage.list_objects(run)}
    for step in (2, 4, 6, 8):
        assert f"step-{step:08d}/{layout.COMMITTED}" in keys and f"step-{step:08d}/{layout.TRAINER_STATE}" in keys
        # Both ranks' optimizer shards are in the checkpoint.
        assert {f"step-{step:08d}/ckpt/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= keys
    assert "final/model.safetensors" in keys and "report/loss.png" in keys
    assert progress.output.model_uri == f"{run}final/"

    # The export equals the trained weights of the last checkpoint.
    storage.download_dir(f"{run}final/", tmp_path / "final")
    storage.download_file(f"{run}step-00000008/ckpt/mp_rank_00_model_states.pt", tmp_path / "states.pt")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    trained.load_state_dict(torch.load(tmp_path / "states.pt", weights_only=False)["module"])
    ids = torch.tensor([[3, 99, 512, 7, 1999, 42]])
    with torch.no_grad():
        assert torch.allclose(exported(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-6)


def test_killed_worker_resumes_from_the_last_checkpoint_with_identical_losses(
    uninterrupted: tuple[CPTJob, Any], ray_cluster: SeaweedS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reference_job, _ = uninterrupted
    storage = Storage(S3Settings.from_spec(reference_job.spec.storage, ray_cluster.env()))
    reference = final_losses(storage, reference_job)

    marker = tmp_path / "killed"
    job = job_on_s3(ray_cluster, "ray-killed")
    fault = fault_env(f"kill_rank=1,after_commit=4,marker={marker}")
    opts = LaunchOptions(2, False, {"CPU": 0.5}, max_failures=1, cpu_threads=1, worker_env=fault)
    with caplog.at_level(logging.WARNING, logger="cpt_trainer.launch"):
        progress = run_job(job, opts, attempt=1, storage_path=str(tmp_path / "ray-results"))
    assert marker.exists(), "the fault was not injected"
    # A lost worker is transient: retried once, from the last committed checkpoint.
    assert any("retry 1 of 1 resumes from the last committed checkpoint" in r.getMessage() for r in caplog.records)
    assert progress is not None and progress.state == "succeeded" and progress.progress.step == 8
    resumed = final_losses(storage, job)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step
    # The restart resumed: the checkpoint at step 4 (committed before the kill) was not rewritten.
    state = json.loads(storage.read_text(f"{job.spec.checkpoint.uri}step-00000004/{layout.TRAINER_STATE}"))
    assert state["step"] == 4


def test_zero3_with_two_workers_exports_a_loadable_model(ray_cluster: SeaweedS3, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    job = job_on_s3(ray_cluster, "ray-zero3", deepspeed={"zeroStage": 3}, training={"steps": 4})
    progress = run_job(job, options(), attempt=1, storage_path=str(tmp_path / "ray-results"))
    assert progress is not None and progress.state == "succeeded"
    storage = Storage(S3Settings.from_spec(job.spec.storage, ray_cluster.env()))
    keys = [o.location.key for o in storage.list_objects(f"{job.spec.checkpoint.uri}step-00000004/")]
    # ZeRO-3: the model itself is sharded across the two ranks.
    assert sum("zero_pp_rank_" in k and "model_states" in k for k in keys) == 2
    storage.download_dir(f"{job.spec.checkpoint.uri}final/", tmp_path / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()
    assert progress.evaluation.latest.domain_loss < progress.evaluation.baseline.domain_loss


def test_a_permanent_error_on_one_rank_is_reported_once_and_never_retried(
    ray_cluster: SeaweedS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged shard is not retried maxRestarts times, nor reported as traceback lines."""
    job = job_on_s3(ray_cluster, "ray-damaged", data={"cacheUri": f"s3://{ray_cluster.bucket}/cache-damaged/"})
    storage = Storage(S3Settings.from_spec(job.spec.storage, ray_cluster.env()))

    def damage_after_verification() -> None:  # the cache is verified by prepare; this happens after it
        shard = next(
            o for o in storage.list_objects(job.spec.data.cache_uri) if o.location.key.endswith("train-00000.bin")
        )
        storage.write_bytes(shard.location, storage.read_bytes(shard.location)[: shard.size // 4])

    with caplog.at_level(logging.WARNING, logger="cpt_trainer.launch"), pytest.raises(TrainingError) as info:
        run_job(
            job, options(max_failures=3), attempt=1, on_prepared=damage_after_verification, storage_path=str(tmp_path)
        )
    assert info.value.reason == "CacheDamaged"
    assert not any("retry" in r.getMessage() for r in caplog.records)  # never retried
    progress = read_progress(storage, job.spec.checkpoint.uri, job=job.metadata.name, uid=None, attempt=1)
    assert progress is not None and progress.state == "failed" and progress.reason == "CacheDamaged"
    assert progress.message == str(info.value)
    assert "train-00000.bin has no record" in progress.message and "run again" in progress.message
    assert "\n" not in progress.message and "Traceback" not in progress.message


def test_changing_cluster_workers_resumes_with_the_new_number(
    uninterrupted: tuple[CPTJob, Any], ray_cluster: SeaweedS3, tmp_path: Path
) -> None:
    """A 2-worker checkpoint resumes with 1 worker (not a RuntimeError retried until RestartLimitReached)."""
    reference_job, _ = uninterrupted
    storage = Storage(S3Settings.from_spec(reference_job.spec.storage, ray_cluster.env()))
    reference = final_losses(storage, reference_job)

    job = job_on_s3(ray_cluster, "ray-resize")
    crash = LaunchOptions(
        2, False, {"CPU": 0.5}, max_failures=0, cpu_threads=1, worker_env=fault_env("raise_at_step=5")
    )
    with pytest.raises(TrainingError, match="injected fault after step 5"):
        run_job(job, crash, attempt=1, storage_path=str(tmp_path / "two"))
    written = CheckpointStore(storage, job.spec.checkpoint.uri).latest_committed()
    assert written is not None and written.world == 2 and written.step in (2, 4)  # step 4's upload may be cut off

    one = LaunchOptions(1, False, {"CPU": 1}, max_failures=0, cpu_threads=1)
    progress = run_job(job, one, attempt=2, storage_path=str(tmp_path / "one"))
    assert progress is not None and progress.state == "succeeded"
    assert progress.checkpoint is not None and progress.checkpoint.resumed_from == written.step
    resumed = final_losses(storage, job)
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-5), step
    assert CheckpointStore(storage, job.spec.checkpoint.uri).latest_committed().world == 1
