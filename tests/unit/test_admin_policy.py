"""The cluster admin's policy, in the pure parts: which storage endpoints a job may make the operator call,
and which Ray pods a CPTJob may make KubeRay create. Every refusal names the field and the rule."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.validation.validate import parse_job
from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.policy.admin import AdminPolicy, PodPolicy, StoragePolicy
from cpt_operator.controller.policy.endpoints import address_problem, name_problem
from cpt_operator.controller.policy.pods import pod_problems
from cpt_operator.controller.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "ghcr.io/cpt-operator/cpt-trainer:0.1.0"


def resolving_to(*addresses: str) -> Any:
    def resolve(host: str, port: int, **_: Any) -> list[Any]:
        family = socket.AF_INET6 if ":" in addresses[0] else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    return resolve


# --------------------------------------------------------------------------- storage endpoints


@pytest.mark.parametrize(
    "address, inside",
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("169.254.169.254", "169.254.0.0/16"),  # a cloud's instance metadata service
        ("10.96.0.10", "10.0.0.0/8"),
        ("192.168.1.5", "192.168.0.0/16"),
        ("::1", "::1/128"),
        ("fd00::5", "fc00::/7"),
    ],
)
def test_an_endpoint_that_resolves_inside_the_cluster_or_host_is_refused(address: str, inside: str) -> None:
    problem = address_problem("http://s3.example.com:9000", StoragePolicy(), resolving_to(address))
    assert problem is not None and problem.startswith("spec.storage.endpoint: s3.example.com resolves to")
    assert inside in problem


def test_one_private_address_among_public_ones_is_enough_to_refuse() -> None:
    assert address_problem("https://s3.example.com", StoragePolicy(), resolving_to("52.1.2.3", "10.0.0.7"))


def test_public_endpoints_the_cluster_ranges_and_the_admin_exceptions() -> None:
    public = resolving_to("52.216.1.2")
    assert address_problem("https://s3.amazonaws.com", StoragePolicy(), public) is None
    cluster = StoragePolicy(cluster_ranges=["52.216.0.0/16"])
    assert "52.216.0.0/16" in (address_problem("https://s3.amazonaws.com", cluster, public) or "")
    loopback = resolving_to("127.0.0.1")
    for named in (
        StoragePolicy(allowed_endpoints=["minio.minio.svc:9000"]),
        StoragePolicy(private_endpoints=["minio.*"]),
    ):
        assert address_problem("http://minio.minio.svc:9000", named, loopback) is None  # allowed by name
    allowed = StoragePolicy(allowed_endpoints=["minio.minio.svc:9000"])
    assert address_problem("http://minio.minio.svc:9001", allowed, loopback) is not None  # another port is not
    assert name_problem("https://s3.example.com", StoragePolicy(private_endpoints=["minio.*"])) is None  # not a list
    assert address_problem("http://x:1", StoragePolicy(allow_private_endpoints=True), loopback) is None


def test_a_name_that_does_not_resolve_is_refused_with_the_name() -> None:
    def fails(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror("nodename nor servname provided")

    assert address_problem("http://nowhere.invalid", StoragePolicy(), fails) == (
        "spec.storage.endpoint: nowhere.invalid does not resolve (gaierror); check the name"
    )


def test_allowed_and_forced_endpoints_by_name() -> None:
    allowed = StoragePolicy(allowed_endpoints=["*.s3.amazonaws.com", "minio.minio.svc:9000"])
    assert name_problem("https://bucket.s3.amazonaws.com", allowed) is None
    assert name_problem("http://minio.minio.svc:9000", allowed) is None
    assert name_problem(None, allowed) is None  # AWS S3 itself
    refused = name_problem("http://evil.example.com", allowed)
    assert refused is not None and refused.startswith("spec.storage.endpoint: http://evil.example.com is not one of")
    forced = StoragePolicy(forced_endpoint="http://minio.minio.svc:9000")
    assert name_problem(None, forced) is None and name_problem("http://minio.minio.svc:9000", forced) is None
    assert "this cluster's storage is http://minio.minio.svc:9000" in (name_problem("http://x:1", forced) or "")


def test_the_policy_reads_the_helm_values_as_json() -> None:
    policy = {"storage": {"ambientCredentialsNamespaces": ["ml-*"]}, "pods": {"profile": "baseline"}}
    env = {"CPT_OPERATOR_POLICY": json.dumps(policy)}
    policy = OperatorSettings.from_env(env).policy
    assert policy.storage.ambient_credentials_namespaces == ["ml-*"] and policy.pods.profile == "baseline"
    assert OperatorSettings.from_env({}).policy == AdminPolicy()
    with pytest.raises(ValueError, match="unknownKey"):
        OperatorSettings.from_env({"CPT_OPERATOR_POLICY": '{"storage": {"unknownKey": 1}}'})


# --------------------------------------------------------------------------- Ray pods


def example(name: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d.get("kind") == "CPTJob")


def problems(doc: dict[str, Any], policy: PodPolicy | None = None) -> list[str]:
    policy = policy or PodPolicy()
    settings = OperatorSettings(trainer_image=IMAGE, policy=AdminPolicy(pods=policy))
    job = parse_job(doc)
    job.metadata.namespace = job.metadata.namespace or "ml"
    return pod_problems(job, build_rayjob(job, 1, settings), policy, IMAGE)


def with_override(**override: Any) -> dict[str, Any]:
    doc = copy.deepcopy(example("local-tiny.yaml"))
    doc["spec"]["checkpoint"]["uri"] = "s3://runs/x/"
    doc["spec"]["cluster"]["podOverrides"] = [override]
    return doc


@pytest.mark.parametrize("name", ["local-tiny.yaml", "gpu-8b-instruct.yaml", "progressive-tiny.yaml"])
def test_the_operators_own_pods_meet_the_restricted_profile(name: str) -> None:
    assert problems(example(name)) == []


def test_the_restricted_pods_carry_the_security_contexts_the_profile_asks_for() -> None:
    settings = OperatorSettings(trainer_image=IMAGE)
    template = build_rayjob(parse_job(example("local-tiny.yaml")), 1, settings)["spec"]["rayClusterSpec"]
    pod = template["headGroupSpec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    baseline = OperatorSettings(trainer_image=IMAGE, policy=AdminPolicy(pods=PodPolicy(profile="baseline")))
    plain = build_rayjob(parse_job(example("local-tiny.yaml")), 1, baseline)["spec"]["rayClusterSpec"]
    assert "securityContext" not in plain["headGroupSpec"]["template"]["spec"]


@pytest.mark.parametrize(
    "override, field, rule",
    [
        (
            {"containerSecurityContext": {"privileged": True}},
            "podOverrides[0].containerSecurityContext.privileged",
            "privileged",
        ),
        (
            {"containerSecurityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
            "containerSecurityContext.capabilities.add",
            "SYS_ADMIN",
        ),
        ({"containerSecurityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation", "must be false"),
        ({"securityContext": {"runAsUser": 0}}, "podOverrides[0].securityContext.runAsUser", "uid 0"),
        ({"securityContext": {"runAsNonRoot": False}}, "securityContext.runAsNonRoot", "must not be false"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile.type", "Unconfined"),
        ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "sysctls[0]", "kernel.msgmax"),
        (
            {
                "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                "volumeMounts": [{"name": "root", "mountPath": "/host"}],
            },
            "podOverrides[0].volumes[0].hostPath",
            "hostPath volumes are not allowed",
        ),
        (
            {"serviceAccountName": "cluster-admin"},
            "podOverrides[0].serviceAccountName",
            "ServiceAccount 'cluster-admin'",
        ),
        (
            {
                "volumes": [
                    {
                        "name": "t",
                        "projected": {"sources": [{"serviceAccountToken": {"path": "t", "audience": "vault"}}]},
                    }
                ],
                "volumeMounts": [{"name": "t", "mountPath": "/t"}],
            },
            "projected.sources[0].serviceAccountToken",
            "projected ServiceAccount tokens",
        ),
        (
            {"envFrom": [{"secretRef": {"name": "db-admin"}}]},
            "podOverrides[0].envFrom[0].secretRef.name",
            "Secret 'db-admin'",
        ),
        (
            {"env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db-admin", "key": "password"}}}]},
            "env[0].valueFrom.secretKeyRef.name",
            "Secret 'db-admin'",
        ),
        (
            {
                "volumes": [{"name": "s", "secret": {"secretName": "db-admin"}}],
                "volumeMounts": [{"name": "s", "mountPath": "/s"}],
            },
            "volumes[0].secret.secretName",
            "Secret 'db-admin'",
        ),
        (
            {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
            "podOverrides[0].tolerations[0].key",
            "control-plane",
        ),
        ({"tolerations": [{"operator": "Exists"}]}, "podOverrides[0].tolerations[0]", "tolerates every taint"),
        ({"priorityClassName": "system-node-critical"}, "podOverrides[0].priorityClassName", "system-node-critical"),
    ],
)
def test_a_pod_override_that_makes_a_pod_the_user_could_not_create_is_refused(
    override: dict[str, Any], field: str, rule: str
) -> None:
    found = problems(with_override(**override))
    assert len(found) == 1, found
    assert (
        field in found[0] and rule in found[0] and found[0].endswith("refused by the cluster's pod policy (restricted)")
    )


def test_another_image_is_refused_unless_the_admin_allows_it() -> None:
    doc = copy.deepcopy(example("local-tiny.yaml"))
    doc["spec"]["cluster"]["image"] = "docker.io/attacker/miner:latest"
    assert problems(doc) == [
        "spec.cluster.image: 'docker.io/attacker/miner:latest' is not an allowed image (allowed: "
        "ghcr.io/cpt-operator/cpt-trainer:*, ghcr.io/cpt-operator/cpt-trainer@*); refused by the cluster's pod policy "
        "(restricted)"
    ]
    doc["spec"]["cluster"]["image"] = "ghcr.io/cpt-operator/cpt-trainer:0.2.0"  # the trainer's repository, any tag
    assert problems(doc) == []
    doc["spec"]["cluster"]["image"] = "registry.example.com/team/trainer:1"
    assert problems(doc, PodPolicy(allowed_images=["registry.example.com/team/*"])) == []


def test_what_the_admin_allows_passes() -> None:
    policy = PodPolicy(
        allowed_capabilities=["IPC_LOCK"],
        allowed_service_accounts=["default", "s3-reader"],
        allowed_secrets=["nccl-*"],
        allowed_volume_types=["hostPath"],
        allowed_host_paths=["/mnt/fsx"],
    )
    doc = with_override(
        containerSecurityContext={"capabilities": {"add": ["IPC_LOCK"]}},
        serviceAccountName="s3-reader",
        envFrom=[{"secretRef": {"name": "nccl-settings"}}],
        volumes=[{"name": "fsx", "hostPath": {"path": "/mnt/fsx/data"}}],
        volumeMounts=[{"name": "fsx", "mountPath": "/data"}],
    )
    assert problems(doc, policy) == []
    doc["spec"]["cluster"]["podOverrides"][0]["volumes"][0]["hostPath"]["path"] = "/etc"
    assert problems(doc, policy) == [
        "spec.cluster.podOverrides[0].volumes[0].hostPath.path: '/etc' is not under an allowed host path; refused by "
        "the cluster's pod policy (restricted)"
    ]


def test_an_override_that_sets_one_security_setting_keeps_the_others() -> None:
    """The operator's securityContext and an override's are merged key by key: setting fsGroup or adding an allowed
    capability does not drop runAsNonRoot, the seccomp profile or `drop: [ALL]`."""
    doc = with_override(
        securityContext={"fsGroup": 1000}, containerSecurityContext={"capabilities": {"add": ["IPC_LOCK"]}}
    )
    assert problems(doc, PodPolicy(allowed_capabilities=["IPC_LOCK"])) == []
    settings = OperatorSettings(trainer_image=IMAGE)
    pod = build_rayjob(parse_job(doc), 1, settings)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "fsGroup": 1000,
    }
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}


def test_the_baseline_and_privileged_profiles() -> None:
    escalated = with_override(
        containerSecurityContext={"capabilities": {"add": ["CHOWN"]}}, securityContext={"runAsUser": 0}
    )
    assert problems(escalated, PodPolicy(profile="baseline")) == []  # CHOWN and root are baseline
    assert problems(with_override(containerSecurityContext={"privileged": True}), PodPolicy(profile="baseline"))
    assert problems(with_override(containerSecurityContext={"privileged": True}), PodPolicy(profile="privileged")) == []


# --------------------------------------------------------------------------- storage while an attempt runs


@pytest.mark.parametrize(
    "phase, refused", [("Running", True), ("Preparing", True), ("Pending", False), ("Suspended", False), (None, False)]
)
def test_storage_cannot_change_while_an_attempt_runs(phase: str | None, refused: bool) -> None:
    """The API server refuses a new spec.storage while the operator and the pods use the old one (CEL)."""
    from cpt_core.validation.validate import cel_violations

    old = copy.deepcopy(example("local-tiny.yaml"))
    old["spec"]["storage"] = {"endpoint": "https://s3.example.com", "credentialsSecret": "s3"}
    if phase:
        old["status"] = {"phase": phase}
    new = copy.deepcopy(old)
    new["spec"]["storage"]["endpoint"] = "http://metadata.internal"
    messages = [str(p) for p in cel_violations(new, old)]
    assert any(m.startswith("spec.storage: cannot change while an attempt runs") for m in messages) == refused, messages
    unchanged = copy.deepcopy(old)
    unchanged["spec"]["runPolicy"] = {"suspend": True}  # what `cpt suspend` patches
    assert cel_violations(unchanged, old) == []


def test_the_charts_policy_values_are_the_policys_defaults() -> None:
    """values.yaml documents the policy the operator runs with by default, and its schema knows every key."""
    values = yaml.safe_load((ROOT / "charts" / "cpt-operator" / "values.yaml").read_text())["policy"]
    assert AdminPolicy.model_validate(values) == AdminPolicy()
    schema = __import__("json").loads((ROOT / "charts" / "cpt-operator" / "values.schema.json").read_text())
    sections = schema["properties"]["policy"]["properties"]
    for name, model in (("storage", StoragePolicy), ("pods", PodPolicy)):
        assert set(sections[name]["properties"]) == {f.alias for f in model.model_fields.values()}, name
        assert set(values[name]) == set(sections[name]["properties"]), name
