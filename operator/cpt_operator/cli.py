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


def setup_logging(level: int | None = None) -> None:
    """Our loggers at INFO on stderr; third-party libraries stay at WARNING (celpy and Ray are chatty)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("cpt_operator", "cpt_trainer"):
        logging.getLogger(name).setLevel(level or logging.INFO)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _load_local_job(path: Path):
    """The job in `path` with relative paths resolved against its directory, or a clean exit."""
    from .api.validation import InvalidJob, UnreadableFile, load_job, recommendations

    try:
        job = load_job(path, local=True)
    except UnreadableFile as exc:
        _fail(str(exc), 2)
    except InvalidJob as exc:
        for problem in exc.errors:
            click.echo(f"{path}: {problem}")
        sys.exit(1)
    for problem in recommendations(job.spec):
        click.echo(f"{path}: warning: {problem}", err=True)
    return job


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ray/--no-ray", "use_ray", default=False, help="Tokenize with Ray Data on a local Ray instance.")
@click.option("--cpus", type=int, default=None, help="CPUs for local Ray (default: all).")
def prepare(file: Path, use_ray: bool, cpus: int | None) -> None:
    """Tokenize, pack and cache the job's data (what every run does first).

    A second run with the same inputs is a cache hit that does no tokenization.
    """
    import json

    from .storage import S3Settings, Storage, StorageError

    setup_logging()
    job = _load_local_job(file)
    storage = Storage(S3Settings.from_spec(job.spec.storage))
    try:
        from cpt_trainer.data import DataError
        from cpt_trainer.data import prepare as run_prepare
        from cpt_trainer.sources import ModelSourceError

        if use_ray:
            from cpt_trainer.local_ray import local_ray

            with local_ray(num_cpus=cpus):
                report = run_prepare(job.spec, storage, use_ray=True, parallelism=cpus or 2)
        else:
            report = run_prepare(job.spec, storage)
    except (DataError, ModelSourceError, StorageError) as exc:
        _fail(str(exc))
    for source in report.sources:
        m = source.manifest
        state = "cache hit" if source.cache_hit else f"tokenized {source.tokenized_documents} documents"
        click.echo(
            f"{source.name}: {state}; {m['train']['rows']} rows x {m['sequenceLength']} tokens, "
            f"{m['holdout']['documents']} holdout documents, {m['skipped']['malformed']} malformed skipped "
            f"-> {source.uri}"
        )
    click.echo(json.dumps({"tokenizedDocuments": report.tokenized_documents}), err=True)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all).")
def run(file: Path, cpus: int | None) -> None:
    """Run a CPTJob on this machine: embedded Ray, local paths or S3, live progress, final report.

    Running the same file again resumes from the newest committed checkpoint.
    Exit status: 0 succeeded, 1 failed, 3 stopped (e.g. forgetting detected), 130 interrupted.
    """
    setup_logging(logging_level())
    job = _load_local_job(file)
    from cpt_trainer.commands import run_local

    sys.exit(run_local(job, cpus))


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--attempt", type=int, required=True, help="Attempt number assigned by the operator (fencing).")
@click.option("--uid", default=None, help="The CPTJob's metadata.uid (checkpoint identity).")
@click.option("--max-worker-failures", type=int, default=1, help="In-attempt worker restarts by Ray Train.")
def train(file: Path, attempt: int, uid: str | None, max_worker_failures: int) -> None:
    """The RayJob entrypoint: train one attempt of the CPTJob in FILE on the current Ray cluster."""
    setup_logging()
    job = _load_local_job(file)
    if uid:
        job.metadata.uid = uid
    from cpt_trainer.commands import train_in_cluster

    sys.exit(train_in_cluster(job, attempt, max_worker_failures))


def logging_level() -> int:
    import logging
    import os

    return logging.DEBUG if os.environ.get("CPT_DEBUG") else logging.WARNING


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch all namespaces (the default without -n).")
@click.option("--trainer-image", default=None, help="Default image of the Ray pods [CPT_OPERATOR_TRAINER_IMAGE].")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port, 0 to disable [8080].")
@click.option("--health-port", type=int, default=None, help="Liveness /healthz port, 0 to disable [8081].")
@click.option("--poll-seconds", type=float, default=None, help="Progress/RayJob polling interval [10].")
def operator(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    trainer_image: str | None,
    metrics_port: int | None,
    health_port: int | None,
    poll_seconds: float | None,
) -> None:
    """Run the operator: reconcile CPTJobs into KubeRay RayJobs.

    Every option also reads CPT_OPERATOR_<NAME> from the environment (flags win).
    """
    from .controller.app import main as run_operator
    from .controller.settings import OperatorSettings

    setup_logging()
    if all_namespaces and namespaces:
        _fail("use either --namespace or --all-namespaces", 2)
    settings = OperatorSettings.from_env(
        namespaces=list(namespaces),
        trainer_image=trainer_image,
        metrics_port=metrics_port,
        health_port=health_port,
        poll_seconds=poll_seconds,
    )
    run_operator(settings)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--namespace", default=None, help="Namespace when the manifest has none [default].")
@click.option("--trainer-image", default=None, help="Image of the Ray pods (as the operator would default it).")
def render(file: Path, namespace: str | None, trainer_image: str | None) -> None:
    """Print the ConfigMap and RayJob the operator would create for FILE (attempt 1).

    Review them, or `kubectl apply` them without the operator.
    """
    from .api.validation import InvalidJob, UnreadableFile, load_job
    from .controller.builders import build_configmap, build_rayjob, dump_yaml
    from .controller.settings import OperatorSettings

    try:
        job = load_job(file)
    except UnreadableFile as exc:
        _fail(str(exc), 2)
    except InvalidJob as exc:
        for problem in exc.errors:
            click.echo(f"{file}: {problem}", err=True)
        sys.exit(1)
    job.metadata.namespace = job.metadata.namespace or namespace or "default"
    settings = OperatorSettings.from_env(trainer_image=trainer_image)
    objects = [build_configmap(job), build_rayjob(job, 1, settings)]
    if not job.metadata.uid:
        for obj in objects:  # no owner without a uid: these are standalone objects
            obj["metadata"].pop("ownerReferences", None)
    click.echo(dump_yaml(*objects), nl=False)


@main.command()
@click.option("--helm", is_flag=True, help="Print the Helm chart's CRD template instead (gated by crds.enabled).")
def crd(helm: bool) -> None:
    """Print the CPTJob CustomResourceDefinition generated from the API models."""
    from .api.crd import crd_yaml, helm_crd_template

    click.echo(helm_crd_template() if helm else crd_yaml(), nl=False)


@main.command("api-docs")
@click.option("--progress", is_flag=True, help="Document the progress file (docs/progress.md) instead.")
def api_docs(progress: bool) -> None:
    """Print the API reference (docs/api.md) generated from the API models."""
    from .api.docs import api_reference, progress_reference

    click.echo(progress_reference() if progress else api_reference(), nl=False)


if __name__ == "__main__":
    main()
