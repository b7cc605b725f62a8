"""The trainer's subcommands of `cpt` (composed lazily by `cpt_core.cli`): `prepare`, `run`, `train`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click
from cpt_core.cli import examples, fail
from cpt_core.cli.common import OUTPUT, load_local_job, needs, quiet_logging_level, setup_logging

#: FILE of the commands that take one job: a manifest (other objects in it are skipped) or - for stdin.
JOB_FILE = click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))


@click.command(
    epilog=examples(
        "cpt prepare job.yaml                     # tokenize and pack; a second run is a cache hit",
        "cpt prepare --ray --cpus 8 job.yaml      # tokenize with Ray Data",
        "cpt prepare -o json job.yaml | jq '.[].uri'",
    )
)
@JOB_FILE
@click.option("--ray/--no-ray", "use_ray", default=False, help="Tokenize with Ray Data on a local Ray instance.")
@click.option("--cpus", type=int, default=None, help="CPUs for local Ray (default: all).")
@OUTPUT
def prepare(file: Path, use_ray: bool, cpus: int | None, output: str) -> None:
    """Tokenize, pack and cache the job's data (what every run does first).

    A second run with the same inputs is a cache hit that does no tokenization. One line per
    source on stdout (with -o json|yaml: one record per source); progress and logs on stderr.
    """
    from cpt_core.storage import S3Settings, Storage, StorageError

    setup_logging()
    job = load_local_job(file)
    storage = Storage(S3Settings.from_spec(job.spec.storage))
    with needs("prepare", "trainer"):
        from cpt_trainer.data import DataError
        from cpt_trainer.data import prepare as run_prepare
        from cpt_trainer.launch.local_ray import local_ray
        from cpt_trainer.model.source import ModelSourceError
        from cpt_trainer.synthesis import synthesize as run_synthesis

        try:
            if use_ray:
                with local_ray(num_cpus=cpus):
                    spec, _ = run_synthesis(job.spec, storage, use_ray=True, workers=cpus or 2, progress=_say)
                    report = run_prepare(spec, storage, use_ray=True, parallelism=cpus or 2)
            else:
                spec, _ = run_synthesis(job.spec, storage, progress=_say)
                report = run_prepare(spec, storage)
        except (DataError, ModelSourceError, StorageError) as exc:
            fail(str(exc))
    if output != "text":
        from cpt_core.cli.inputs import dump

        click.echo(dump([_prepared_record(source) for source in report.sources], output), nl=False)
        return
    for source in report.sources:
        m = source.manifest
        state = "cache hit (verified)" if source.cache_hit else f"tokenized {source.tokenized_documents} documents"
        if source.rebuilt:
            state += f" (the cached entry was damaged and was rebuilt: {source.rebuilt})"
        click.echo(
            f"{source.name}: {state}; {m.train.rows} rows x {m.sequence_length} tokens, "
            f"{m.holdout.documents} holdout documents, {m.skipped.malformed} malformed skipped -> {source.uri}"
        )


def _prepared_record(source: Any) -> dict[str, Any]:
    """One source of `cpt prepare -o json|yaml` (camelCase, like the API)."""
    m = source.manifest
    return {
        "source": source.name,
        "cacheHit": bool(source.cache_hit),
        "rebuilt": source.rebuilt or None,
        "tokenizedDocuments": source.tokenized_documents,
        "trainRows": m.train.rows,
        "sequenceLength": m.sequence_length,
        "holdoutDocuments": m.holdout.documents,
        "malformedSkipped": m.skipped.malformed,
        "uri": str(source.uri),
    }


@click.command(
    epilog=examples(
        "cpt run examples/local-tiny.yaml         # train; run it again to resume",
        "cpt run --cpus 4 job.yaml 2> train.log   # without a terminal: a progress line every 10 s",
        "cpt run --progress-seconds 60 job.yaml > report.txt   # the final report on stdout",
    )
)
@JOB_FILE
@click.option("--cpus", type=int, default=None, help="CPUs for the embedded Ray (default: all).")
@click.option(
    "--progress-seconds",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Without a terminal: seconds between plain progress lines on stderr (0: every step).",
)
def run(file: Path, cpus: int | None, progress_seconds: float) -> None:
    """Run a CPTJob on this machine: embedded Ray, local paths or S3, live progress, final report.

    Running the same file again resumes from the newest committed checkpoint. Progress goes to
    stderr: a live bar on a terminal, otherwise a plain line (step/total, loss, tokens/s, ETA)
    every --progress-seconds.

    Exit status: 0 succeeded, 1 failed, 3 stopped (e.g. forgetting detected), 130 interrupted by
    Ctrl-C (SIGINT), 143 interrupted by SIGTERM. On either signal the current step finishes and a
    checkpoint is committed when checkpoint.interruptGraceSeconds allows; a second signal stops at once.
    """
    setup_logging(quiet_logging_level())
    job = load_local_job(file)
    with needs("run", "trainer"):
        from cpt_trainer.cli.run import run_local

        code = run_local(job, cpus, str(file), progress_seconds=progress_seconds)
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
        from cpt_trainer.cli.run import train_in_cluster

        code = train_in_cluster(job, attempt, max_worker_failures)
    sys.exit(code)


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command(
    epilog=examples(
        "cpt synthesize job.yaml                  # QA pairs for every source with synthesize",
        "cpt synthesize --no-ray job.yaml         # cloze generators run faster without Ray",
        "cpt synthesize --holdout-probes veloria-qa --output runs/probes/ job.yaml",
    )
)
@JOB_FILE
@click.option("--ray/--no-ray", "use_ray", default=True, help="Generate with Ray Data on a local Ray (default).")
@click.option("--workers", type=int, default=None, help="Generator workers (default: the CPUs, or the GPUs).")
@click.option(
    "--holdout-probes",
    "probes_source",
    default=None,
    metavar="SOURCE",
    help="Instead: ask SOURCE's generator about the HOLDOUT documents of its origin (paraphrased probes, "
    "never for training) and write OUTPUT/probes.jsonl.",
)
@click.option("--output", default=None, help="With --holdout-probes: where to write (a prefix, s3:// or local).")
def synthesize(file: Path, use_ray: bool, workers: int | None, probes_source: str | None, output: str | None) -> None:
    """Synthesise question-answer sources from documents (what prepare and run do first when needed).

    A second run with the same documents, generator and filters is a cache hit that generates nothing;
    an interrupted run resumes without generating the finished units again.
    """
    import os

    from cpt_core.storage import S3Settings, Storage, StorageError

    setup_logging()
    job = load_local_job(file)
    storage = Storage(S3Settings.from_spec(job.spec.storage))
    spec = job.spec.resolved()
    indices = [i for i, s in enumerate(spec.data.sources) if s.synthesize is not None]
    if probes_source is not None:
        indices = [i for i in indices if spec.data.sources[i].name == probes_source]
        if not indices or not output:
            fail(
                f"--holdout-probes {probes_source}: needs --output and the name of a source with synthesize "
                f"(synthesised: {', '.join(s.name for s in spec.data.sources if s.synthesize) or 'none'})"
            )
    elif not indices:
        fail(f"{file}: no source in spec.data.sources has synthesize; nothing to do")
    workers = workers or os.cpu_count() or 2
    with needs("synthesize", "trainer"):
        from cpt_trainer.data import DataError
        from cpt_trainer.launch.local_ray import local_ray
        from cpt_trainer.model.source import ModelSourceError
        from cpt_trainer.synthesis import synthesize_source

        options: dict[str, Any] = {"use_ray": use_ray, "workers": workers, "progress": _say}
        if probes_source is not None:
            options.update(split="holdout", output=output)
        # Only model generators run on Ray (cloze is faster in this process than Ray is to start).
        kinds = {
            s.synthesize.generator.kind.value for i, s in enumerate(spec.data.sources) if i in indices and s.synthesize
        }
        use_ray = use_ray and "model" in kinds
        options["use_ray"] = use_ray
        try:
            with local_ray(num_cpus=workers) if use_ray else contextlib.nullcontext():
                results = [synthesize_source(spec, i, storage, **options) for i in indices]
        except (DataError, ModelSourceError, StorageError) as exc:
            fail(str(exc))
    for result in results:
        _print_synthesis(result)


def _print_synthesis(result: Any) -> None:
    m = result.manifest
    gates = m.gates
    state = (
        "cache hit" if result.cache_hit else f"generated {result.generated_units} units, reused {result.reused_units}"
    )
    rejected = ", ".join(f"{gate} {n}" for gate, n in gates.rejected.items() if n) or "none"
    click.echo(
        f"{result.source}: {state}; {m.documents} {m.split} documents of '{m.origin}' ({m.excluded_documents} "
        f"excluded) -> {gates.candidates} pairs -> {gates.kept} kept (rejected: {rejected}) -> {result.output}"
    )
    for sample in m.samples_kept[:3]:
        click.echo(f"  kept     [{sample.type}] {sample.question} -> {sample.answer}")
    for sample in m.samples_rejected[:4]:
        click.echo(f"  rejected [{sample.reason}] {sample.question[:100]} -> {sample.answer[:60]}")
