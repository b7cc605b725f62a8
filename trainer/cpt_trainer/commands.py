"""`cpt run` (the laptop path) and `cpt train` (the RayJob entrypoint), behind the click CLI.

Exit status: 0 succeeded, 1 failed (the reason and its one-line message are printed), 3 stopped on
purpose (forgetting), 130 interrupted by SIGINT, 143 interrupted by SIGTERM (interrupt.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from cpt_core.api.progress import EvalResult, read_progress
from cpt_core.api.progress import Progress as ProgressFile
from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.reasons import Reason
from cpt_core.storage import S3Settings, Storage
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .interrupt import EXIT_CODES, DriverStop, signals_to
from .launch import TrainingError, cluster_options, local_options, next_attempt, one_line, run_job
from .reporter import ProgressReporter

log = logging.getLogger(__name__)
#: Diagnostics and progress (stderr) and the final report (stdout: the result a script keeps).
console = Console(stderr=True)
results = Console()


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return "-"
    return f"{100 * (after / before - 1):+.1f} %"


class ProgressWatcher:
    """Polls the progress file (the operator's contract) and shows it on stderr: a live progress bar
    on a terminal; otherwise (a pipe, a CI log, `nohup`) a plain line every `plain_seconds` with the
    step, loss, tokens/s and ETA, and one whenever the state changes."""

    def __init__(
        self,
        storage: Storage,
        run_uri: str,
        job: str,
        attempt: int,
        total: int,
        plain: bool | None = None,
        plain_seconds: float = 10.0,
    ) -> None:
        self.storage, self.run_uri, self.job, self.attempt = storage, run_uri, job, attempt
        self.stop = threading.Event()
        self.plain = (not console.is_terminal) if plain is None else plain
        self.plain_seconds = plain_seconds
        self.last_line: tuple[float, str, int] | None = None  # (monotonic time, state, step) of the last line
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=self.plain,
        )
        self.task = self.bar.add_task("preparing", total=total, info="")
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self.refresh()

    def refresh(self) -> None:
        try:
            p = read_progress(self.storage, self.run_uri, job=self.job, uid=None, attempt=self.attempt)
        except Exception:
            return
        if p is None:
            return
        t = p.progress
        info = [f"loss {_fmt(t.loss)}"]
        if t.tokens_per_second:
            info.append(f"{t.tokens_per_second:,.0f} tok/s")
        if t.eta_seconds is not None and p.state == "running":
            info.append(f"ETA {t.eta_seconds // 60}m{t.eta_seconds % 60:02d}s")
        latest = p.evaluation.latest if p.evaluation else None
        if latest:
            info.append(f"domain {_fmt(latest.domain_loss, 3)} general {_fmt(latest.general_loss, 3)}")
        if p.evaluation and p.evaluation.forgetting_detected:
            info.append("forgetting!" if self.plain else "[red]forgetting![/red]")
        stages = p.stages or []
        description: str = p.state
        if len(stages) > 1 and p.stage:
            index = next((i for i, s in enumerate(stages) if s.name == p.stage), 0)
            description = f"{p.state} {p.stage} ({index + 1}/{len(stages)})"
        if self.plain:
            self._plain_line(p.state, t.step, t.total_steps, description, info)
            return
        self.bar.update(
            self.task, completed=t.step, total=t.total_steps or None, description=description, info="  ".join(info)
        )

    def _plain_line(self, state: str, step: int, total: int | None, description: str, info: list[str]) -> None:
        """A line when the state changed, or the step moved and `plain_seconds` have passed."""
        now = time.monotonic()
        if self.last_line is not None:
            when, last_state, last_step = self.last_line
            if state == last_state and (step == last_step or now - when < self.plain_seconds):
                return
        self.last_line = (now, state, step)
        share = f" ({100 * step / total:.0f} %)" if total else ""
        print(f"progress: {description} step {step}/{total or '?'}{share}  {'  '.join(info)}", file=sys.stderr)
        sys.stderr.flush()

    def __enter__(self) -> ProgressWatcher:
        self.bar.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.refresh()
        self.bar.stop()


def print_summary(p: ProgressFile | None) -> None:
    if p is None:
        console.print("[red]no progress was written[/red]")
        return
    evaluation = p.evaluation
    base, last = (evaluation.baseline, evaluation.latest) if evaluation else (None, None)
    table = Table(title=f"CPT run '{p.job}' (attempt {p.attempt}): {p.state}", show_lines=False)
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change", justify="right")
    for label, pick, relative in summary_rows():
        before, after = (pick(base), pick(last)) if base and last else (None, None)
        if before is None or after is None:
            continue
        change = _delta(before, after) if relative else f"{after - before:+.3f}"
        table.add_row(label, _fmt(before, 4 if relative else 3), _fmt(after, 4 if relative else 3), change)
    results.print(table)
    results.print(f"steps {p.progress.step}/{p.progress.total_steps}, tokens {p.progress.tokens:,}")
    if p.reason or p.message:
        results.print(f"[yellow]{p.reason or ''}[/yellow] {p.message or ''}")
    if p.checkpoint:
        results.print(f"last committed checkpoint: {p.checkpoint.uri} (step {p.checkpoint.step})")
    if p.output and p.output.model_uri:
        results.print(f"model:  {p.output.model_uri}")
    if p.output and p.output.report_uri:
        results.print(f"report: {p.output.report_uri} (metrics.jsonl, loss.png, summary.json)")


def summary_rows() -> list[tuple[str, Callable[[EvalResult], float | None], bool]]:
    """(label, value of an evaluation, relative change?) of the before/after table."""
    return [
        ("domain holdout loss", lambda e: e.domain_loss, True),
        ("general holdout loss", lambda e: e.general_loss, True),
        ("chat holdout loss", lambda e: e.instruction_loss, True),
        ("probe F1", lambda e: e.probes.f1 if e.probes else None, False),
        ("probe exact match", lambda e: e.probes.exact_match if e.probes else None, False),
        (
            "instruction following",
            lambda e: e.instruction_following.prompt_accuracy if e.instruction_following else None,
            False,
        ),
    ]


def exit_code(p: ProgressFile | None) -> int:
    if p is None:
        return 1
    if p.state == "interrupted":
        return EXIT_CODES["SIGTERM"] if "SIGTERM" in (p.message or "") else EXIT_CODES["SIGINT"]
    return {"succeeded": 0, "stopped": 3}.get(p.state, 1)


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


def print_interrupted(p: ProgressFile | None, again: str) -> None:
    """One line: where the run stopped and how it resumes."""
    where = f"from checkpoint step {p.checkpoint.step}" if p and p.checkpoint else "from the start"
    step = f" at step {p.progress.step}" if p else ""
    console.print(f"[yellow]interrupted{step}: {again} resumes {where}[/yellow]", soft_wrap=True)


def run_local(job: CPTJob, cpus: int | None = None, path: str | None = None, progress_seconds: float = 10.0) -> int:
    """`cpt run`: an embedded Ray on this machine, the same driver as on a cluster."""
    from .local_ray import local_ray

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

    from .local_ray import local_ray, worker_env

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
    return os.path.join(location.key, "_ray")
