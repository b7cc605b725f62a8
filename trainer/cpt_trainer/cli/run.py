"""`cpt run` (the laptop path) and `cpt train` (the RayJob entrypoint), behind the click CLI.

Exit status: 0 succeeded, 1 failed (the reason and its one-line message are printed), 3 stopped on
purpose (forgetting), 130 interrupted by SIGINT, 143 interrupted by SIGTERM (interrupt.py).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from cpt_core.api.progress import Progress as ProgressFile
from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract import layout
from cpt_core.contract.reasons import Reason
from cpt_core.storage import S3Settings, Storage
from cpt_core.storage.progress import read_progress

from cpt_trainer.cli.console import ProgressWatcher, console, exit_code, print_interrupted, print_summary
from cpt_trainer.launch.driver import TrainingError, cluster_options, local_options, next_attempt, run_job
from cpt_trainer.launch.failures import one_line
from cpt_trainer.launch.signals import DriverStop, signals_to
from cpt_trainer.telemetry.progress import ProgressReporter

log = logging.getLogger(__name__)


def record_abandoned(job: CPTJob, attempt: int, stop: DriverStop) -> ProgressFile | None:
    """After a run was abandoned on a signal: the progress file says `interrupted` (unless the trainer
    already wrote it), with the checkpoint the next run resumes from."""
    spec = job.spec.resolved()
    storage = Storage(S3Settings.from_spec(spec.storage))
    name, uid = job.metadata.name, job.metadata.uid
    try:
        reporter = ProgressReporter(storage, spec.checkpoint.uri, job=name, uid=uid, attempt=attempt)
        reporter.refresh()
        if reporter.current.state not in ("interrupted", "succeeded", "failed", "stopped"):
            checkpoint = reporter.current.checkpoint
            where = f"checkpoint step {checkpoint.step}" if checkpoint else "the last committed checkpoint, if any"
            message = f"interrupted by {stop.signal_name or 'SIGINT'}; the next run resumes from {where}"
            reporter.report("interrupted", reason=Reason.Interrupted, message=message, force=True)
        return reporter.current
    except Exception as exc:  # the run directory is unreachable: say so, the exit code still tells
        log.warning("could not record the interruption in the progress file: %s", exc)
        return None


def run_local(job: CPTJob, cpus: int | None = None, path: str | None = None, progress_seconds: float = 10.0) -> int:
    """`cpt run`: an embedded Ray on this machine, the same driver as on a cluster."""
    from cpt_trainer.launch.local_ray import local_ray

    spec = job.spec.resolved()
    storage = Storage(S3Settings.from_spec(spec.storage))
    attempt = next_attempt(storage, spec.checkpoint.uri)
    cpus = cpus or os.cpu_count() or 2
    options = local_options(spec, cpus)
    console.print(
        f"[bold]cpt run[/bold] {job.metadata.name}: attempt {attempt}, {options.num_workers} "
        f"{'GPU' if options.use_gpu else 'CPU'} worker(s), run directory {spec.checkpoint.uri}"
    )
    stop = DriverStop(
        storage,
        spec.checkpoint.uri,
        attempt,
        spec.checkpoint.interrupt_grace_seconds,
        announce=lambda text: console.print(f"[yellow]{text}[/yellow]", soft_wrap=True),
    )
    again = f"`cpt run {path or 'JOB.yaml'}`"
    final = None
    try:
        with (
            signals_to(stop),  # a signal while Ray starts abandons the run, and Ray is shut down
            local_ray(num_cpus=cpus),
            signals_to(stop),  # again: ray.init installed its own SIGTERM handler (exit 134, a stack dump)
            ProgressWatcher(
                storage,
                spec.checkpoint.uri,
                job.metadata.name,
                attempt,
                spec.total_steps,
                plain_seconds=progress_seconds,
            ),
        ):
            final = run_job(job, options, attempt, stop=stop)
    except KeyboardInterrupt:
        # Abandoned (a second signal, a signal while preparing, or the grace period ran out): Ray is down.
        print_interrupted(record_abandoned(job, attempt, stop), again)
        return stop.exit_code
    except TrainingError as exc:
        console.print(f"[red]training failed:[/red] {exc.reason.value}: {exc}", soft_wrap=True)
        print_summary(read_progress(storage, spec.checkpoint.uri, job=job.metadata.name, uid=None, attempt=attempt))
        return 1
    except Exception as exc:
        console.print(f"[red]training failed:[/red] {one_line(exc)}", soft_wrap=True)
        return 1
    if stop.signal_name and (final is None or final.state in ("preparing", "running", "interrupted")):
        if final is None or final.state != "interrupted":  # the trainers ended without saying so
            final = record_abandoned(job, attempt, stop)
        print_interrupted(final, again)
        return stop.exit_code
    print_summary(final)
    return exit_code(final)


def train_in_cluster(job: CPTJob, attempt: int, max_worker_failures: int) -> int:
    """`cpt train`: the RayJob entrypoint. Connects to the RayJob's Ray cluster.

    In a RayJob, Ray's job agent sets RAY_ADDRESS. Without it (a stand-in for KubeRay, a laptop)
    an embedded loopback Ray is started, as `cpt run` does.
    """
    import contextlib

    import ray

    from cpt_trainer.launch.local_ray import local_ray, worker_env

    spec = job.spec.resolved()
    started = time.monotonic()
    storage = Storage(S3Settings.from_spec(spec.storage))
    stop = DriverStop(
        storage,
        spec.checkpoint.uri,
        attempt,
        spec.checkpoint.interrupt_grace_seconds,
        announce=lambda text: print(f"cpt train: {text}", file=sys.stderr),
    )
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": worker_env()}, logging_level=logging.WARNING)
    connection = contextlib.nullcontext() if address else local_ray()
    try:
        with signals_to(stop), connection, signals_to(stop):  # see run_local
            options = cluster_options(spec, max_worker_failures)
            final = run_job(job, options, attempt, storage_path=_ray_storage(spec), stop=stop)
    except KeyboardInterrupt:
        final = record_abandoned(job, attempt, stop)
        print(f"cpt train: attempt {attempt} interrupted by {stop.signal_name or 'SIGINT'}", file=sys.stderr)
        return stop.exit_code
    except TrainingError as exc:
        print(f"cpt train: attempt {attempt} failed: {exc.reason.value}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"cpt train: attempt {attempt} failed: {one_line(exc)}", file=sys.stderr)
        return 1
    log.info("attempt %d ended %s after %.0fs", attempt, final.state if final else "?", time.monotonic() - started)
    if stop.signal_name and (final is None or final.state in ("preparing", "running", "interrupted")):
        if final is None or final.state != "interrupted":
            final = record_abandoned(job, attempt, stop)
        print(f"cpt train: {final.message if final else 'interrupted'}", file=sys.stderr)
        return stop.exit_code
    print_summary(final)
    # A deliberate stop (forgetting) is not a crash: the RayJob succeeds and the operator reads the reason.
    return 0 if final is not None and final.state in ("succeeded", "stopped") else 1


def _ray_storage(spec: Any) -> str:
    """Ray Train's own run state; kept beside the checkpoints' run directory when it is local."""
    from cpt_core.storage import parse_uri

    location = parse_uri(spec.checkpoint.uri)
    if location.is_s3:
        return os.path.join("/tmp", "cpt-ray-results")
    return os.path.join(location.key, layout.RAY_RESULTS)
