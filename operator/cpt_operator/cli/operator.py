"""The operator's subcommands of `cpt` (composed lazily by `cpt_core.cli`): `operator`, `render`."""

from __future__ import annotations

from pathlib import Path

import click
from cpt_core.cli import examples, fail
from cpt_core.cli.common import load_local_job, needs, setup_logging


@click.command(
    epilog=examples(
        "cpt operator                                 # all namespaces, settings from CPT_OPERATOR_*",
        "cpt operator -n ml-team -n research --metrics-port 9090",
        "helm install cpt-operator charts/cpt-operator  # how clusters run it",
    )
)
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch all namespaces (the default without -n).")
@click.option("--trainer-image", default=None, help="Default image of the Ray pods [CPT_OPERATOR_TRAINER_IMAGE].")
@click.option("--metrics-port", type=int, default=None, help="Prometheus /metrics port, 0 to disable [8080].")
@click.option("--health-port", type=int, default=None, help="Liveness /healthz port, 0 to disable [8081].")
@click.option("--poll-seconds", type=float, default=None, help="Progress/RayJob polling interval [10].")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default=None, help="Log records as text or JSON lines [text]."
)
def operator(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    trainer_image: str | None,
    metrics_port: int | None,
    health_port: int | None,
    poll_seconds: float | None,
    log_format: str | None,
) -> None:
    """Run the operator: reconcile CPTJobs into KubeRay RayJobs.

    Every option also reads CPT_OPERATOR_<NAME> from the environment (flags win).
    """
    from cpt_operator.controller.settings import OperatorSettings

    setup_logging()
    if all_namespaces and namespaces:
        fail("use either --namespace or --all-namespaces", 2)
    settings = OperatorSettings.from_env(
        namespaces=list(namespaces),
        trainer_image=trainer_image,
        metrics_port=metrics_port,
        health_port=health_port,
        poll_seconds=poll_seconds,
        log_format=log_format,
    )
    with needs("operator", "operator"):
        from cpt_operator.controller.app import main as run_operator

        run_operator(settings)


@click.command(
    epilog=examples(
        "cpt render job.yaml                          # YAML, one document per object",
        "cpt render -n ml-team job.yaml | kubectl apply -f -",
        "cpt render -o json job.yaml | jq '.items[-1].spec.rayClusterSpec'",
        "cat secret.yaml job.yaml | cpt render -     # the Secret is skipped",
    )
)
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@click.option("-n", "--namespace", default=None, help="Namespace of the objects when the manifest has none [default].")
@click.option("--trainer-image", default=None, help="Image of the Ray pods (as the operator would default it).")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="yaml: a multi-document stream; json: a v1 List (as kubectl prints it).",
)
def render(file: Path, namespace: str | None, trainer_image: str | None, output: str) -> None:
    """Print the objects the operator would create for FILE (attempt 1): the ConfigMap, the
    NetworkPolicy and the RayJob.

    FILE is a manifest holding one CPTJob (other objects in it are skipped) or - for stdin.
    Review them, or `kubectl apply` them without the operator. As with kubectl, -n must agree
    with a namespace the manifest sets. The Ray cluster requires a token that KubeRay generates
    (authOptions.mode token, KubeRay 1.5.1+), unless CPT_OPERATOR_KUBERAY_AUTH says otherwise;
    with token-secret, the token Secret is printed too (a new random token each time). What the
    operator's admin policy (CPT_OPERATOR_POLICY, else its defaults: docs/security.md) would refuse
    is said on stderr.
    """
    import json
    import secrets

    from cpt_operator.controller.build.access import build_auth_secret, build_network_policy
    from cpt_operator.controller.build.manifests import build_configmap, build_rayjob, dump_yaml
    from cpt_operator.controller.policy.admin import ambient_allowed
    from cpt_operator.controller.policy.endpoints import name_problem, uses_s3
    from cpt_operator.controller.policy.pods import pod_problems
    from cpt_operator.controller.settings import OperatorSettings

    job = load_local_job(file, local=False)
    if namespace and job.metadata.namespace and job.metadata.namespace != namespace:
        fail(
            f"{file}: the manifest's namespace '{job.metadata.namespace}' does not match -n {namespace}; "
            "drop metadata.namespace or pass the same namespace"
        )
    job.metadata.namespace = job.metadata.namespace or namespace or "default"
    settings = OperatorSettings.from_env(trainer_image=trainer_image)
    auth = "token" if settings.kuberay_auth == "auto" else settings.kuberay_auth  # no CRD to read here
    objects = [build_configmap(job)]
    if auth == "token-secret":
        objects.append(build_auth_secret(job, secrets.token_urlsafe(32)))
    if settings.network_policy:
        objects.append(build_network_policy(job, 1, settings))
    rayjob = build_rayjob(job, 1, settings, auth=auth)
    objects.append(rayjob)
    # What the admin policy (CPT_OPERATOR_POLICY, else its defaults) would refuse: on stderr, like kubectl's warnings.
    storage = settings.policy.storage
    named = name_problem(job.spec.storage.endpoint, storage)
    refused = [named] if named else []
    lent = ambient_allowed(job.metadata.namespace, storage)
    if job.spec.storage.credentials_secret is None and uses_s3(job.spec) and not lent:
        refused.append("spec.storage.credentialsSecret: required unless the admin lends the ambient identity")
    refused += pod_problems(job, rayjob, settings.policy.pods, settings.trainer_image)
    for problem in refused:
        click.echo(f"warning: the operator's policy would refuse this job: {problem}", err=True)
    if not job.metadata.uid:
        for obj in objects:  # no owner without a uid: these are standalone objects
            obj["metadata"].pop("ownerReferences", None)
    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        click.echo(dump_yaml(*objects), nl=False)
