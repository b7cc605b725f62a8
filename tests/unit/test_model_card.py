"""The exported model's card, written with huggingface_hub's ModelCard and read back with ModelCard.load
(the Hub's own parser), and the wiring of `export.push` up to the point where the Hub would be called.

What is not tested: an actual upload. Tests never reach the Hub (and a fake HF_ENDPOINT would be a
mock of it); `HfApi.create_repo` / `upload_folder` with their retries run only against the real Hub.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cpt_core.validation.validate import parse_job
from cpt_core.validation.validate import validate as check
from cpt_operator.controller.build.manifests import build_rayjob
from cpt_operator.controller.settings import OperatorSettings
from cpt_trainer.export.card import model_card
from cpt_trainer.export.push import PushError, push_folder
from huggingface_hub import ModelCard

from devkit.cluster import rayjob_schema

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = {
    "steps": 40,
    "tokens": 163840,
    "domainLossBefore": 3.2,
    "domainLossAfter": 2.5,
    "generalLossBefore": 2.9,
    "generalLossAfter": 3.0,
    "probeF1Before": 0.1,
    "probeF1After": 0.45,
    "instructionFollowingBefore": 0.8,
    "instructionFollowingAfter": 0.75,
    "generalLossIncrease": 0.0345,
}


def job_doc(example: str = "progressive-tiny.yaml", **export: Any) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    doc["spec"].setdefault("checkpoint", {}).setdefault("export", {}).update(export)
    return doc


def written_card(tmp_path: Path, doc: dict[str, Any], base_dir: Path | None = None) -> ModelCard:
    job = parse_job(doc)
    model_card(job.spec, job.metadata.name, SUMMARY, base_dir).save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def test_card_metadata_and_recipe_read_back(tmp_path: Path) -> None:
    doc = job_doc(license="apache-2.0")
    doc["spec"]["model"]["source"] = "hf://HuggingFaceTB/SmolLM2-135M"
    card = written_card(tmp_path, doc)
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-generation"
    assert data["library_name"] == "transformers"
    assert "continued-pretraining" in data["tags"]
    uris = [uri for source in doc["spec"]["data"]["sources"] for uri in source["uris"]]
    assert data["datasets"] == list(dict.fromkeys(uris))
    # The recipe: every stage with its steps, every source with its share in each stage.
    job = parse_job(doc)
    from cpt_trainer.plan.stages import plan

    stages = plan(job.spec)
    assert len(stages) > 1
    for stage in stages:
        assert f"{stage.name} ({stage.steps} steps)" in card.text
    for source in job.spec.data.sources:
        assert f"| {source.name} | {source.role.value} |" in card.text
    assert f"{job.spec.training.global_batch_tokens:,} tokens per step" in card.text
    assert "163,840 tokens in all" in card.text


def test_a_mirrored_hub_model_is_still_the_base_model(tmp_path: Path) -> None:
    doc = job_doc()
    doc["spec"]["model"].update(source="hf://HuggingFaceTB/SmolLM2-135M", mirror="s3://models-mirror/hf/")
    job = parse_job(doc)
    resolved = job.spec.resolved()  # what the trainer exports with: the source reads from the mirror
    assert resolved.model.source == "s3://models-mirror/hf/HuggingFaceTB/SmolLM2-135M/"
    model_card(resolved, job.metadata.name, SUMMARY).save(tmp_path / "README.md")
    assert ModelCard.load(tmp_path / "README.md").data.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M"


PRIVATE_DOC = {
    "model": {"source": "s3://acme-private-models/base/llama-8b/", "kind": "base"},
    "sources": ["s3://acme-legal-corpus/contracts/", "/mnt/acme/general/"],  # progressive-tiny has two sources
}


def private_job_doc(**push: Any) -> dict[str, Any]:
    """A job whose starting model and data live in private places, pushed to the Hub with `push`."""
    doc = job_doc(push={"repo": "acme/legal-8b", "tokenSecret": "hub-token", **push})
    doc["spec"]["model"]["source"] = PRIVATE_DOC["model"]["source"]
    sources = doc["spec"]["data"]["sources"]
    for source, uri in zip(sources, PRIVATE_DOC["sources"], strict=True):
        source["uris"] = [uri]
    return doc


def named_locations(text: str) -> list[str]:
    words = ("acme-private-models", "acme-legal-corpus", "/mnt/acme", "s3://", "file://")
    return [word for word in words if word in text]


def test_the_card_pushed_to_the_hub_names_no_private_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`final/README.md` names the buckets and paths the model and data came from; the card uploaded to the Hub
    (what `_push` puts in the folder it uploads) names none of them, only that they are private."""
    from cpt_trainer.export.huggingface import _push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("CPT_HUB_PUSH_TOKEN", raising=False)  # the upload fails at once, offline: no token
    job = parse_job(private_job_doc())
    final = written_card(tmp_path, private_job_doc())
    assert named_locations(final.text)[:3] == ["acme-private-models", "acme-legal-corpus", "/mnt/acme"]
    assert final.data.to_dict()["datasets"]

    out = tmp_path / "export"
    out.mkdir()
    model_card(job.spec, job.metadata.name, SUMMARY).save(out / "README.md")  # as export_model writes it
    outcome = _push(out, job.spec, job.metadata.name, SUMMARY, None)
    assert "no Hub token" in outcome["error"]
    pushed = ModelCard.load(out / "README.md")
    assert named_locations(pushed.text) == [], pushed.text
    assert "datasets" not in pushed.data.to_dict()
    assert "Continued pre-training of a model in a private location" in pushed.text
    assert "| veloria | domain | 70.0 % | 80.0 % | 90.0 % | (private) |" in pushed.text
    # The rest of the card is the same: recipe and evaluation.
    assert "163,840 tokens in all" in pushed.text and "| 3.2000 | 2.5000 | -0.7000 |" in pushed.text


def test_a_hub_base_model_stays_named_in_the_pushed_card(tmp_path: Path) -> None:
    doc = private_job_doc()
    doc["spec"]["model"].update(source="hf://HuggingFaceTB/SmolLM2-135M", mirror="s3://acme-private-models/hf/")
    job = parse_job(doc)
    resolved = job.spec.resolved()  # the trainer's spec: the source reads from the private mirror
    model_card(resolved, job.metadata.name, SUMMARY, locations=False).save(tmp_path / "README.md")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert "Continued pre-training of `hf://HuggingFaceTB/SmolLM2-135M`" in card.text
    assert named_locations(card.text) == []


def test_include_locations_puts_them_in_the_pushed_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cpt_trainer.export.huggingface import _push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("CPT_HUB_PUSH_TOKEN", raising=False)
    job = parse_job(private_job_doc(includeLocations=True))
    out = tmp_path / "export"
    out.mkdir()
    model_card(job.spec, job.metadata.name, SUMMARY).save(out / "README.md")
    _push(out, job.spec, job.metadata.name, SUMMARY, None)
    assert "acme-legal-corpus" in ModelCard.load(out / "README.md").text
    assert parse_job(private_job_doc()).spec.checkpoint.export.push.include_locations is False  # type: ignore[union-attr]


def test_card_evaluation_table(tmp_path: Path) -> None:
    card = written_card(tmp_path, job_doc())
    rows = {line.split("|")[1].strip(): line for line in card.text.splitlines() if line.startswith("| ")}
    assert rows["domain holdout loss (lower is better)"] == (
        "| domain holdout loss (lower is better) | 3.2000 | 2.5000 | -0.7000 |"
    )
    assert "| 2.9000 | 3.0000 | +0.1000 |" in rows["general holdout loss (lower is better)"]
    assert "| 0.1000 | 0.4500 | +0.3500 |" in rows["probe F1 (higher is better)"]
    assert "instruction following (prompt accuracy) (higher is better)" in rows
    assert not any(label.startswith("chat holdout loss") for label in rows)  # not measured: no row


def test_license_and_language_default_to_the_base_models_card(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: llama3.1\nlanguage: [en, de]\n---\n# Base\n")
    card = written_card(tmp_path, job_doc(), base)
    assert card.data.license == "llama3.1" and card.data.language == ["en", "de"]
    assert "base_model" not in card.data.to_dict()  # a local path is not a Hub id: named in the text only
    # The job's own license wins.
    override = written_card(tmp_path, job_doc(license="other"), base)
    assert override.data.license == "other"
    # The shipped tiny model has no card: no license is invented.
    assert written_card(tmp_path, job_doc(), ROOT / "examples" / "models" / "tiny-llama").data.license is None


@pytest.mark.parametrize(
    ("export", "message"),
    [
        ({"push": {"repo": "no-owner"}}, "spec.checkpoint.export.push.repo"),
        ({"push": {"repo": "me/model", "tokenSecret": "Bad_Name"}}, "spec.checkpoint.export.push.tokenSecret"),
        ({"push": {"repo": "me/model", "token": "hf_abc"}}, "spec.checkpoint.export.push.token"),
        ({"license": "Apache 2.0"}, "spec.checkpoint.export.license"),
    ],
)
def test_bad_export_fields_name_the_field(export: dict[str, Any], message: str) -> None:
    report = check(job_doc(**export))
    assert report.job is None
    assert any(str(problem).startswith(message) for problem in report.errors), report.errors
    assert "hf_abc" not in " ".join(map(str, report.errors))


def test_the_push_token_reaches_the_ray_pods_by_secret_reference() -> None:
    doc = job_doc("gpu-8b-instruct.yaml", push={"repo": "acme/legal-8b", "tokenSecret": "hub-token"})
    rayjob = build_rayjob(parse_job(doc), 1, OperatorSettings(trainer_image="t:1", ray_version="2.60.0"))
    assert not list(jsonschema.Draft4Validator(rayjob_schema()).iter_errors(rayjob))
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["CPT_HUB_PUSH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}
        assert "value" not in env["CPT_HUB_PUSH_TOKEN"]


def test_push_without_a_token_fails_in_one_line_before_any_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("CPT_HUB_PUSH_TOKEN", raising=False)
    job = parse_job(job_doc(push={"repo": "acme/model", "tokenSecret": "hub-token"}))
    push = job.spec.checkpoint.export.push
    assert push is not None
    with pytest.raises(PushError) as error:
        push_folder(tmp_path, push, "job")
    assert str(error.value) == (
        "spec.checkpoint.export.push: no Hub token: Secret 'hub-token' (key HF_TOKEN) is empty or missing; "
        "set it or drop push"
    )


def test_the_upload_child_reports_one_line_and_no_token(tmp_path: Path) -> None:
    """The child process' own error path, offline: a folder that does not exist fails before any request."""
    result = subprocess.run(
        [sys.executable, "-m", "cpt_trainer.export.push", str(tmp_path / "missing"), "acme/model", "true", "job"],
        capture_output=True,
        text=True,
        env={"HF_TOKEN": "hf_secret_value", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "hf_secret_value" not in result.stderr
