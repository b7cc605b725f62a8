"""What every `cpt` command shares: errors, logging, `-o`, examples, reading one job.

What every `cpt` command shares, on both sides: one-line errors and exits, a missing extra named, the
logging set-up, the `-o` option, examples in the help, and reading the one job of a manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from cpt_core.contract.names import DEBUG_ENV

if TYPE_CHECKING:
    from cpt_core.api.v1alpha1 import CPTJob


def examples(*lines: str) -> str:
    """An "Examples:" epilog that click prints verbatim (a \\b paragraph is not rewrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def setup_logging(level: int | None = None) -> None:
    """Our loggers at INFO on stderr; third-party libraries stay at WARNING (celpy and Ray are chatty)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("cpt_core", "cpt_operator", "cpt_trainer"):
        logging.getLogger(name).setLevel(level or logging.INFO)


def quiet_logging_level() -> int:
    """DEBUG with CPT_DEBUG (names.DEBUG_ENV) set, else WARNING (for commands that draw their own progress)."""
    return logging.DEBUG if os.environ.get(DEBUG_ENV) else logging.WARNING


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit: what every command does on an error it understands. The message may quote
    a server or a file, so its control sequences are stripped (cpt_core.cli.terminal)."""
    from cpt_core.cli.terminal import terminal_safe

    click.echo(f"error: {terminal_safe(message)}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def needs(command: str, extra: str) -> Iterator[None]:
    """Turn a missing optional dependency into one line that names the extra to install."""
    try:
        yield
    except ModuleNotFoundError as exc:
        fail(f"`cpt {command}` needs the '{extra}' extra: pip install 'cpt-operator[{extra}]' ({exc})")


def load_local_job(path: Path | str, local: bool = True) -> CPTJob:
    """The one CPTJob in `path` (a file, or `-` for stdin), or a clean exit: the entry of every
    command that takes one job. Other Kubernetes objects in the file (a Secret, a ConfigMap) are
    skipped with a note on stderr; relative paths in the spec resolve against the file's directory
    (the current directory for stdin) when `local`. Problems go to stderr, one line each."""
    from cpt_core.cli.inputs import job_documents, parse, read
    from cpt_core.validation.validate import InvalidJob, UnreadableFile, recommendations
    from cpt_core.validation.validate import validate as check

    try:
        label, text, base_dir = read(str(path))
        documents = job_documents([parse(label, text, base_dir)], note)
    except UnreadableFile as exc:
        fail(str(exc), 2)
    except InvalidJob as exc:
        for problem in exc.errors:
            click.echo(f"{exc.source}: {problem}", err=True)
        sys.exit(1)
    if len(documents) != 1:
        fail(f"{label}: expected exactly one CPTJob document (found {len(documents)}); split the file or name one job")
    report = check(documents[0].doc)
    if report.job is None:
        for problem in report.errors:
            click.echo(f"{documents[0].where}: {problem}", err=True)
        sys.exit(1)
    job = report.job
    if local:
        job.spec = job.spec.with_base_dir(str(base_dir))
        for problem in recommendations(job.spec):
            click.echo(f"{documents[0].where}: warning: {problem}", err=True)
    return job


def note(message: str) -> None:
    """A diagnostic line on stderr (stdout is for results)."""
    click.echo(message, err=True)


#: `-o/--output` of the commands whose result scripts read (validate, render, prepare).
OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json", "yaml"]),
    default="text",
    show_default=True,
    help="Result format on stdout; json and yaml are for scripts.",
)
