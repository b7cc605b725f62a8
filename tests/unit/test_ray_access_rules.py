"""Who may reach a job's Ray cluster: KubeRay token auth (detected or set), the token Secret, the NetworkPolicy.

Pure builders against Kubernetes' and KubeRay v1.7.0's schemas, the detection of what KubeRay supports from
its real CRD (older versions are that CRD without the fields they lack), the RayAuth condition, and that
nothing the operator or the trainer builds turns Ray's authentication off.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from cpt_core.api.v1alpha1 import CPTJobStatus, Phase
from cpt_core.contract.reasons import ConditionType, Reason
from cpt_core.validation.validate import parse_job, validate
from cpt_operator.controller.build.access import build_auth_secret, build_network_policy, token_of
from cpt_operator.controller.build.manifests import RayAuthMode, build_rayjob
from cpt_operator.controller.io.kube import ApiError
from cpt_operator.controller.io.kuberay import KubeRayFeatures, auth_support
from cpt_operator.controller.lifecycle.decision import CreateAttempt, Observed, PreflightResult, RayAuth
from cpt_operator.controller.lifecycle.reconcile import reconcile
from cpt_operator.controller.settings import OperatorSettings
from pydantic import ValidationError

from devkit.cluster import kuberay_rayjob_crd
from devkit.jobs import tiny_job, tiny_job_doc

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
SETTINGS = OperatorSettings(trainer_image="ghcr.io/cpt-operator/cpt-trainer:test")
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


def example(name: str) -> Any:
    doc = yaml.safe_load((ROOT / "examples" / name).read_text())
    doc["metadata"].update(namespace="ml-team", uid="0f0e0d0c-0000-4000-8000-000000000001")
    return parse_job(doc)


def containers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c for t in templates for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]


# -- the RayJob --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "options"),
    [
        ("token-secret", {"mode": "token", "secretName": "local-tiny-ray-auth"}),
        ("token", {"mode": "token"}),
        ("off", None),
    ],
)
def test_the_rayjob_asks_kuberay_for_what_it_supports(auth: RayAuthMode, options: dict[str, Any] | None) -> None:
    rayjob = build_rayjob(example("local-tiny.yaml"), 2, SETTINGS, auth=auth)
    assert rayjob["spec"]["rayClusterSpec"].get("authOptions") == options


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_built_container_sets_rays_authentication(name: str) -> None:
    """KubeRay keeps a RAY_AUTH_* value it finds in the template: the operator must never write one."""
    for auth in ("token-secret", "token", "off"):
        for container in containers(build_rayjob(example(name), 1, SETTINGS, auth=auth)):
            assert not [e for e in container.get("env", []) if e["name"].startswith(("RAY_AUTH_", "RAY_ENABLE_K8S"))]


@pytest.mark.parametrize("variable", ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_K8S_TOKEN_AUTH"])
def test_a_pod_override_may_not_set_rays_authentication(variable: str) -> None:
    doc = tiny_job_doc(
        metadata={"name": "sneaky", "namespace": "ml"},
        spec={"cluster": {"podOverrides": [{"targets": ["head"], "env": [{"name": variable, "value": "disabled"}]}]}},
    )
    report = validate(doc)
    assert report.job is None
    assert any(variable in str(e) and "KubeRay" in str(e) for e in report.errors), report.errors


# -- the token Secret --------------------------------------------------------------------------


def test_the_token_secret_is_owned_immutable_and_valid_for_kubernetes() -> None:
    job = example("gpu-8b-instruct.yaml")
    secret = build_auth_secret(job, "s3cr3t-token")
    kubernetes_validate.validate(secret, "1.32", strict=True)
    assert secret["immutable"] is True and secret["metadata"]["labels"]["cpt.dev/job"] == job.metadata.name
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "CPTJob" and owner["uid"] == job.metadata.uid and owner["controller"]
    assert base64.b64decode(secret["data"]["auth_token"]).decode() == "s3cr3t-token"
    assert token_of(secret) == "s3cr3t-token"


@pytest.mark.parametrize(
    "data",
    [{}, {"auth_token": ""}, {"auth_token": "not base64!"}, {"other": "dG9rZW4="}, {"auth_token": "ICAg"}],
    ids=["empty", "blank", "not-base64", "other-key", "spaces"],
)
def test_a_damaged_token_secret_has_no_token(data: dict[str, str]) -> None:
    assert token_of({"data": data}) is None


# -- the NetworkPolicy -------------------------------------------------------------------------


def test_the_network_policy_admits_only_the_jobs_pods_its_submitter_and_kuberay() -> None:
    job = example("gpu-8b-instruct.yaml")
    policy = build_network_policy(job, 3, SETTINGS)
    kubernetes_validate.validate(policy, "1.32", strict=True)
    name = job.metadata.name
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"cpt.dev/job": name}} and spec["policyTypes"] == ["Ingress"]
    own, dashboard = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"cpt.dev/job": name}}}]}  # every port, own pods only
    assert dashboard["ports"] == [{"protocol": "TCP", "port": 8265}]
    submitter, kuberay = dashboard["from"]
    assert submitter == {"podSelector": {"matchLabels": {"batch.kubernetes.io/job-name": f"{name}-a3"}}}
    assert kuberay == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    }
    # The Ray pods it guards are the ones the RayJob labels with the job.
    rayjob = build_rayjob(job, 3, SETTINGS, auth="token-secret")
    for template in [rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    ]:
        assert template["metadata"]["labels"]["cpt.dev/job"] == name
    assert policy["metadata"]["ownerReferences"][0]["uid"] == job.metadata.uid


def test_the_network_policy_takes_the_admins_kuberay_and_extra_rules() -> None:
    prometheus = {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }
    settings = OperatorSettings(
        kuberay_namespace="ray", kuberay_pod_labels={"app": "kuberay"}, network_policy_extra_ingress=[prometheus]
    )
    policy = build_network_policy(example("local-tiny.yaml"), 1, settings)
    kubernetes_validate.validate(policy, "1.32", strict=True)
    assert policy["spec"]["ingress"][1]["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray"}},
        "podSelector": {"matchLabels": {"app": "kuberay"}},
    }
    assert policy["spec"]["ingress"][2] == prometheus


@pytest.mark.parametrize(
    "rules",
    [[{"to": []}], [{"from": [{"pods": {}}]}], [{"from": [{}]}], [{"ports": [{"port": 80, "host": "x"}]}]],
    ids=["egress-key", "unknown-peer", "empty-peer", "unknown-port-key"],
)
def test_a_malformed_extra_rule_is_refused_at_start_up(rules: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError, match="network_policy_extra_ingress"):
        OperatorSettings(network_policy_extra_ingress=rules)


def test_the_settings_read_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "CPT_OPERATOR_KUBERAY_AUTH": "token",
            "CPT_OPERATOR_NETWORK_POLICY": "false",
            "CPT_OPERATOR_KUBERAY_NAMESPACE": "ray",
            "CPT_OPERATOR_KUBERAY_POD_LABELS": '{"app": "kuberay"}',
            "CPT_OPERATOR_NETWORK_POLICY_EXTRA_INGRESS": '[{"from": [{"podSelector": {}}]}]',
        }
    )
    assert (settings.kuberay_auth, settings.network_policy, settings.kuberay_namespace) == ("token", False, "ray")
    assert settings.kuberay_pod_labels == {"app": "kuberay"}
    assert settings.network_policy_extra_ingress == [{"from": [{"podSelector": {}}]}]
    assert OperatorSettings().kuberay_auth == "auto" and OperatorSettings().network_policy is True


# -- what KubeRay supports ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "mode"), [("1.7.0", "token-secret"), ("1.6.0", "token-secret"), ("1.5.1", "token"), ("1.5.0", "off")]
)
def test_what_the_crd_says_kuberay_supports(version: str, mode: str) -> None:
    assert auth_support(kuberay_rayjob_crd(version)) == mode


def test_a_crd_of_another_shape_supports_nothing() -> None:
    assert auth_support({}) == "off"
    assert auth_support({"spec": {"versions": [{"name": "v1alpha1", "schema": {}}]}}) == "off"
    not_served = kuberay_rayjob_crd("1.7.0")
    for version in not_served["spec"]["versions"]:
        version["served"] = False
    assert auth_support(not_served) == "off"


class FakeKube:
    """Answers the CRD read with `answer` (a CRD, None for 404, or an exception) and counts the reads."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.reads = answer, 0

    async def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> Any:
        self.reads += 1
        assert (group, plural, namespace, name) == (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            "rayjobs.ray.io",
        )
        if isinstance(self.answer, BaseException):
            raise self.answer
        return copy.deepcopy(self.answer)


def features(answer: Any, **settings: Any) -> tuple[KubeRayFeatures, FakeKube, list[float]]:
    kube, now = FakeKube(answer), [0.0]
    detector = KubeRayFeatures(kube, OperatorSettings(**settings), clock=lambda: now[0])  # type: ignore[arg-type]
    return detector, kube, now


def test_detection_reads_the_crd_once_per_period() -> None:
    detector, kube, now = features(kuberay_rayjob_crd("1.7.0"), kuberay_detect_seconds=300)
    auth = asyncio.run(detector.auth())
    assert (auth.mode, auth.reason) == ("token-secret", Reason.TokenAuth)
    now[0] = 299.0
    kube.answer = kuberay_rayjob_crd("1.5.0")  # a downgrade is seen only when the period is over
    assert asyncio.run(detector.auth()).mode == "token-secret" and kube.reads == 1
    now[0] = 301.0
    auth = asyncio.run(detector.auth())
    assert (auth.mode, auth.reason, kube.reads) == ("off", Reason.RayAuthUnsupported, 2)
    assert "KubeRay before 1.5.1" in auth.message


@pytest.mark.parametrize("setting", ["token-secret", "token", "off"])
def test_an_explicit_setting_wins_and_reads_no_crd(setting: str) -> None:
    detector, kube, _ = features(kuberay_rayjob_crd("1.5.0"), kuberay_auth=setting)
    auth = asyncio.run(detector.auth())
    assert auth.mode == setting and kube.reads == 0
    assert auth.reason == (Reason.RayAuthDisabled if setting == "off" else Reason.TokenAuth)


@pytest.mark.parametrize(
    ("answer", "cached"),
    [
        (ApiError(403, {"message": "customresourcedefinitions is forbidden"}), True),
        (None, True),
        (aiohttp.ClientConnectionError("refused"), False),
        (asyncio.TimeoutError(), False),
    ],
    ids=["forbidden", "missing", "unreachable", "timeout"],
)
def test_an_unreadable_crd_still_asks_for_token_auth_and_says_so(answer: Any, cached: bool) -> None:
    detector, kube, _ = features(answer)
    auth = asyncio.run(detector.auth())
    assert (auth.mode, auth.reason) == ("token-secret", Reason.RayAuthUnverified)
    assert "rayjobs.ray.io" in auth.message and "kuberayAuth" in auth.message
    asyncio.run(detector.auth())
    assert kube.reads == (1 if cached else 2)  # a transient failure is asked again at the next attempt


# -- the RayAuth condition -------------------------------------------------------------------


def launch(status: CPTJobStatus, auth: RayAuth) -> Any:
    job = tiny_job(metadata={"name": "legal", "namespace": "ml", "uid": "u-1", "generation": 1})
    job.status = status
    return reconcile(job, Observed(preflight=PreflightResult(True), now=NOW, ray_auth=auth))


def auth_condition(status: CPTJobStatus) -> tuple[str, str] | None:
    found = next((c for c in status.conditions if c.type == ConditionType.RayAuth.value), None)
    return (found.status, found.reason) if found else None


@pytest.mark.parametrize(
    ("auth", "condition", "warned"),
    [
        (RayAuth("token-secret", Reason.TokenAuth, "token"), ("True", "TokenAuth"), False),
        (RayAuth("token", Reason.TokenAuth, "kuberay's token"), ("True", "TokenAuth"), False),
        (RayAuth("token-secret", Reason.RayAuthUnverified, "unknown"), ("Unknown", "RayAuthUnverified"), True),
        (RayAuth("off", Reason.RayAuthUnsupported, "old KubeRay"), ("False", "RayAuthUnsupported"), True),
        (RayAuth("off", Reason.RayAuthDisabled, "setting"), ("False", "RayAuthDisabled"), False),
    ],
)
def test_an_attempt_says_how_its_ray_cluster_authenticates(
    auth: RayAuth, condition: tuple[str, str], warned: bool
) -> None:
    decision = launch(CPTJobStatus(), auth)
    assert decision.actions == [CreateAttempt(1)]
    assert auth_condition(decision.status) == condition
    warnings = [e for e in decision.events if e.reason == auth.reason.value]
    assert [(e.type, e.message) for e in warnings] == ([("Warning", auth.message)] if warned else [])


def test_the_warning_is_one_event_across_attempts() -> None:
    unsupported = RayAuth("off", Reason.RayAuthUnsupported, "old KubeRay")
    first = launch(CPTJobStatus(), unsupported)
    restart = first.status.model_copy(deep=True)
    restart.phase = Phase.Restarting
    second = launch(restart, unsupported)
    assert second.actions == [CreateAttempt(2)]
    assert auth_condition(second.status) == ("False", "RayAuthUnsupported")
    assert not [e for e in second.events if e.reason == "RayAuthUnsupported"]
    upgraded = launch(
        second.status.model_copy(update={"phase": Phase.Restarting}), RayAuth("token-secret", Reason.TokenAuth, "t")
    )
    assert auth_condition(upgraded.status) == ("True", "TokenAuth")


# -- the trainer: a cluster's workers keep its token auth ---------------------------------------


def test_worker_env_never_carries_rays_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cpt train` hands worker_env() to every worker of the RayJob's cluster: a RAY_AUTH_MODE there would replace
    the token auth KubeRay gave the pods (a worker set to `disabled` cannot reach the GCS)."""
    from cpt_trainer.launch.local_ray import LOCAL_ONLY_ENV, RAY_ENV, worker_env

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "the-pods-token")
    monkeypatch.setenv("CPT_RAY_AUTH_MODE_LOOKALIKE", "kept")
    env = worker_env()
    assert not [k for k in env if k.startswith("RAY_AUTH_")]
    assert env["CPT_RAY_AUTH_MODE_LOOKALIKE"] == "kept" and env["RAY_TRAIN_V2_ENABLED"] == "1"
    assert "RAY_AUTH_MODE" not in RAY_ENV and LOCAL_ONLY_ENV == {"RAY_AUTH_MODE": "disabled"}
