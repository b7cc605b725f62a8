"""The trainer's subcommands of `cpt` (composed lazily by `cpt_core.cli`): `prepare`, `run`, `train`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cpt_core.cli import fail, load_local_job, needs, quiet_logging_level, setup_logging


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ray/--no-ray", "use_ray", default=False, help="Tokenize with Ray Data on a local Ray instance.")
@click.option("--cpus", type=int, default=None, help="CPUs for local Ray (default: all).")
def prepare(file: Path, use_ray: bool, cpus: int | None) -> None:
    """Tokenize, pack and cache the job's data (what every run does first).

    A second run with the same inputs is a cache hit that does no tokenization.
    """
    from cpt_core.storage import S3Settings, Storage, StorageError

    setup_logging()
    job = load_local_job(file)
    storage = Storage(S3Settings.from_spec(job.spec.storage))
    with needs("prepare", "trainer"):
        from .data import DataError
        from .data import prepare as run_prepare
        from .local_ray import local_ray
        from .sources import ModelSourceError

        try:
            if use_ray:
                with local_ray(num_cpus=cpus):
                    report = run_prepare(job.spec, storage, use_ray=True, parallelism=cpus or 2)
            else:
                report = run_prepare(job.spec, storage)
        except (DataError, ModelSourceError, StorageError) as exc:
            fail(str(exc))
    for source in report.sources:
        m = source.manifest
        state = "cache hit (verified)" if source.cache_hit else f"tokenized {source.tokenized_documents} documents"
        if source.rebuilt:
            state += f" (the cached entry was damaged and was rebuilt: {source.rebuilt})"
        click.echo(
            f"{source.name}: {state}; {m.train.rows} rows x {m.sequence_length} tokens, "
            f"{m.holdout.documents} holdout documents, {m.skipped.malformed} malformed skipped -> {source.uri}"
        )


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all).")
def run(file: Path, cpus: int | None) -> None:
    """Run a CPTJob on this machine: embedded Ray, local paths or S3, live progress, final report.

    Running the same file again resumes from the newest committed checkpoint.
    Exit status: 0 succeeded, 1 failed, 3 stopped (e.g. forgetting detected), 130 interrupted by
    Ctrl-C (SIGINT), 143 interrupted by SIGTERM. On either signal the current step finishes and a
    checkpoint is committed when checkpoint.interruptGraceSeconds allows; a second signal stops at once.
    """
    setup_logging(quiet_logging_level())
    job = load_local_job(file)
    with needs("run", "trainer"):
        from .commands import run_local

        code = run_local(job, cpus, str(file))
    sys.exit(code)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--attempt", type=int, required=True, help="Attempt number assigned by the operator (fencing).")
@click.option("--uid", default=None, help="The CPTJob's metadata.uid (checkpoint and progress identity).")
@click.option("--max-worker-failures", type=int, default=1, help="In-attempt worker restarts by Ray Train.")
def train(file: Path, attempt: int, uid: str | None, max_worker_failures: int) -> None:
    """The RayJob entrypoint: train one attempt of the CPTJob in FILE on the current Ray cluster."""
    setup_logging()
    job = load_local_job(file)
    if uid:
        job.metadata.uid = uid
    with needs("train", "trainer"):
        from .commands import train_in_cluster

        code = train_in_cluster(job, attempt, max_worker_failures)
    sys.exit(code)
