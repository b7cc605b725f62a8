"""`cpt`: the command line of cpt-operator.

Subcommands import their heavy dependencies lazily, so `cpt validate` and `cpt crd` start in
well under a second and work in the operator image, which has neither torch nor Ray.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cpt")
def main() -> None:
    """Continued pre-training of language models on Kubernetes (and on your laptop)."""


# --------------------------------------------------------------------------- API


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="Print problems only, not the valid files.")
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Validate CPTJob manifests against the API (schema, CEL rules, semantic checks).

    Exit status: 0 when every document is valid, 1 when any is invalid, 2 when a file cannot
    be read. Problems go to stdout, one per line; warnings go to stderr.
    """
    from .api.validation import InvalidJob, UnreadableFile, load_documents
    from .api.validation import validate as check

    invalid = unreadable = False
    for path in files:
        try:
            docs = load_documents(path)
        except UnreadableFile as exc:
            click.echo(str(exc), err=True)
            unreadable = True
            continue
        except InvalidJob as exc:
            for problem in exc.errors:
                click.echo(f"{path}: {problem}")
            invalid = True
            continue
        for index, doc in enumerate(docs, start=1):
            where = f"{path}#{index}" if len(docs) > 1 else str(path)
            report = check(doc)
            for problem in report.errors:
                click.echo(f"{where}: {problem}")
            for problem in report.warnings:
                click.echo(f"{where}: warning: {problem}", err=True)
            if report.errors:
                invalid = True
            elif not quiet and report.job is not None:
                click.echo(f"{where}: valid CPTJob '{report.job.metadata.name}'", err=True)
    sys.exit(2 if unreadable else 1 if invalid else 0)


@main.command()
def crd() -> None:
    """Print the CPTJob CustomResourceDefinition generated from the API models."""
    from .api.crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


@main.command("api-docs")
def api_docs() -> None:
    """Print the API reference (docs/api.md) generated from the API models."""
    from .api.docs import api_reference

    click.echo(api_reference(), nl=False)


if __name__ == "__main__":
    main()
