"""spec.cluster.podOverrides: one test per field family, every rendered RayJob checked against KubeRay
v1.7.0's CRD; operator-owned fields rejected with one line; imagePullSecrets on every Ray pod."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cpt_core.validation.validate import parse_job, validate
from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.settings import OperatorSettings

from devkit.cluster import rayjob_schema

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(trainer_image="ghcr.io/cpt-operator/cpt-trainer:test", ray_version="2.60.0")


def doc(*overrides: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    d = yaml.safe_load((ROOT / "examples" / "gpu-8b-instruct.yaml").read_text())
    d["metadata"].update({"namespace": "ml-team", "uid": "0f0e0d0c-0000-4000-8000-000000000001"})
    d["spec"]["cluster"].update(cluster)
    d["spec"]["cluster"]["podOverrides"] = list(overrides)
    return d


def render(*overrides: dict[str, Any], settings: OperatorSettings = SETTINGS, **cluster: Any) -> dict[str, Any]:
    """The RayJob for these overrides, after checking it against KubeRay's v1.7.0 CRD schema."""
    rayjob = build_rayjob(parse_job(doc(*overrides, **cluster)), 1, settings)
    errors = sorted(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob), key=str)
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    return rayjob


def pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return {"head": cluster["headGroupSpec"]["template"], "workers": cluster["workerGroupSpecs"][0]["template"]}


def one_error(*overrides: dict[str, Any], **cluster: Any) -> str:
    report = validate(doc(*overrides, **cluster))
    assert len(report.errors) == 1, [str(e) for e in report.errors]
    line = str(report.errors[0])
    assert "\n" not in line
    return line


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_env_reaches_the_targeted_pods_and_replaces_by_name() -> None:
    rayjob = render(
        {
            "env": [
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "TOKENIZERS_PARALLELISM", "value": "true"},
            ]
        },
        {
            "targets": ["workers"],
            "env": [
                {"name": "NCCL_DEBUG", "value": "INFO"},
                {"name": "NCCL_SOCKET_IFNAME", "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "ifname"}}},
            ],
        },
    )
    head, workers = env(pods(rayjob)["head"]), env(pods(rayjob)["workers"])
    assert head["HTTPS_PROXY"] == workers["HTTPS_PROXY"] == "http://proxy:3128"
    assert head["TOKENIZERS_PARALLELISM"] == "true"  # a user value wins where the operator need not own it
    assert "NCCL_DEBUG" not in head and workers["NCCL_DEBUG"] == "INFO"
    assert workers["NCCL_SOCKET_IFNAME"] == {"configMapKeyRef": {"name": "nccl", "key": "ifname"}}
    names = [e["name"] for e in pods(rayjob)["workers"]["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))
    assert workers["CPT_CACHE_DIR"] == "/var/cache/cpt"


def test_env_from_is_appended() -> None:
    rayjob = render(
        {"envFrom": [{"configMapRef": {"name": "proxies"}}, {"secretRef": {"name": "extra", "optional": True}}]}
    )
    for pod in pods(rayjob).values():
        assert pod["spec"]["containers"][0]["envFrom"] == [
            {"configMapRef": {"name": "proxies"}},
            {"secretRef": {"name": "extra", "optional": True}},
        ]


def test_labels_and_annotations_merge_under_the_operators_labels() -> None:
    rayjob = render({"labels": {"team": "legal"}, "annotations": {"sidecar.istio.io/inject": "false"}})
    for pod in pods(rayjob).values():
        assert pod["metadata"]["labels"]["team"] == "legal"
        assert pod["metadata"]["labels"]["cpt.dev/job"] == "legal-cpt-8b"
        assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}


def test_volumes_mounts_pvc_cache_and_a_bigger_shm() -> None:
    rayjob = render(
        {
            "volumes": [
                {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
                {"name": "model-cache", "persistentVolumeClaim": {"claimName": "cpt-cache"}},
            ],
            "volumeMounts": [
                {"name": "datasets", "mountPath": "/data", "readOnly": True},
                {"name": "model-cache", "mountPath": "/var/cache/cpt"},
            ],
        },
        {
            "targets": ["workers"],
            "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Gi"}}],
            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        },
    )
    head, workers = pods(rayjob)["head"]["spec"], pods(rayjob)["workers"]["spec"]
    worker_mounts = {m["mountPath"]: m["name"] for m in workers["containers"][0]["volumeMounts"]}
    assert worker_mounts == {"/dev/shm": "shm", "/var/cache/cpt": "model-cache", "/data": "datasets"}
    assert {v["name"] for v in workers["volumes"]} == {"shm", "model-cache", "datasets"}  # replaced ones dropped
    assert next(v for v in workers["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"] == "256Gi"
    head_mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    assert head_mounts["/dev/shm"] == "dshm" and head_mounts["/etc/cpt"] == "job-spec"
    assert {v["name"] for v in head["volumes"]} == {"dshm", "job-spec", "model-cache", "datasets"}


def test_scheduling_affinity_node_selector_tolerations_topology_spread() -> None:
    affinity = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"cpt.dev/job": "x"}}}
            ]
        }
    }
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    toleration = {"key": "rdma", "operator": "Exists", "effect": "NoSchedule"}
    rayjob = render(
        {
            "targets": ["workers"],
            "affinity": affinity,
            "nodeSelector": {"pool": "h100"},
            "tolerations": [toleration],
            "topologySpreadConstraints": [spread],
        }
    )
    workers = pods(rayjob)["workers"]["spec"]
    assert workers["affinity"] == affinity
    assert workers["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "h100"}
    assert workers["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        toleration,
    ]
    assert workers["topologySpreadConstraints"] == [spread]
    assert "affinity" not in pods(rayjob)["head"]["spec"]


def test_pod_and_container_security_context() -> None:
    pod_context = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container_context = {"capabilities": {"add": ["IPC_LOCK"]}, "allowPrivilegeEscalation": False}
    rayjob = render({"securityContext": pod_context, "containerSecurityContext": container_context})
    for pod in pods(rayjob).values():
        assert pod["spec"]["securityContext"] == pod_context  # merged over the operator's (the same two keys)
        # Key by key over the operator's restricted context: the added capability keeps `drop: [ALL]`.
        assert pod["spec"]["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
        }


def test_extra_resources_are_requested_and_limited_beside_the_gpus() -> None:
    rayjob = render({"targets": ["workers"], "resources": {"rdma/hca": 1, "vpc.amazonaws.com/efa": "4"}})
    resources = pods(rayjob)["workers"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["rdma/hca"] == resources["requests"]["rdma/hca"] == "1"
    assert resources["limits"]["vpc.amazonaws.com/efa"] == "4"
    assert resources["limits"]["nvidia.com/gpu"] == 8 and resources["limits"]["cpu"] == "88"
    assert "rdma/hca" not in pods(rayjob)["head"]["spec"]["containers"][0]["resources"]["limits"]


def test_scheduler_service_account_priority_class_later_wins() -> None:
    rayjob = render(
        {"schedulerName": "volcano", "serviceAccountName": "first", "priorityClassName": "low"},
        {"targets": ["workers"], "serviceAccountName": "trainer-irsa", "priorityClassName": "high"},
        serviceAccountName="from-cluster",
    )
    head, workers = pods(rayjob)["head"]["spec"], pods(rayjob)["workers"]["spec"]
    assert head["schedulerName"] == workers["schedulerName"] == "volcano"
    assert (head["serviceAccountName"], workers["serviceAccountName"]) == ("first", "trainer-irsa")
    assert (head["priorityClassName"], workers["priorityClassName"]) == ("low", "high")


def test_image_pull_secrets_from_the_operator_and_the_spec_reach_every_ray_pod() -> None:
    settings = SETTINGS.model_copy(update={"image_pull_secrets": ["ghcr-pull", "mirror"]})
    rayjob = render({"imagePullSecrets": [{"name": "team-registry"}, {"name": "mirror"}]}, settings=settings)
    for pod in pods(rayjob).values():
        assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}, {"name": "mirror"}, {"name": "team-registry"}]
    plain = render(settings=settings)
    for pod in pods(plain).values():
        assert pod["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}, {"name": "mirror"}]
    assert all("imagePullSecrets" not in pod["spec"] for pod in pods(render()).values())


def test_pull_secrets_setting_reads_the_environment() -> None:
    settings = OperatorSettings.from_env({"CPT_OPERATOR_IMAGE_PULL_SECRETS": "ghcr-pull, mirror"})
    assert settings.image_pull_secrets == ["ghcr-pull", "mirror"]


def test_the_example_renders_and_validates() -> None:
    example = yaml.safe_load((ROOT / "examples" / "cluster-overrides.yaml").read_text())
    example["metadata"]["uid"] = "u"
    rayjob = build_rayjob(parse_job(example), 1, SETTINGS)
    assert sorted(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob), key=str) == []
    workers = pods(rayjob)["workers"]["spec"]
    assert workers["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"] == "4"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"env": [{"name": "CPT_ATTEMPT", "value": "9"}]}, "spec.cluster.podOverrides[0].env[0].name: CPT_ATTEMPT"),
        ({"env": [{"name": "HF_TOKEN", "value": "x"}]}, "spec.cluster.podOverrides[0].env[0].name: HF_TOKEN is set by"),
        (
            {"env": [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
            "env[0].name",
        ),
        ({"env": [{"value": "x"}]}, "spec.cluster.podOverrides[0].env[0]: 'name' is required"),
        ({"labels": {"cpt.dev/job": "x"}}, "spec.cluster.podOverrides[0].labels.cpt.dev/job: is set by the operator"),
        ({"labels": {"app.kubernetes.io/name": "x"}}, "labels.app.kubernetes.io/name"),
        ({"volumes": [{"name": "cache", "emptyDir": {}}]}, "spec.cluster.podOverrides[0].volumes[0].name: 'cache'"),
        ({"volumes": [{"name": "x", "emptyDir": {"medum": "Memory"}}]}, "volumes[0].emptyDir: unknown field 'medum'"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/etc/cpt"}]}, "volumeMounts[0].mountPath: /etc/cpt holds"),
        ({"volumeMounts": [{"name": "nowhere", "mountPath": "/x"}]}, "volumeMounts[0].name: no volume 'nowhere'"),
        (
            {"resources": {"nvidia.com/gpu": 4}},
            "resources.nvidia.com/gpu: set by the operator; use spec.cluster.gpusPerWorker",
        ),
        ({"resources": {"cpu": "4"}}, "resources.cpu: set by the operator; use spec.cluster.workerResources"),
        ({"resources": {"rdma/hca": "lots"}}, "spec.cluster.podOverrides[0].resources.rdma/hca"),
        ({"image": "evil:latest"}, "spec.cluster.podOverrides[0].image"),
        ({"command": ["sh"]}, "spec.cluster.podOverrides[0].command"),
        ({"targets": ["driver"]}, "spec.cluster.podOverrides[0].targets[0]"),
        ({"targets": []}, "spec.cluster.podOverrides[0].targets: must have at least 1 item"),
        ({"targets": ["workers", "workers"]}, "spec.cluster.podOverrides[0].targets: lists a pod kind twice"),
        ({"affinity": {"nodeAffinity": {"required": {}}}}, "spec.cluster.podOverrides[0].affinity.nodeAffinity"),
        ({"tolerations": [{"tolerationSeconds": "long"}]}, "spec.cluster.podOverrides[0].tolerations[0]"),
    ],
)
def test_an_invalid_override_gives_one_line_naming_the_field(override: dict[str, Any], expected: str) -> None:
    assert expected in one_error(override)


def test_a_mount_on_the_wrong_pod_names_the_target() -> None:
    line = one_error(
        {"targets": ["workers"], "volumes": [{"name": "d", "emptyDir": {}}]},
        {"targets": ["head"], "volumeMounts": [{"name": "d", "mountPath": "/d"}]},
    )
    assert line.startswith("spec.cluster.podOverrides[1].volumeMounts[0].name: no volume 'd' in the head pod")


def test_vendored_kubernetes_shapes_match_kuberay_v1_7_0() -> None:
    from hack.vendor_pod_schema import TARGET, render

    assert TARGET.read_text() == render(), "core/cpt_core/api/v1alpha1/k8s_pod_schema.json is stale: run `make crd`"


def test_crd_embeds_the_kubernetes_shapes_and_the_api_server_schema_accepts_overrides() -> None:
    from cpt_core.schema.crd import openapi_schema

    schema = openapi_schema()
    override = schema["properties"]["spec"]["properties"]["cluster"]["properties"]["podOverrides"]["items"]
    assert (
        override["properties"]["volumes"]["items"]["properties"]["emptyDir"]["properties"]["medium"]["type"] == "string"
    )
    assert "x-kubernetes-preserve-unknown-fields" not in json.dumps(override)
    example = yaml.safe_load((ROOT / "examples" / "cluster-overrides.yaml").read_text())
    assert sorted(jsonschema.Draft4Validator(schema).iter_errors(copy.deepcopy(example)), key=str) == []


def test_conditions_are_a_list_map_keyed_by_type() -> None:
    from cpt_core.schema.crd import openapi_schema

    conditions = openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
