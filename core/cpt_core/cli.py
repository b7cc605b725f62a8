"""`cpt`: the command line of cpt-operator, composed lazily from each side's commands.

`COMMANDS` maps a subcommand to `"module:function"`. A subcommand's module is imported only
when that subcommand runs (help texts are in the table), so `cpt validate` starts in well under
a second, the operator image runs `cpt operator` without torch or Ray, and the trainer image runs
`cpt train` without kopf. The commands of the contract itself (validate, crd, api-docs) live here.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__

if TYPE_CHECKING:
    from .api.v1alpha1 import CPTJob


@dataclass(frozen=True)
class Entry:
    target: str  # "module:function" of a click command
    help: str  # one line for `cpt --help` (the module is not imported to list it)
    extra: str = ""  # the package extra the command needs
    hidden: bool = False  # internal: run by the operator or `make`, not by users


COMMANDS: dict[str, Entry] = {
    "validate": Entry("cpt_core.cli:validate", "Validate CPTJob manifests (schema, CEL rules, semantic checks)."),
    "synthesize": Entry(
        "cpt_trainer.cli:synthesize", "Generate question-answer sources from documents (synthesize).", "trainer"
    ),
    "prepare": Entry("cpt_trainer.cli:prepare", "Tokenize, pack and cache the job's data.", "trainer"),
    "run": Entry("cpt_trainer.cli:run", "Run a CPTJob on this machine (embedded Ray).", "trainer"),
    "render": Entry("cpt_operator.cli:render", "Print the ConfigMap and RayJob the operator would create."),
    "operator": Entry("cpt_operator.cli:operator", "Run the operator: reconcile CPTJobs into RayJobs.", "operator"),
    "status": Entry("cpt_operator.jobs_cli:status", "Show a CPTJob on the cluster.", "operator"),
    "logs": Entry("cpt_operator.jobs_cli:logs", "Print the logs of a CPTJob's attempt.", "operator"),
    "suspend": Entry("cpt_operator.jobs_cli:suspend", "Suspend a CPTJob (checkpoints kept).", "operator"),
    "resume": Entry("cpt_operator.jobs_cli:resume", "Resume a suspended CPTJob from its last checkpoint.", "operator"),
    "crd": Entry("cpt_core.cli:crd", "Print the CPTJob CustomResourceDefinition."),
    "train": Entry("cpt_trainer.cli:train", "The RayJob entrypoint (run by the operator).", "trainer", hidden=True),
    "api-docs": Entry("cpt_core.cli:api_docs", "Print the generated references (make docs).", hidden=True),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, _, attribute = entry.target.partition(":")
        try:
            command = getattr(importlib.import_module(module), attribute)
        except ImportError as exc:
            return _missing(name, entry, exc)
        command.hidden = entry.hidden
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, entry.help) for name, entry in COMMANDS.items() if not entry.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _missing(name: str, entry: Entry, exc: ImportError) -> click.Command:
    """A stand-in that says which extra to install, instead of an ImportError traceback."""

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def missing() -> None:
        fail(f"`cpt {name}` needs the '{entry.extra}' extra: pip install 'cpt-operator[{entry.extra}]' ({exc})")

    return missing


def examples(*lines: str) -> str:
    """An "Examples:" epilog that click prints verbatim (a \\b paragraph is not rewrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=examples(
        "cpt validate examples/                  # check manifests before applying them",
        "cpt run examples/local-tiny.yaml        # train on this machine",
        "cpt render -n ml-team job.yaml          # the RayJob the operator would create",
        "cpt COMMAND --help                      # options and examples of one command",
    ),
)
@click.version_option(__version__, prog_name="cpt")
def main() -> None:
    """Continued pre-training of language models on Kubernetes (and on your laptop)."""


# --------------------------------------------------------------------------- shared helpers


def setup_logging(level: int | None = None) -> None:
    """Our loggers at INFO on stderr; third-party libraries stay at WARNING (celpy and Ray are chatty)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("cpt_core", "cpt_operator", "cpt_trainer"):
        logging.getLogger(name).setLevel(level or logging.INFO)


def quiet_logging_level() -> int:
    """DEBUG with CPT_DEBUG set, else WARNING (for commands that draw their own progress)."""
    return logging.DEBUG if os.environ.get("CPT_DEBUG") else logging.WARNING


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit: what every command does on an error it understands."""
    click.echo(f"error: {message}", err=True)
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
    from .api.validation import InvalidJob, UnreadableFile, recommendations
    from .api.validation import validate as check
    from .cli_inputs import job_documents, parse, read

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


# --------------------------------------------------------------------------- the contract's commands


@click.command(
    epilog=examples(
        "cpt validate job.yaml                  # one file",
        "cpt validate examples/                 # every *.yaml, *.yml, *.json in a directory",
        "kubectl get cptjob my-job -o yaml | cpt validate -",
        "cpt validate -o json jobs/ | jq '.[] | select(.valid | not)'",
    )
)
@click.argument("files", nargs=-1, required=True)
@click.option("-q", "--quiet", is_flag=True, help="Print problems only, not the valid files.")
@OUTPUT
def validate(files: tuple[str, ...], quiet: bool, output: str) -> None:
    """Validate CPTJob manifests against the API (schema, CEL rules, semantic checks).

    FILES are manifests, directories (their *.yaml, *.yml and *.json files) or - for stdin.
    Documents that are other Kubernetes objects (a Secret beside the job) are skipped with a
    note on stderr.

    Exit status: 0 when every CPTJob is valid, 1 when any is invalid (or an input holds none),
    2 when an input cannot be read. Problems go to stdout, one per line (with -o json|yaml: one
    record per document); warnings and notes go to stderr.
    """
    from .api.validation import InvalidJob, UnreadableFile
    from .api.validation import validate as check
    from .cli_inputs import dump, expand, job_documents, parse, read

    invalid = unreadable = False
    results: list[dict[str, Any]] = []
    try:
        inputs = expand(files)
    except UnreadableFile as exc:
        fail(str(exc), 2)
    for arg in inputs:
        try:
            label, text, base_dir = read(arg)
            documents = job_documents([parse(label, text, base_dir)], note)
        except UnreadableFile as exc:
            note(str(exc))
            unreadable = True
            continue
        except InvalidJob as exc:
            problems = [str(problem) for problem in exc.errors]
            results.append({"source": exc.source, "name": None, "valid": False, "errors": problems, "warnings": []})
            invalid = True
            continue
        if not documents:
            problem = "no CPTJob document (every document was skipped)"
            results.append({"source": label, "name": None, "valid": False, "errors": [problem], "warnings": []})
            invalid = True
        for document in documents:
            report = check(document.doc)
            name = report.job.metadata.name if report.job is not None else None
            errors, warnings = [str(p) for p in report.errors], [str(p) for p in report.warnings]
            results.append(
                {"source": document.where, "name": name, "valid": not errors, "errors": errors, "warnings": warnings}
            )
            invalid = invalid or bool(errors)
    if output != "text":
        click.echo(dump(results, output), nl=False)
    for result in results:
        where = result["source"]
        for problem in result["errors"] if output == "text" else []:
            click.echo(f"{where}: {problem}")
        for problem in result["warnings"]:
            note(f"{where}: warning: {problem}")
        if result["valid"] and not quiet:
            note(f"{where}: valid CPTJob '{result['name']}'")
    sys.exit(2 if unreadable else 1 if invalid else 0)


@click.command(
    epilog=examples(
        "cpt crd | kubectl apply --server-side -f -   # when the chart runs with crds.enabled=false",
        "cpt crd --helm > charts/cpt-operator/templates/crds/cpt.dev_cptjobs.yaml   # make crd",
    )
)
@click.option("--helm", is_flag=True, help="Print the Helm chart's CRD template instead (gated by crds.enabled).")
def crd(helm: bool) -> None:
    """Print the CPTJob CustomResourceDefinition generated from the API models."""
    from .api.crd import crd_yaml, helm_crd_template

    click.echo(helm_crd_template() if helm else crd_yaml(), nl=False)


@click.command("api-docs")
@click.option(
    "--what",
    type=click.Choice(["api", "progress", "reasons"]),
    default="api",
    help="api: docs/api.md; progress: docs/progress.md; reasons: the troubleshooting table of docs/operations.md.",
)
def api_docs(what: str) -> None:
    """Print a reference generated from the API models."""
    from .api.docs import api_reference, progress_reference
    from .reasons import reasons_table

    text: dict[str, Any] = {"api": api_reference, "progress": progress_reference, "reasons": reasons_table}
    click.echo(text[what](), nl=False)


if __name__ == "__main__":
    main()
