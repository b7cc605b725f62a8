"""The chart's imagePullSecrets reach the operator as a setting, and from it every Ray pod."""

from __future__ import annotations

from typing import Any

from cpt_core.validation.validate import parse_job
from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.settings import OperatorSettings

from devkit.chart import render


def operator_env(docs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, Any]]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    return {e["name"]: e.get("value", "") for e in pod["containers"][0]["env"]}, pod


def test_chart_pull_secrets_reach_every_ray_pod() -> None:
    docs = render(set_values=("imagePullSecrets[0].name=ghcr-pull", "imagePullSecrets[1].name=mirror"))
    env, pod = operator_env(docs)
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}, {"name": "mirror"}]  # the operator's own pod
    assert env["CPT_OPERATOR_IMAGE_PULL_SECRETS"] == "ghcr-pull,mirror"
    settings = OperatorSettings.from_env({k: v for k, v in env.items() if k.startswith("CPT_OPERATOR_")})
    job = parse_job(
        {
            "apiVersion": "cpt.dev/v1alpha1",
            "kind": "CPTJob",
            "metadata": {"name": "j", "namespace": "ml", "uid": "u"},
            "spec": {
                "model": {"source": "s3://models/m/", "kind": "base"},
                "data": {
                    "sequenceLength": 512,
                    "sources": [{"name": "d", "role": "domain", "uris": ["s3://data/d/"], "weight": 1}],
                },
                "training": {"steps": 10, "globalBatchTokens": 4096},
                "checkpoint": {"uri": "s3://runs/j/"},
            },
        }
    )
    cluster = build_rayjob(job, 1, settings)["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert template["spec"]["imagePullSecrets"] == [{"name": "ghcr-pull"}, {"name": "mirror"}]


def test_no_pull_secrets_no_setting() -> None:
    env, _ = operator_env(render())
    assert "CPT_OPERATOR_IMAGE_PULL_SECRETS" not in env
