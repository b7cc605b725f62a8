"""`cpt status|logs|suspend|resume JOB`: CPTJobs on a cluster, the way kubectl works (also `kubectl cpt ...`).

The cluster is reached like the operator reaches it (`controller/kube.py` with kopf's login): the
service account inside a pod, else the current context of $KUBECONFIG or ~/.kube/config, whose
namespace is the default of `-n`. `cpt logs` reads the pods of the live attempt through the pod log
API; once they are gone, the copies the operator made in `<checkpoint.uri>/logs/attempt-N/`, with the job's
own credentials Secret (read with the caller's RBAC) -- the caller's own AWS credentials only when asked
(`--my-credentials`): the job's endpoint is whoever created the job's choice. What a log holds is the job's
container's to write: it reaches the terminal with its control sequences stripped (cpt_core.cli.terminal).
Results go to stdout, diagnostics to stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from cpt_core.cli import examples, fail
from cpt_core.cli.terminal import TerminalFilter, safe_bytes, terminal_safe
from cpt_core.contract.names import ACCESS_KEY_ID, CPTJOBS, GROUP, SECRET_ACCESS_KEY, SINGULAR

T = TypeVar("T")
ROLES = ("driver", "head", "worker")


def _connect() -> tuple[Any, str]:
    """Kopf's login (service account, else kubeconfig) and the namespace of the current context."""
    import kopf

    settings = kopf.OperatorSettings()
    try:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    except (OSError, KeyError, kopf.LoginError) as exc:
        fail(f"cannot read the kubeconfig: {exc}; set KUBECONFIG or run inside the cluster")
    if info is None:
        fail("no cluster to talk to: set KUBECONFIG (or create ~/.kube/config), or run inside the cluster")
    return info, info.default_namespace or "default"


def _run(namespace: str | None, work: Callable[[Any, str], Awaitable[T]]) -> T:
    """Run `work(kube, namespace)` with a client of the current context; API errors end in one line."""
    from cpt_operator.controller.io.kube import ApiError, Kube

    info, default_namespace = _connect()

    async def go() -> T:
        kube = Kube(info)
        try:
            return await work(kube, namespace or default_namespace)
        finally:
            await kube.close()

    try:
        return asyncio.run(go())
    except ApiError as exc:
        hint = " (check your RBAC: kubectl auth can-i ...)" if exc.status == 403 else ""
        fail(f"the API server answered {exc.status}: {exc.message}{hint}")
    except OSError as exc:
        fail(f"cannot reach the API server {info.server}: {exc}")


async def _job(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    job = await kube.get(*CPTJOBS, namespace, name)
    if job is None:
        fail(f'cptjob "{name}" not found in namespace "{namespace}" (kubectl get cptjobs -n {namespace})')
    return dict(job)


namespace_option = click.option("-n", "--namespace", default=None, help="Namespace [the kubeconfig context's].")


# --------------------------------------------------------------------------- status


def _status_lines(job: dict[str, Any]) -> list[str]:
    meta, st = job["metadata"], job.get("status") or {}
    restarts = st.get("restarts", 0)
    lines = [
        f"Name:        {meta['name']} (namespace {meta['namespace']})",
        f"Phase:       {st.get('phase') or '(not reconciled yet)'}  attempt {st.get('attempt', 0)}, "
        f"{restarts} restart{'s' if restarts != 1 else ''}",
    ]
    if st.get("message"):
        lines.append(f"Message:     {st['message']}")
    progress = st.get("progress") or {}
    if progress:
        parts = [f"step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}"]
        for key, label, fmt in (("loss", "loss", "{:.4g}"), ("tokensPerSecond", "tokens/s", "{:,.0f}")):
            if progress.get(key) is not None:
                parts.append(f"{label} {fmt.format(progress[key])}")
        if progress.get("etaSeconds") is not None:
            parts.append(f"eta {progress['etaSeconds']} s")
        lines.append(f"Progress:    {', '.join(parts)}")
    latest = ((st.get("evaluation") or {}).get("latest")) or {}
    if latest:
        losses = ", ".join(
            f"{k[:-4]} {latest[k]:.4g}" for k in ("domainLoss", "generalLoss") if latest.get(k) is not None
        )
        lines.append(f"Evaluation:  step {latest.get('step')}: {losses}")
    if st.get("checkpoint"):
        lines.append(f"Checkpoint:  step {st['checkpoint'].get('step')} {st['checkpoint'].get('uri', '')}")
    if st.get("rayJobName"):
        dashboard = f"  dashboard {st['dashboardURL']}" if st.get("dashboardURL") else ""
        lines.append(f"RayJob:      {st['rayJobName']}{dashboard}")
    if st.get("logsUri"):
        lines.append(f"Logs:        {st['logsUri']}attempt-N/  (cpt logs {meta['name']} --attempt N)")
    for kept in st.get("keptRayJobs") or []:
        lines.append(f"Kept:        RayJob {kept['name']} until {kept['deleteAfter']}")
    if (st.get("output") or {}).get("modelUri"):
        lines.append(f"Model:       {st['output']['modelUri']}")
    if st.get("conditions"):
        lines.append("Conditions:")
        for c in st["conditions"]:
            lines.append(f"  {c['type']:<18} {c['status']:<7} {c.get('reason', ''):<22} {c.get('message', '')}")
    return lines


@click.command(
    epilog=examples(
        "cpt status my-job -n ml",
        "cpt status my-job -o json | jq .status.progress",
        "kubectl cpt status my-job",
    )
)
@click.argument("job")
@namespace_option
@click.option("-o", "--output", type=click.Choice(["text", "json", "yaml"]), default="text", help="Output format.")
def status(job: str, namespace: str | None, output: str) -> None:
    """Show a CPTJob's phase, progress, evaluation, attempts and where its logs are."""
    obj = _run(namespace, lambda kube, ns: _job(kube, ns, job))
    if output == "text":
        click.echo("\n".join(_status_lines(obj)))
        return
    meta = obj["metadata"]
    doc = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation")},
        "status": obj.get("status") or {},
    }
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        import yaml

        click.echo(yaml.safe_dump(doc, sort_keys=False), nl=False)


# --------------------------------------------------------------------------- suspend / resume


def _set_suspend(job: str, namespace: str | None, value: bool) -> None:
    async def work(kube: Any, ns: str) -> str:
        await _job(kube, ns, job)
        await kube.patch(*CPTJOBS, ns, job, {"spec": {"runPolicy": {"suspend": value}}})
        return ns

    ns = _run(namespace, work)
    click.echo(f"{SINGULAR}.{GROUP}/{job} {'suspended' if value else 'resumed'} (namespace {ns})")


@click.command(
    epilog=examples(
        "cpt suspend my-job -n ml",
    )
)
@click.argument("job")
@namespace_option
def suspend(job: str, namespace: str | None) -> None:
    """Suspend a CPTJob: its Ray cluster is deleted (logs copied first), checkpoints are kept."""
    _set_suspend(job, namespace, True)


@click.command(
    epilog=examples(
        "cpt resume my-job -n ml",
    )
)
@click.argument("job")
@namespace_option
def resume(job: str, namespace: str | None) -> None:
    """Resume a suspended CPTJob: a new attempt starts from the last committed checkpoint."""
    _set_suspend(job, namespace, False)


# --------------------------------------------------------------------------- logs


async def _live_logs(
    kube: Any, ns: str, job: dict[str, Any], attempt: int, roles: set[str], follow: bool, tail: int
) -> bool:
    """Print the live pods' logs of `attempt`; False when it has no pods any more."""
    from cpt_operator.controller.build.names import rayjob_name
    from cpt_operator.controller.io.evidence import attempt_pods

    name = job["metadata"]["name"]
    pods = [p for p in await attempt_pods(kube, ns, name, rayjob_name(name, attempt), attempt) if p.role in roles]
    if not pods:
        return False
    if follow:
        pods = pods[:1]  # one stream: the driver when it is there (the training output), else the head
    for pod in pods:
        if len(pods) > 1:
            click.echo(f"==> {pod.role} {pod.pod}/{pod.container} <==", err=True)
        stream = TerminalFilter()
        async for chunk in kube.log_stream(ns, pod.pod, pod.container, tail_lines=tail, follow=follow):
            sys.stdout.buffer.write(stream.feed(chunk))
            sys.stdout.flush()
        sys.stdout.buffer.write(stream.close())
        sys.stdout.flush()
    return True


def _logs_uri(job: dict[str, Any], attempt: int) -> str:
    """Where the operator copied `attempt`'s logs: `<checkpoint.uri>/logs/attempt-N/`."""
    from cpt_operator.controller.io.evidence import attempt_logs_uri

    return attempt_logs_uri(str(job["spec"]["checkpoint"]["uri"]), attempt)


async def _job_credentials(kube: Any, ns: str, job: dict[str, Any], attempt: int) -> dict[str, str | None]:
    """The job's own credentials Secret, read with the caller's RBAC; one line (`fail`) when there is none to use."""
    from cpt_core.contract.names import CREDENTIAL_KEYS

    from cpt_operator.controller.io.kube import ApiError

    name = job["metadata"]["name"]
    where = f"attempt {attempt}'s copied logs are at {_logs_uri(job, attempt)}"
    own = "pass --my-credentials to read them with your own AWS credentials"
    secret_name = (job.get("spec", {}).get("storage") or {}).get("credentialsSecret")
    if not secret_name:
        fail(f"cptjob {name} names no spec.storage.credentialsSecret to read its copied logs with; {where} ({own})")
    try:
        secret = await kube.secret_data(ns, secret_name, [k for k, _ in CREDENTIAL_KEYS])
    except ApiError as exc:
        if exc.status not in (401, 403):
            raise
        why = f"you may not read it (the API server answered {exc.status})"
    else:
        if secret is not None and secret.get(ACCESS_KEY_ID) and secret.get(SECRET_ACCESS_KEY):
            return secret
        why = "it does not exist" if secret is None else f"it has no {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
    fail(
        f'cannot read Secret "{secret_name}" (spec.storage.credentialsSecret of cptjob {name}) in namespace "{ns}": '
        f"{why}; {where} ({own})"
    )


def _copied_logs(
    job: dict[str, Any],
    secret: dict[str, str | None] | None,
    attempt: int,
    roles: set[str],
    s3_endpoint: str | None,
    tail: int,
) -> None:
    """Print the copies in `<checkpoint.uri>/logs/attempt-N/` (the attempt's pods are gone), read with `secret`,
    or with the caller's own credentials when it is None (`--my-credentials`)."""
    from cpt_core.api import v1alpha1 as api
    from cpt_core.storage import NotFound, StorageError

    from cpt_operator.controller.io.clients import storage_for
    from cpt_operator.controller.settings import OperatorSettings

    spec = api.CPTJobSpec.model_validate(job["spec"])
    storage = storage_for(spec.storage, secret, OperatorSettings(s3_endpoint=s3_endpoint), ambient=secret is None)
    uri = _logs_uri(job, attempt)
    try:
        files = [o for o in storage.list_objects(uri) if o.uri.rsplit("/", 1)[-1].split("-", 1)[0] in roles]
    except StorageError as exc:
        fail(f"attempt {attempt}'s pods are gone and its copied logs cannot be read at {uri}: {exc}")
    if not files:
        fail(f"attempt {attempt} has no live pods and no copied logs at {uri}")
    click.echo(f"attempt {attempt} has ended; its logs as copied to {uri}", err=True)
    for obj in files:
        if len(files) > 1:
            click.echo(f"==> {terminal_safe(obj.uri.rsplit('/', 1)[-1])} <==", err=True)
        try:
            data = storage.read_bytes(obj.uri)
        except NotFound:
            continue
        if tail:
            data = b"".join(data.splitlines(keepends=True)[-tail:])
        sys.stdout.buffer.write(safe_bytes(data))
        sys.stdout.flush()


@click.command(
    epilog=examples(
        "cpt logs my-job -f                  # follow the current attempt's driver",
        "cpt logs my-job --attempt 1         # a failed attempt, from its copied logs",
        "cpt logs my-job --role all --tail 100",
        "cpt logs my-job --attempt 1 --my-credentials  # your AWS credentials, not the job's Secret",
        "kubectl cpt logs my-job -n ml",
    )
)
@click.argument("job")
@namespace_option
@click.option("--attempt", type=int, default=None, help="Attempt N [the current one].")
@click.option("-f", "--follow", is_flag=True, help="Stream the live log until the attempt ends.")
@click.option(
    "--role",
    type=click.Choice([*ROLES, "all"]),
    default="driver",
    help="Whose log: the driver (the training output), the Ray head, the workers, or all [driver].",
)
@click.option("--tail", type=int, default=0, help="Only the last N lines of each log.")
@click.option(
    "--s3-endpoint", default=None, help="S3 endpoint for the copied logs when spec.storage.endpoint is in-cluster."
)
@click.option(
    "--my-credentials",
    is_flag=True,
    help="Read the copied logs with your own AWS credentials (AWS_* environment, ~/.aws) instead of the job's "
    "credentialsSecret. They are sent to the job's endpoint: spec.storage.endpoint, which whoever created the job "
    "chose, or --s3-endpoint. Only for an endpoint you trust.",
)
def logs(
    job: str,
    namespace: str | None,
    attempt: int | None,
    follow: bool,
    role: str,
    tail: int,
    s3_endpoint: str | None,
    my_credentials: bool,
) -> None:
    """Print the logs of a CPTJob's attempt: its live pods', or the copies the operator kept.

    When the attempt's pods are gone (it failed, was suspended or superseded), the logs come from
    <checkpoint.uri>/logs/attempt-N/, read with the job's own credentialsSecret (you need to be allowed
    to get it); your own credentials are used only with --my-credentials. Terminal control sequences
    (colours, titles, cursor moves) are stripped from what is printed.
    """
    roles = set(ROLES) if role == "all" else {role}

    async def work(kube: Any, ns: str) -> tuple[dict[str, Any], int, bool, dict[str, str | None] | None]:
        obj = await _job(kube, ns, job)
        current = int((obj.get("status") or {}).get("attempt") or 0)
        wanted = attempt or current
        if wanted < 1 or wanted > max(current, 1):
            fail(f"cptjob {job} has no attempt {wanted} (attempts so far: {current})")
        if await _live_logs(kube, ns, obj, wanted, roles, follow, tail):
            return obj, wanted, True, None
        secret = None if my_credentials else await _job_credentials(kube, ns, obj, wanted)
        return obj, wanted, False, secret

    obj, wanted, live, secret = _run(namespace, work)
    if not live:
        _copied_logs(obj, secret, wanted, roles, s3_endpoint, tail)


# --------------------------------------------------------------------------- kubectl plugin


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def kubectl_cpt() -> None:
    """CPTJobs from kubectl: `kubectl cpt status|logs|suspend|resume JOB`.

    \b
    Examples:
      kubectl cpt status my-job -n ml
      kubectl cpt logs my-job -f
    """


for _command in (status, logs, suspend, resume):
    kubectl_cpt.add_command(_command)


def kubectl_main() -> None:
    """The `kubectl-cpt` executable (kubectl finds plugins named kubectl-* on the PATH)."""
    kubectl_cpt(prog_name="kubectl cpt")
