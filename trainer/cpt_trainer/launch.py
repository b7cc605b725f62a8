"""Launching: prepare the data, then run the Trainer on every worker with Ray Train.

`run_job` is the driver behind both `cpt run` (an embedded local Ray) and `cpt train` (the
RayJob entrypoint on a cluster, connecting to its Ray). It

1. claims the run directory's fence for this attempt (an older attempt can no longer write),
2. synthesises the sources that ask for it, then prepares the data (Ray Data, content-addressed
   caches: usually a no-op on a restart),
3. starts a `TorchTrainer` whose `FailureConfig` restarts lost workers from the last committed
   checkpoint, with a stable run name derived from the job identity,
4. returns the final progress (the same file the operator reads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cpt_core.api.progress import Progress, read_progress
from cpt_core.api.v1alpha1 import CPTJob, CPTJobSpec
from cpt_core.reasons import Reason
from cpt_core.storage import S3Settings, Storage

from .reporter import ProgressReporter

log = logging.getLogger(__name__)


@dataclass
class LaunchOptions:
    """How to lay the training processes onto the Ray cluster."""

    num_workers: int
    use_gpu: bool
    resources_per_worker: dict[str, float]
    max_failures: int
    data_parallelism: int = 2
    cpu_threads: int | None = None  # torch threads per CPU worker (Ray would pin each to one)
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment for the training workers


def run_name(job: CPTJob) -> str:
    """A stable Ray run name from the job identity (namespace, name, uid)."""
    identity = f"{job.metadata.namespace or 'default'}/{job.metadata.name}/{job.metadata.uid or '-'}"
    return f"cpt-{job.metadata.name[:40]}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def local_options(spec: CPTJobSpec, cpus: int) -> LaunchOptions:
    """Workers for a single machine: GPUs when present, otherwise CPU workers that leave room for Ray Data."""
    import torch

    gpus = torch.cuda.device_count()
    if spec.cluster.gpus_per_worker > 0 and gpus > 0:
        n = min(gpus, spec.cluster.workers * spec.cluster.gpus_per_worker)
        return LaunchOptions(n, True, {"GPU": 1, "CPU": 1}, spec.run_policy.max_restarts)
    n = spec.cluster.workers
    # Fractional CPUs: with whole CPUs per worker, Ray Data's readers would starve on small machines.
    per_worker = max(0.1, min(1.0, (cpus - 0.5) / n))
    return LaunchOptions(
        n,
        False,
        {"CPU": round(per_worker, 2)},
        spec.run_policy.max_restarts,
        data_parallelism=cpus,
        cpu_threads=max(1, cpus // n),
    )


def cluster_options(spec: CPTJobSpec, max_failures: int) -> LaunchOptions:
    """One training process per GPU across the worker pods (or one per pod on CPU)."""
    if spec.cluster.gpus_per_worker > 0:
        n = spec.cluster.workers * spec.cluster.gpus_per_worker
        return LaunchOptions(n, True, {"GPU": 1}, max_failures, data_parallelism=max(2, spec.cluster.workers))
    return LaunchOptions(spec.cluster.workers, False, {"CPU": 1}, max_failures, data_parallelism=2)


def next_attempt(storage: Storage, run_uri: str) -> int:
    """For `cpt run` (no operator): one more than the attempt that last owned the run directory."""
    from .checkpoint import CheckpointStore

    return CheckpointStore(storage, run_uri).fence() + 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build the Trainer for this rank and fit."""
    import ray.train
    import torch

    from .checkpoint import IdentityMismatch
    from .data import DataError, SamplerStateMismatch
    from .engine import GeometryError
    from .hooks import load_hooks
    from .sources import ModelSourceError
    from .trainer import RunContext, Trainer

    os.environ.update(config.get("env") or {})
    if config.get("cpu_threads") and not torch.cuda.is_available():
        torch.set_num_threads(int(config["cpu_threads"]))
    context = ray.train.get_context()
    ctx = RunContext(
        rank=context.get_world_rank(),
        world=context.get_world_size(),
        local_rank=context.get_local_rank(),
        attempt=config["attempt"],
        job=config["job"],
        uid=config["uid"],
    )
    spec = CPTJobSpec.model_validate_json(config["spec"])
    trainer = Trainer(spec, config["prepared"], S3Settings.from_spec(spec.storage), ctx, hooks=load_hooks())
    permanent: dict[type[Exception], Reason] = {
        ModelSourceError: Reason.ModelSourceError,
        DataError: Reason.DataError,
        SamplerStateMismatch: Reason.ResumeMismatch,
        IdentityMismatch: Reason.CheckpointOwnedByAnotherJob,
        GeometryError: Reason.InvalidSpec,
    }
    try:
        trainer.setup()
    except tuple(permanent) as exc:
        # A restart cannot fix these: record the reason and end without Ray retrying the workers.
        reason = next(r for t, r in permanent.items() if isinstance(exc, t))
        log.error("%s: %s", reason.value, exc)
        trainer.reporter.report("failed", reason=reason, message=str(exc), force=True)
        return
    outcome = trainer.fit()
    if outcome.state == "failed" and outcome.reason == Reason.FencedOut:
        raise RuntimeError(outcome.message)


def run_job(
    job: CPTJob,
    options: LaunchOptions,
    attempt: int,
    on_prepared: Callable[[], None] | None = None,
    storage_path: str | None = None,
) -> Progress | None:
    """Prepare and train one attempt of `job` on the connected Ray cluster; returns the final progress."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from .checkpoint import CheckpointStore
    from .data import DataError, prepare
    from .sources import ModelSourceError
    from .synthesis import SynthesisError, synthesize_sources

    spec = job.spec.resolved()
    settings = S3Settings.from_spec(spec.storage)
    storage = Storage(settings)
    store = CheckpointStore(storage, spec.checkpoint.uri)
    store.claim(job.metadata.name, job.metadata.uid, attempt)
    reporter = ProgressReporter(
        storage,
        spec.checkpoint.uri,
        job=job.metadata.name,
        uid=job.metadata.uid,
        attempt=attempt,
        fence=lambda: store.check_fence(attempt),
    )
    reporter.report("preparing", message="tokenizing and packing data", force=True)
    try:
        spec = synthesize_sources(spec, storage, reporter, options.data_parallelism)
        report = prepare(spec, storage, use_ray=True, parallelism=options.data_parallelism)
    except (DataError, ModelSourceError) as exc:
        reason = Reason.DataError if isinstance(exc, DataError) else Reason.ModelSourceError
        reason = Reason.SynthesisFailed if isinstance(exc, SynthesisError) else reason
        reporter.report("failed", reason=reason, message=str(exc), force=True)
        raise
    if on_prepared:
        on_prepared()
    if storage_path is None:
        storage_path = os.path.join(tempfile.gettempdir(), "cpt-ray-results")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump_json(by_alias=True),
            "prepared": report.sources,
            "attempt": attempt,
            "job": job.metadata.name,
            "uid": job.metadata.uid,
            "cpu_threads": options.cpu_threads,
            "env": options.worker_env,
        },
        torch_config=TorchConfig(backend="nccl" if options.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=options.num_workers,
            use_gpu=options.use_gpu,
            resources_per_worker=options.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=f"{run_name(job)}-a{attempt}",
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=options.max_failures),
        ),
    )

    def final() -> Progress | None:
        return read_progress(storage, spec.checkpoint.uri, job=job.metadata.name, uid=job.metadata.uid, attempt=attempt)

    try:
        trainer.fit()
    except Exception as exc:
        ended = final()
        if ended is None or ended.state in ("running", "preparing"):
            reporter.report("failed", reason=Reason.TrainingFailed, message=_root_cause(exc), force=True)
        raise
    return final()


def _root_cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    tail = [line for line in text if line.strip()][-3:]
    return " ".join(tail)[:2000] if tail else type(exc).__name__
