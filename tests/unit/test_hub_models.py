"""Hub models on clusters, offline: the token by Secret reference, HF_HUB_OFFLINE only when nothing comes
from the Hub, the S3 mirror, the `cpt validate` network warning, the preflight's reading of
huggingface_hub's own exception types, and the trainer loading an hf:// model from a local HF cache.

Nothing here contacts the Hub (see the module docstring of cpt_operator.controller.preflight.hub for what a
real Hub answer would add)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.contract.reasons import Reason
from cpt_core.validation.validate import parse_job, validate
from cpt_operator.controller.build.manifests import build_configmap, build_rayjob
from cpt_operator.controller.preflight.hub import check_hub_models, classify, token_problem
from cpt_operator.controller.settings import OperatorSettings
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(trainer_image="t:1")
#: The HTTP library huggingface_hub's errors are built on (httpx, or its successor): real responses, no server.
http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])


def doc(**model: Any) -> dict[str, Any]:
    d = yaml.safe_load((ROOT / "examples" / "cluster-overrides.yaml").read_text())
    d["metadata"]["uid"] = "u"
    d["spec"]["model"] = {"source": "hf://org/tiny", "kind": "base", **model}
    d["spec"]["training"]["learningRate"] = 2.0e-4
    return d


def env_of(rayjob: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = [cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]]
    return [{e["name"]: e for e in t["spec"]["containers"][0]["env"]} for t in templates]


def test_hub_model_gets_the_token_by_reference_and_no_offline_flag() -> None:
    job = parse_job(doc(tokenSecret={"name": "hf-token", "key": "token"}))
    rendered = json.dumps(build_rayjob(job, 1, SETTINGS))
    for env in env_of(build_rayjob(job, 1, SETTINGS)):
        assert env["HF_TOKEN"] == {
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
        }
        assert "HF_HUB_OFFLINE" not in env
        assert env["CPT_CACHE_DIR"]["value"] == "/var/cache/cpt"  # hub downloads land in the model cache
    assert "hf_" not in rendered


def test_no_hub_model_keeps_the_pods_offline() -> None:
    job = parse_job(doc(source="s3://models/tiny/"))
    for env in env_of(build_rayjob(job, 1, SETTINGS)):
        assert env["HF_HUB_OFFLINE"]["value"] == "1" and "HF_TOKEN" not in env


def test_a_mirror_reads_the_hub_id_from_s3_and_stays_offline() -> None:
    job = parse_job(doc(mirror="s3://models/hf/", tokenizer="hf://org/tok"))
    assert job.spec.hub_models() == []
    resolved = job.spec.resolved().model
    assert (resolved.source, resolved.tokenizer) == ("s3://models/hf/org/tiny/", "s3://models/hf/org/tok/")
    configmap = yaml.safe_load(build_configmap(job)["data"]["job.yaml"])
    assert configmap["spec"]["model"]["source"] == "s3://models/hf/org/tiny/"  # what the trainer reads
    for env in env_of(build_rayjob(job, 1, SETTINGS)):
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert not [w for w in validate(doc(mirror="s3://models/hf/")).warnings if "Hugging Face Hub" in w.message]


def test_validate_warns_when_a_job_needs_the_hub() -> None:
    report = validate(doc())
    assert report.ok
    (warning,) = [w for w in report.warnings if w.path == "spec.model.source"]
    assert "hf://org/tiny is downloaded from the Hugging Face Hub" in warning.message
    assert "spec.model.mirror" in warning.message
    unused = validate(doc(source="s3://models/tiny/", mirror="s3://models/hf/"))
    assert [str(w) for w in unused.warnings if w.path == "spec.model.mirror"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({"mirror": "https://mirror/"}, "spec.model.mirror: must be an s3:// prefix"),
        ({"tokenSecret": {"key": "HF_TOKEN"}}, "spec.model.tokenSecret.name: required field is missing"),
        ({"tokenSecret": {"name": "Bad_Name"}}, "spec.model.tokenSecret.name: must be a lowercase DNS label"),
    ],
)
def test_bad_hub_fields_give_one_line(model: dict[str, Any], expected: str) -> None:
    errors = [str(e) for e in validate(doc(**model)).errors]
    assert len(errors) == 1 and errors[0].startswith(expected), errors


def response(status: int) -> Any:
    return http.Response(status, request=http.Request("GET", "https://huggingface.co/api/models/org/tiny"))


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (GatedRepoError("gated", response=response(401)), "is gated on the Hugging Face Hub"),
        (
            RepositoryNotFoundError("nope", response=response(404)),
            "does not exist on the Hugging Face Hub or is private",
        ),
        (RevisionNotFoundError("rev", response=response(404)), "has no main revision"),
        (HfHubHTTPError("denied", response=response(403)), "rejected the token (HTTP 403)"),
    ],
)
def test_preflight_fails_on_definite_hub_answers(exc: Exception, needle: str) -> None:
    result = classify(exc, "spec.model.source", "org/tiny", has_token=True)
    assert result is not None and not result.ok and result.reason == Reason.ModelNotFound
    assert result.message.startswith("spec.model.source hf://org/tiny") and needle in result.message
    assert "spec.model.tokenSecret" in result.message or isinstance(exc, RevisionNotFoundError)


@pytest.mark.parametrize(
    "exc",
    [
        HfHubHTTPError("overloaded", response=response(503)),
        HfHubHTTPError("slow down", response=response(429)),
        http.ConnectError("no route to host"),
        http.ReadTimeout("timed out"),
        OSError("proxy refused"),
    ],
)
def test_an_unreachable_hub_does_not_fail_the_preflight(exc: Exception) -> None:
    assert classify(exc, "spec.model.source", "org/tiny", has_token=False) is None


def test_without_hub_models_the_hub_is_never_asked() -> None:
    job = parse_job(doc(mirror="s3://models/hf/"))

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("asked the Hub")

    assert check_hub_models(job, None, 1.0, model_info=never) is None


def test_token_secret_problems_name_the_field_and_the_fix() -> None:
    job = parse_job(doc(tokenSecret={"name": "hf-token"}))
    missing = token_problem(job, None)
    assert missing is not None and missing.reason == Reason.SecretNotFound
    assert "spec.model.tokenSecret" in missing.message and "create secret generic hf-token" in missing.message
    lacking = token_problem(job, {})
    assert lacking is not None and "(spec.model.tokenSecret) lacks the key HF_TOKEN" in lacking.message
    binary = token_problem(job, {"HF_TOKEN": None})  # the operator's reading of a value that is not UTF-8
    assert binary is not None and "HF_TOKEN is not UTF-8 text" in binary.message
    assert token_problem(job, {"HF_TOKEN": "hf_secret"}) is None


def test_hub_preflight_is_a_setting() -> None:
    assert OperatorSettings.from_env({"CPT_OPERATOR_HUB_PREFLIGHT": "skip"}).hub_preflight == "skip"
    assert OperatorSettings().hub_preflight == "check"


def test_the_trainer_loads_an_hf_model_from_the_local_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the pods find in <CPT_CACHE_DIR>/huggingface after their download (or on a PVC pre-populated with
    `hf download --cache-dir`): the Hugging Face cache layout."""
    from cpt_trainer.model.source import ModelSourceError, resolve

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "huggingface" / "models--org--tiny"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for f in (ROOT / "examples" / "models" / "tiny-llama").iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path))  # a pod: /var/cache/cpt, the model cache volume
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve("hf://org/tiny")
    assert (resolved.directory / "config.json").exists() and resolved.identity == "hf://org/tiny"
    with pytest.raises(
        ModelSourceError, match=r"spec.model.source: cannot load 'org/absent' from the Hugging Face cache"
    ):
        resolve("hf://org/absent")
