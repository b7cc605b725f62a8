"""The CPTJob API: models, validation messages, recommendations, defaults."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cpt_core.api import v1alpha1 as api
from cpt_core.validation.validate import InvalidJob, load_job, parse_job, validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def doc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples" / "local-tiny.yaml").read_text())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


@dataclass
class Bad:
    name: str
    mutate: Callable[[dict[str, Any]], None]
    path: str
    fragment: str


def _rename(parent: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        node = d
        for part in parent.split("."):
            node = node[part]
        node[new] = node.pop(old)

    return mutate


def _zero_weights(d: dict[str, Any]) -> None:
    for source in d["spec"]["data"]["sources"]:
        source["weight"] = 0


BAD = [
    Bad("zero weights", _zero_weights, "spec.data.sources", "at least one source needs weight > 0"),
    Bad(
        "negative weight",
        _set("spec.data.sources.1.weight", -1),
        "spec.data.sources[1].weight",
        "must be >= 0 (got -1)",
    ),
    Bad("negative lr", _set("spec.training.learningRate", -0.1), "spec.training.learningRate", "must be > 0"),
    Bad("zero stage 4", _set("spec.deepspeed.zeroStage", 4), "spec.deepspeed.zeroStage", "(got 4)"),
    Bad("no checkpoint", _set("spec.checkpoint", _DELETE), "spec.checkpoint", "required field is missing"),
    Bad("no checkpoint uri", _set("spec.checkpoint.uri", _DELETE), "spec.checkpoint.uri", "required field is missing"),
    Bad("bad model kind", _set("spec.model.kind", "chat"), "spec.model.kind", "'instruct' or 'base' (got 'chat')"),
    Bad("bad role", _set("spec.data.sources.0.role", "main"), "spec.data.sources[0].role", "(got 'main')"),
    Bad("bad schedule", _set("spec.training.schedule.type", "linear"), "spec.training.schedule.type", "'cosine'"),
    Bad(
        "bad action", _set("spec.evaluation.forgetting.action", "panic"), "spec.evaluation.forgetting.action", "'warn'"
    ),
    Bad("empty uris", _set("spec.data.sources.0.uris", []), "spec.data.sources[0].uris", "at least 1 item"),
    Bad("missing uris", _set("spec.data.sources.0.uris", _DELETE), "spec.data.sources[0].uris", "required"),
    Bad("misspelt training", _rename("spec", "training", "trainng"), "spec.trainng", "did you mean 'training'"),
    Bad("misspelt leaf", _rename("spec.training", "steps", "setps"), "spec.training.setps", "did you mean 'steps'"),
    Bad("steps and tokens", _set("spec.training.tokens", 1000), "spec.training", "exactly one of steps and tokens"),
    Bad(
        "batch geometry",
        _set("spec.training.globalBatchTokens", 1000),
        "spec.training.globalBatchTokens",
        "multiple of data.sequenceLength x training.microBatchSize = 512 (got 1000; e.g. 512 or 1024)",
    ),
    Bad("duplicate source", _set("spec.data.sources.1.name", "veloria"), "spec.data.sources[1].name", "duplicate"),
    Bad("source name", _set("spec.data.sources.1.name", "Web_Data"), "spec.data.sources[1].name", "DNS label"),
    Bad("steps not int", _set("spec.training.steps", "ten"), "spec.training.steps", "must be an integer (got 'ten')"),
    Bad("bad scheme", _set("spec.model.source", "ftp://host/m"), "spec.model.source", "unsupported URI scheme"),
    Bad("bad bucket", _set("spec.checkpoint.uri", "s3://B/x"), "spec.checkpoint.uri", "not a valid S3 bucket name"),
    Bad("bad endpoint", _set("spec.storage", {"endpoint": "minio:9000"}), "spec.storage.endpoint", "http://"),
    Bad("long name", _set("metadata.name", "x" * 70), "metadata.name", "at most 63 characters"),
    Bad(
        "bad quantity",
        _set("spec.cluster.workerResources", {"cpu": "lots"}),
        "spec.cluster.workerResources.cpu",
        "Kubernetes quantity",
    ),
    Bad("seq too short", _set("spec.data.sequenceLength", 4), "spec.data.sequenceLength", "must be >= 16 (got 4)"),
    Bad("wrong kind", _set("kind", "RayJob"), "", "not a CPTJob"),
]


@pytest.mark.parametrize("case", BAD, ids=[b.name for b in BAD])
def test_invalid_manifest_names_field_and_fix(doc: dict[str, Any], case: Bad) -> None:
    case.mutate(doc)
    report = validate(doc)
    assert not report.ok
    lines = [str(e) for e in report.errors]
    matching = [e for e in report.errors if e.path == case.path and case.fragment in e.message]
    assert matching, f"expected '{case.path}: ...{case.fragment}...' in {lines}"
    # One problem, one line; no problem is reported twice.
    assert all("\n" not in line for line in lines)
    assert len(lines) == len(set(lines))


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "storage",
    [
        {"accessKeyId": "AKIAIOSFODNN7EXAMPLE", "secretAccessKey": SECRET},
        {"credentials": {"secret": SECRET}},
        {"token": SECRET},
    ],
)
def test_inline_credentials_are_rejected_without_echoing_them(doc: dict[str, Any], storage: dict[str, Any]) -> None:
    doc["spec"]["storage"] = storage
    report = validate(doc)
    assert not report.ok
    text = "\n".join(str(e) for e in report.errors)
    assert "credentialsSecret" in text and "kubectl create secret" in text
    assert SECRET not in text and "AKIAIOSFODNN7EXAMPLE" not in text


def test_access_key_in_a_uri_is_rejected(doc: dict[str, Any]) -> None:
    doc["spec"]["data"]["sources"][0]["uris"] = ["s3://AKIAIOSFODNN7EXAMPLE:secret@bucket/data/"]
    report = validate(doc)
    assert not report.ok
    assert "AKIAIOSFODNN7EXAMPLE" not in "\n".join(map(str, report.errors))


PASSWORD = "hunter2-not-for-your-eyes"
KI_EXAMPLE = "knowledge-instruct-smollm2.yaml"  # has a synthesised source (sources[1])

# Every URI field of the API, with a URI that carries `user:password@` -- and where in the example it goes.
URI_FIELDS = [
    ("local-tiny.yaml", "spec.model.source", f"hf://me:{PASSWORD}@HuggingFaceTB/SmolLM2-135M"),
    ("local-tiny.yaml", "spec.model.tokenizer", f"s3://key:{PASSWORD}@models/tok/"),
    ("local-tiny.yaml", "spec.model.mirror", f"s3://key:{PASSWORD}@mirror/hf/"),
    ("local-tiny.yaml", "spec.data.sources.0.uris", [f"s3://key:{PASSWORD}@corpora/legal/"]),
    ("local-tiny.yaml", "spec.data.cacheUri", f"file://me:{PASSWORD}@host/cache/"),
    ("local-tiny.yaml", "spec.checkpoint.uri", f"s3://key:{PASSWORD}@cpt-runs/run/"),
    ("local-tiny.yaml", "spec.evaluation.probes", f"s3://key:{PASSWORD}@cpt-runs/probes.jsonl"),
    ("local-tiny.yaml", "spec.evaluation.instructionFollowing", {"prompts": f"s3://k:{PASSWORD}@b-1/p.jsonl"}),
    ("local-tiny.yaml", "spec.storage", {"endpoint": f"https://key:{PASSWORD}@minio.example.com"}),
    ("local-tiny.yaml", "spec.tracking", {"mlflow": {"trackingUri": f"https://me:{PASSWORD}@mlflow.example.com"}}),
    (KI_EXAMPLE, "spec.data.sources.1.synthesize.output", f"s3://key:{PASSWORD}@cpt-runs/qa/"),
    (KI_EXAMPLE, "spec.data.sources.1.synthesize.generator", {"kind": "model", "model": f"hf://{PASSWORD}@org/m"}),
]


def _field_of(path: str, value: Any) -> str:
    """The wire path of the URI that `value` (set at `path`) puts in the spec."""
    field = re.sub(r"\.(\d+)", r"[\1]", path)
    if isinstance(value, list):
        return field + "[0]"
    while isinstance(value, dict):
        key, value = next((k, v) for k, v in value.items() if k != "kind")
        field += f".{key}"
    return field


@pytest.mark.parametrize(("example", "path", "value"), URI_FIELDS, ids=[f[1] for f in URI_FIELDS])
def test_credentials_in_any_uri_are_refused_without_showing_them(example: str, path: str, value: Any) -> None:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    _set(path, value)(doc)
    report = validate(doc)
    assert not report.ok
    field = _field_of(path, value)
    refusals = [e for e in report.errors if e.path == field]
    assert refusals, [str(e) for e in report.errors]
    assert "credentials must not be embedded in" in refusals[0].message
    assert "put them in a Kubernetes Secret and set spec." in refusals[0].message
    assert PASSWORD not in "\n".join(map(str, report.errors))
    # The operator's view of an object the API server admitted: the models alone say the same.
    server = validate(doc, server_checked=True)
    assert server.job is None and PASSWORD not in "\n".join(map(str, server.errors))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.tracking", {"mlflow": {"trackingUri": f"ftp://me:{PASSWORD}@mlflow.example.com"}}),
        ("spec.model.mirror", f"https://me:{PASSWORD}@mirror.example.com/hf/"),
        ("spec.model.source", f"gs://key:{PASSWORD}@bucket/model/"),
        ("spec.checkpoint.uri", f"s3://key:{PASSWORD}@cpt-runs/" + "x" * 1100),
        ("spec.storage", {"endpoint": f"ftp://key:{PASSWORD}@minio:9000"}),
        ("spec.data.sources.0.uris", f"s3://key:{PASSWORD}@corpora/legal/"),  # not even a list
    ],
    ids=lambda v: str(v)[:24],
)
def test_a_uri_refused_for_another_reason_does_not_show_its_credentials(
    doc: dict[str, Any], path: str, value: Any
) -> None:
    _set(path, value)(doc)
    for report in (validate(doc), validate(doc, server_checked=True)):
        assert not report.ok
        assert PASSWORD not in "\n".join(map(str, report.errors))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.data.sources.0.uris", ["s3://corpora/users/me@example.com/"]),  # an '@' in a key, not a user
        ("spec.checkpoint.uri", "runs/me@laptop/"),  # a plain local path
        ("spec.tracking", {"mlflow": {"trackingUri": "https://mlflow.example.com/?user=a@b"}}),
    ],
)
def test_an_at_sign_that_is_not_a_user_is_accepted(doc: dict[str, Any], path: str, value: Any) -> None:
    _set(path, value)(doc)
    report = validate(doc)
    assert report.ok, [str(e) for e in report.errors]


def test_valid_example_parses_with_defaults(doc: dict[str, Any]) -> None:
    job = parse_job(doc)
    assert job.spec.model.kind == "base"
    assert job.spec.training.steps == 30
    assert job.spec.deepspeed.offload_optimizer == "none"
    assert job.spec.run_policy.max_restarts == 3
    assert job.spec.cache_uri == job.spec.checkpoint.uri.rstrip("/") + "/_cache/"
    # Round trip on the wire is camelCase and stable.
    wire = job.spec.wire()
    assert "sequenceLength" in wire["data"] and "sequence_length" not in wire["data"]
    assert api.CPTJobSpec.model_validate(wire) == job.spec


@pytest.mark.parametrize(("kind", "lr"), [("instruct", 5e-5), ("base", 2e-4)])
def test_learning_rate_default_follows_model_kind(doc: dict[str, Any], kind: str, lr: float) -> None:
    doc["spec"]["model"]["kind"] = kind
    del doc["spec"]["training"]["learningRate"]
    job = parse_job(doc)
    assert job.spec.learning_rate == lr
    assert job.spec.resolved().training.learning_rate == lr


def test_tokens_convert_to_steps(doc: dict[str, Any]) -> None:
    del doc["spec"]["training"]["steps"]
    doc["spec"]["training"]["tokens"] = 10_000
    assert parse_job(doc).spec.total_steps == 10  # ceil(10000 / 1024)


def _warnings(doc: dict[str, Any]) -> list[str]:
    report = validate(doc)
    assert report.ok, report.errors
    return [str(w) for w in report.warnings]


def test_recommended_practice_deviations_are_warnings_not_errors(doc: dict[str, Any]) -> None:
    doc["spec"]["model"]["kind"] = "instruct"
    doc["spec"]["training"]["learningRate"] = 3e-4
    doc["spec"]["data"]["sources"] = [doc["spec"]["data"]["sources"][0]]
    warnings = _warnings(doc)
    joined = "\n".join(warnings)
    assert "learningRate: 0.0003 is above the recommended range 2e-05..0.0001 for instruct models" in joined
    assert "no source with role: replay" in joined and "catastrophic" in joined
    assert "instruct model without instruction data" in joined and "instruction following" in joined


def test_replay_share_outside_range_warns(doc: dict[str, Any]) -> None:
    doc["spec"]["data"]["sources"][1]["weight"] = 40  # 40 / 130 = 30.8 %
    assert any("replay is 30.8 % of the mixture; recommended 5-10 %" in w for w in _warnings(doc))
    doc["spec"]["data"]["sources"][1]["weight"] = 1  # 1 / 91 = 1.1 %
    assert any("too little to prevent forgetting" in w for w in _warnings(doc))


def test_good_instruct_mix_has_no_warnings(repo_root: Path) -> None:
    report = validate(yaml.safe_load((repo_root / "examples" / "local-smollm2.yaml").read_text()))
    # The demo is deliberately short (a few CPU minutes): the only advice is about its length.
    assert report.ok and [str(w) for w in report.warnings] == [
        "spec.training.steps: 16 steps is short for an instruct model (recommended 100-500); expect little domain gain"
    ]


def test_load_job_reports_every_problem_with_the_file(tmp_path: Path, doc: dict[str, Any]) -> None:
    doc["spec"]["training"]["steps"] = 0
    doc["spec"]["model"]["kind"] = "x"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidJob) as info:
        load_job(path)
    text = str(info.value)
    assert f"{path}: spec.training.steps: must be > 0 (got 0)" in text
    assert f"{path}: spec.model.kind:" in text


def test_spec_trainer_part_imports_without_torch_or_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import cpt_core.validation.validate, cpt_core.storage, cpt_core.cli;"
        "bad = [m for m in ('torch', 'ray', 'kopf', 'transformers', 'deepspeed') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_field_has_a_description() -> None:
    """Every field of every model in every section module (the CRD and docs/api.md show these)."""
    import importlib
    import pkgutil

    from cpt_core.api.v1alpha1.base import _Model, _Wire

    missing = []
    models = set()
    for info in pkgutil.iter_modules(api.__path__):
        module = importlib.import_module(f"{api.__name__}.{info.name}")
        models |= {
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, (_Model, _Wire)) and obj not in (_Model, _Wire)
        }
    assert len(models) > 40, sorted(m.__name__ for m in models)
    for model in models:
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
    assert sorted(missing) == []


def test_copy_is_deep(doc: dict[str, Any]) -> None:
    job = parse_job(copy.deepcopy(doc))
    resolved = job.spec.resolved()
    assert job.spec.training.learning_rate == doc["spec"]["training"]["learningRate"]
    assert resolved.data is not job.spec.data
