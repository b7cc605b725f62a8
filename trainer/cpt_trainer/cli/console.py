"""What `cpt run` shows: live progress, the before/after table, where a run resumes.

What `cpt run` shows: a live progress bar (or plain lines without a terminal) drawn from the progress
file, the before/after table at the end, and where an interrupted run resumes from. Diagnostics and progress
go to stderr; the final report to stdout (the result a script keeps).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

from cpt_core.api.progress import Progress as ProgressFile
from cpt_core.api.v1alpha1 import EvalResult
from cpt_core.storage import Storage
from cpt_core.storage.progress import read_progress
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cpt_trainer.launch.signals import EXIT_CODES

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


def print_interrupted(p: ProgressFile | None, again: str) -> None:
    """One line: where the run stopped and how it resumes."""
    where = f"from checkpoint step {p.checkpoint.step}" if p and p.checkpoint else "from the start"
    step = f" at step {p.progress.step}" if p else ""
    console.print(f"[yellow]interrupted{step}: {again} resumes {where}[/yellow]", soft_wrap=True)
