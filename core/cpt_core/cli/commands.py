"""The contract's own commands: `cpt validate`, `cpt crd`, `cpt api-docs`.

`cpt validate` (schema, CEL rules, semantic checks: what the API server and the operator would say), `cpt
crd` and `cpt api-docs` (the generated CRD and references).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cpt_core.cli.common import OUTPUT, examples, fail, note
from cpt_core.contract import names


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
    from cpt_core.cli.inputs import dump, expand, job_documents, parse, read
    from cpt_core.validation.validate import InvalidJob, UnreadableFile
    from cpt_core.validation.validate import validate as check

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
        f"cpt crd --helm > charts/cpt-operator/templates/crds/{names.GROUP}_{names.PLURAL}.yaml   # make crd",
    )
)
@click.option("--helm", is_flag=True, help="Print the Helm chart's CRD template instead (gated by crds.enabled).")
def crd(helm: bool) -> None:
    """Print the CPTJob CustomResourceDefinition generated from the API models."""
    from cpt_core.schema.crd import crd_yaml, helm_crd_template

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
    from cpt_core.contract.reasons import reasons_table
    from cpt_core.schema.docs import api_reference, progress_reference

    text: dict[str, Any] = {"api": api_reference, "progress": progress_reference, "reasons": reasons_table}
    click.echo(text[what](), nl=False)
