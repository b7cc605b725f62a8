"""Launching: prepare the data, then run the Trainer on every worker with Ray Train.

`run_job` is the driver behind both `cpt run` (an embedded local Ray) and `cpt train` (the
RayJob entrypoint on a cluster, connecting to its Ray). It

1. claims the run directory's fence for this attempt (an older attempt can no longer write),
2. synthesises the sources that ask for it, then prepares the data (Ray Data, content-addressed
   caches: usually a verified no-op on a restart),
3. runs a `TorchTrainer` (in a thread, so the driver's main thread keeps SIGINT/SIGTERM: see
   interrupt.py) and classifies what the workers raised:
   - permanent (bad spec, bad data, damaged cache or checkpoint that cannot be loaded, resume
     mismatch, NaN, fenced out): reported once with its reason and message, never retried;
   - transient (a lost worker or node, OOM-kill, network): the worker group is started again up
     to `max_failures` times -- each time after re-verifying the data cache -- and resumes from the
     last committed checkpoint. Ray Train's own FailureConfig retries every worker error alike,
     so it is set to 0 and this loop decides;
4. returns the final progress (the same file the operator reads).

What a user reads is the error's own one-line message, never traceback lines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cpt_core.api.progress import Progress
from cpt_core.api.v1alpha1 import CPTJob, CPTJobSpec
from cpt_core.contract import layout, names
from cpt_core.contract.reasons import Reason
from cpt_core.storage import S3Settings, Storage, parse_uri
from cpt_core.storage.progress import read_progress

from cpt_trainer.launch.failures import Failure, classify
from cpt_trainer.launch.signals import DriverStop
from cpt_trainer.telemetry.progress import ProgressReporter
from cpt_trainer.train.interrupt import clear_stop

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """An attempt ended in failure; the message is the one line users see."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


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
    log_level: str = "INFO"  # Ray Train's own console logs; `cpt run` silences them (worker tracebacks)


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
        log_level="DEBUG" if os.environ.get(names.DEBUG_ENV) else "CRITICAL",
    )


def cluster_options(spec: CPTJobSpec, max_failures: int) -> LaunchOptions:
    """One training process per GPU across the worker pods (or one per pod on CPU)."""
    if spec.cluster.gpus_per_worker > 0:
        n = spec.cluster.workers * spec.cluster.gpus_per_worker
        return LaunchOptions(n, True, {"GPU": 1}, max_failures, data_parallelism=max(2, spec.cluster.workers))
    return LaunchOptions(spec.cluster.workers, False, {"CPU": 1}, max_failures, data_parallelism=2)


def next_attempt(storage: Storage, run_uri: str) -> int:
    """For `cpt run` (no operator): one more than the attempt that last owned the run directory."""
    from cpt_trainer.checkpoint.store import CheckpointStore

    return CheckpointStore(storage, run_uri).fence() + 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: build the Trainer for this rank and fit."""
    import ray.train
    import torch

    from cpt_trainer.checkpoint.store import FencedOut
    from cpt_trainer.distributed import RunContext
    from cpt_trainer.train.hooks import load_hooks
    from cpt_trainer.train.trainer import Trainer

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
    # Errors propagate: the driver classifies them (permanent: reported once, never retried).
    trainer.setup()
    outcome = trainer.fit()
    if outcome.state == "failed" and outcome.reason == Reason.FencedOut:
        raise FencedOut(outcome.message or "fenced out")


def run_job(
    job: CPTJob,
    options: LaunchOptions,
    attempt: int,
    on_prepared: Callable[[], None] | None = None,
    storage_path: str | None = None,
    stop: DriverStop | None = None,
) -> Progress | None:
    """Prepare and train one attempt of `job` on the connected Ray cluster; returns the final progress.

    Raises `TrainingError` (after reporting it) when the attempt failed; KeyboardInterrupt when it
    was abandoned on a signal (`stop`: the driver's SIGINT/SIGTERM handler).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cpt_trainer.checkpoint.store import CheckpointStore
    from cpt_trainer.data import DataError, prepare
    from cpt_trainer.model.source import ModelSourceError

    spec = job.spec.resolved()
    settings = S3Settings.from_spec(spec.storage)
    storage = Storage(settings)
    store = CheckpointStore(storage, spec.checkpoint.uri)
    store.claim(job.metadata.name, job.metadata.uid, attempt)
    clear_stop(storage, spec.checkpoint.uri)
    reporter = ProgressReporter(
        storage,
        spec.checkpoint.uri,
        job=job.metadata.name,
        uid=job.metadata.uid,
        attempt=attempt,
        fence=lambda: store.check_fence(attempt),
    )
    reporter.report("preparing", message="tokenizing and packing data", force=True)

    def failed(exc: Exception, reason: Reason) -> TrainingError:
        reporter.report("failed", reason=reason, message=str(exc), force=True)
        return TrainingError(str(exc), reason)

    try:
        spec = synthesize_sources(
            spec, storage, reporter, options.data_parallelism
        )  # once: a content-addressed no-op on repeats
    except (DataError, ModelSourceError) as exc:
        raise failed(exc, exc.reason) from None

    def prepare_data() -> Any:
        try:
            return prepare(spec, storage, use_ray=True, parallelism=options.data_parallelism)
        except (DataError, ModelSourceError) as exc:
            raise failed(exc, exc.reason) from None

    report = prepare_data()
    if on_prepared:
        on_prepared()
    if storage_path is None:
        storage_path = os.path.join(tempfile.gettempdir(), "cpt-ray-results")

    def final() -> Progress | None:
        return read_progress(storage, spec.checkpoint.uri, job=job.metadata.name, uid=job.metadata.uid, attempt=attempt)

    failures = 0
    while True:
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
                name=f"{run_name(job)}-a{attempt}" + (f"-r{failures}" if failures else ""),
                storage_path=storage_path,
                failure_config=ray.train.FailureConfig(max_failures=0),  # this loop decides (see the module doc)
                # Train V2's RunConfig (the stubs still describe V1's, which lacks it).
                logging_config=ray.train.LoggingConfig(log_level=options.log_level),  # type: ignore[call-arg]
            ),
        )
        error = _fit(trainer, stop)
        if error is None or (stop is not None and stop.signal_name):
            return final()
        failure = classify(error)
        if failure.retry and failures < options.max_failures:
            failures += 1
            log.warning(
                "%s; retry %d of %d resumes from the last committed checkpoint",
                failure.message,
                failures,
                options.max_failures,
            )
            report = prepare_data()  # verified again: a cache entry damaged meanwhile is rebuilt
            continue
        if failure.retry:
            failure = Failure(failure.reason, f"{failure.message}; gave up after {failures} retries", retry=False)
        ended = final()
        if failure.reason != Reason.FencedOut and (ended is None or ended.state in ("running", "preparing")):
            reporter.refresh()
            reporter.report("failed", reason=failure.reason, message=failure.message, force=True)
        raise TrainingError(failure.message, failure.reason)


def _fit(trainer: Any, stop: DriverStop | None) -> BaseException | None:
    """`trainer.fit()` in a thread; the main thread waits, handling signals. Returns what fit raised."""
    result: dict[str, BaseException] = {}

    def target() -> None:
        try:
            trainer.fit()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="cpt-fit", daemon=True)
    if stop is not None:
        stop.training = True
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
            if stop is not None and stop.overdue():
                raise KeyboardInterrupt(f"the trainers did not stop within {stop.grace:.0f} s")
    finally:
        if stop is not None:
            stop.training = False
    return result.get("error")


def synthesize_sources(spec: CPTJobSpec, storage: Storage, reporter: Any, workers: int) -> CPTJobSpec:
    """The step before `prepare`: `spec` with its synthesised sources generated (or found done, a
    content-addressed no-op on repeats) and pointing at their files; each synthesis's gates and samples are
    copied into the run's report/, and the progress file says what happens meanwhile."""
    if not any(source.synthesize is not None for source in spec.data.sources):
        return spec
    from cpt_trainer.synthesis import synthesize

    def progress(message: str) -> None:
        reporter.report("preparing", message=message)

    spec, results = synthesize(spec, storage, use_ray=True, workers=workers, progress=progress)
    report = parse_uri(spec.checkpoint.uri).as_prefix().join(layout.REPORT)
    for result in results:
        storage.write_text(report.join(f"synthesis-{result.source}.json"), result.manifest.to_json())
    return spec
