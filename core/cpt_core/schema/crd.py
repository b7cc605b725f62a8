"""Generate the CPTJob CustomResourceDefinition from the typed models.

`cpt crd` prints it; `manifests/crds/cpt.dev_cptjobs.yaml` and the Helm chart carry the
committed copy, and a test fails when they drift from what this module generates.

Pydantic emits JSON Schema 2020-12 with `$ref`s and `anyOf` for optionals; Kubernetes wants a
*structural* OpenAPI v3 schema (no refs, a type on every node, no nullable unions). The
conversion below is deliberately small and strict: an unsupported construct raises instead of
emitting something the API server would reject.
"""

from __future__ import annotations

import copy
from typing import Any

from cpt_core.api import v1alpha1 as api
from cpt_core.api.v1alpha1.base import (
    DATA_SCHEMES,
    MODEL_SCHEMES,
    STORAGE_SECRET,
    USERINFO,
    embedded_credentials,
    uri_credentials,
)
from cpt_core.api.v1alpha1.pods import structural
from cpt_core.api.v1alpha1.tracking import MLFLOW_SECRET
from cpt_core.contract import names

# CEL rules, keyed by the dotted wire path of the node that carries them. Transition rules
# (those using oldSelf) only run on update; they make fields whose change would corrupt a
# running job's checkpoints or data stream immutable. runPolicy (suspend, maxRestarts),
# evaluation and cluster stay mutable on purpose.
_IMMUTABLE = "is immutable: changing it would invalidate the job's checkpoints; create a new CPTJob instead"


def _no_userinfo(path: str, message: str) -> dict[str, str]:
    """The models' refusal of credentials in a URI (`base.USERINFO`) as CEL."""
    return {"rule": f"!self.matches('{USERINFO}')", "message": f"{path}: {message}"}


def _uri_rules(path: str, schemes: tuple[str, ...]) -> list[dict[str, str]]:
    """The URI checks of the models (`base.check_uri`) as CEL: allowed schemes, no credentials, a valid bucket name."""
    allowed = "|".join(schemes)
    return [
        {
            "rule": f"!self.matches('^[a-z][a-z0-9+.-]*://') || self.matches('^({allowed})://')",
            "message": f"{path}: unsupported URI scheme; use "
            + ", ".join(f"{s}://" for s in schemes)
            + " or a plain local path",
        },
        _no_userinfo(path, uri_credentials(schemes)),
        {
            # Credentials are the rule above's to name: one message for one problem.
            "rule": f"!self.startsWith('s3://') || self.matches('{USERINFO}') || "
            "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')",
            "message": f"{path}: not a valid S3 bucket name (s3://BUCKET/prefix; lowercase, no credentials)",
        },
    ]


def _or_default(path: str, model: str, field: str) -> str:
    """CEL for `self.<path>`, or the model's default when the field is absent."""
    return f"(has(self.{path}) ? self.{path} : {getattr(api, model).model_fields[field].default})"


CEL_RULES: dict[str, list[dict[str, str]]] = {
    "": [
        {
            "rule": "size(self.metadata.name) <= 63",
            "message": "metadata.name: must be at most 63 characters (it is used in label values)",
            "_path": ".metadata.name",  # for `cpt validate` only; the server's fieldPath cannot see into metadata
        },
        {
            "rule": "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
            "message": "metadata.name: must be a lowercase DNS label (a-z, 0-9, '-'; no dots): it names Ray pods "
            "and services",
            "_path": ".metadata.name",
        },
        {
            # While an attempt runs, the operator and the Ray pods must use one storage: the run directory, its
            # credentials and the endpoint the admin policy checked. Changing it takes a suspend (or its end).
            "rule": "!has(oldSelf.status) || !has(oldSelf.status.phase) || "
            "!(oldSelf.status.phase in ['Preparing', 'Running']) || "
            "(has(self.spec.storage) ? (has(oldSelf.spec.storage) && self.spec.storage == oldSelf.spec.storage) "
            ": !has(oldSelf.spec.storage))",
            "message": "spec.storage: cannot change while an attempt runs (phase Preparing or Running); suspend the "
            "job (spec.runPolicy.suspend: true), change it, then resume",
            "fieldPath": ".spec.storage",
        },
    ],
    "spec": [
        {
            # Absent fields take the models' defaults (the CRD declares none, so the server does not fill them).
            "rule": f"{_or_default('training.globalBatchTokens', 'TrainingSpec', 'global_batch_tokens')} % "
            f"({_or_default('data.sequenceLength', 'DataSpec', 'sequence_length')} * "
            f"{_or_default('training.microBatchSize', 'TrainingSpec', 'micro_batch_size')}) == 0",
            "message": "spec.training.globalBatchTokens: must be a multiple of "
            "spec.data.sequenceLength x spec.training.microBatchSize",
            "fieldPath": ".training.globalBatchTokens",
        },
        {
            "rule": "(has(self.stages) && size(self.stages) > 0) ? "
            "(!has(self.training.steps) && !has(self.training.tokens)) : "
            "(has(self.training.steps) != has(self.training.tokens))",
            "message": "spec.training: give exactly one of steps and tokens",
            "fieldPath": ".training",
        },
        {
            "rule": "(has(self.stages) && size(self.stages) > 0) || "
            "(self.data.sources.all(s, has(s.weight)) && self.data.sources.exists(s, s.weight > 0))",
            "message": "spec.data.sources: at least one source needs weight > 0",
            "fieldPath": ".data.sources",
        },
        {
            "rule": "!has(self.stages) || self.stages.all(st, st.weights.all(k, "
            "self.data.sources.exists(s, s.name == k)))",
            "message": "spec.stages: every weight must name a source of spec.data.sources",
            "fieldPath": ".stages",
        },
        {
            "rule": "!has(self.training.regularization) || !has(self.deepspeed) || "
            "!has(self.deepspeed.zeroStage) || self.deepspeed.zeroStage != 3",
            "message": "spec.training.regularization: not supported with deepspeed.zeroStage 3 (use 2)",
            "fieldPath": ".training.regularization",
        },
        {
            "rule": "!(has(self.training.lora) && has(self.deepspeed) && has(self.deepspeed.zeroStage) && "
            "self.deepspeed.zeroStage == 3)",
            "message": "spec.training.lora: LoRA is not supported with deepspeed.zeroStage 3 yet (use zeroStage 2)",
            "fieldPath": ".training.lora",
        },
    ],
    "spec.model": [{"rule": "self == oldSelf", "message": f"spec.model {_IMMUTABLE}"}],
    "spec.model.source": _uri_rules("spec.model.source", MODEL_SCHEMES),
    "spec.model.tokenizer": _uri_rules("spec.model.tokenizer", MODEL_SCHEMES),
    "spec.model.mirror": [
        {
            "rule": "self.startsWith('s3://')",
            "message": "spec.model.mirror: must be an s3:// prefix, e.g. s3://models/hf/",
        },
        *_uri_rules("spec.model.mirror", ("s3",))[1:],
    ],
    "spec.data.cacheUri": _uri_rules("spec.data.cacheUri", DATA_SCHEMES),
    # Up to 64 x 64 items: prefix tests and the one short USERINFO expression only (the bucket-name regex per
    # item would exceed the API server's CEL cost budget; the models still check it).
    "spec.data.sources[*].uris[*]": [
        {
            "rule": "!self.contains('://') || self.startsWith('s3://') || self.startsWith('file://')",
            "message": "spec.data.sources[].uris[]: unsupported URI scheme; use s3://, file:// or a plain local path",
        },
        _no_userinfo("spec.data.sources[].uris[]", uri_credentials(DATA_SCHEMES)),
    ],
    "spec.data.sources[*].synthesize.output": _uri_rules("spec.data.sources[*].synthesize.output", DATA_SCHEMES),
    "spec.data.sources[*].synthesize.generator.model": _uri_rules(
        "spec.data.sources[*].synthesize.generator.model", MODEL_SCHEMES
    ),
    "spec.checkpoint.uri": [
        {"rule": "self == oldSelf", "message": f"spec.checkpoint.uri {_IMMUTABLE}"},
        *_uri_rules("spec.checkpoint.uri", DATA_SCHEMES),
    ],
    "spec.evaluation.probes": _uri_rules("spec.evaluation.probes", DATA_SCHEMES),
    "spec.evaluation.instructionFollowing.prompts": _uri_rules(
        "spec.evaluation.instructionFollowing.prompts", DATA_SCHEMES
    ),
    "spec.storage.endpoint": [
        {
            "rule": "self.matches('^https?://[^/\\\\s]+(/.*)?$')",
            "message": "spec.storage.endpoint: must be an http:// or https:// URL, e.g. http://minio.minio:9000",
        },
        _no_userinfo("spec.storage.endpoint", embedded_credentials("the endpoint URL", STORAGE_SECRET)),
    ],
    "spec.tracking.mlflow.trackingUri": [
        _no_userinfo("spec.tracking.mlflow.trackingUri", embedded_credentials("the tracking URI", MLFLOW_SECRET)),
    ],
    "spec.data": [{"rule": "self == oldSelf", "message": f"spec.data {_IMMUTABLE}"}],
    "spec.data.sources": [
        {
            "rule": "self.all(x, self.exists_one(y, y.name == x.name))",
            "message": "spec.data.sources: source names must be unique",
            "reason": "FieldValueDuplicate",
        },
        {
            "rule": "self.all(s, !has(s.synthesize) || self.exists(d, d.name == s.synthesize.from && "
            "d.name != s.name && !has(d.synthesize) && (!has(d.format) || d.format != 'chat')))",
            "message": "spec.data.sources: every synthesize.from must name another source with documents "
            "(not chat data, not itself synthesised)",
        },
    ],
    "spec.data.sources[*]": [
        {
            "rule": "has(self.synthesize) ? (!has(self.uris) || size(self.uris) == 0) : "
            "(has(self.uris) && size(self.uris) > 0)",
            "message": "spec.data.sources[*].uris: required (at least 1 item) unless synthesize is set, "
            "and unset when it is (a synthesised source reads synthesize.output)",
            "fieldPath": ".uris",
        },
        {
            "rule": "!has(self.synthesize) || !has(self.format) || self.format == 'chat'",
            "message": "spec.data.sources[*].format: a synthesised source is chat data: set format: chat",
            "fieldPath": ".format",
        },
    ],
    "spec.data.sources[*].synthesize.generator": [
        {
            "rule": "!has(self.kind) || self.kind != 'cloze' || !has(self.model)",
            "message": "spec.data.sources[*].synthesize.generator.model: not used by kind: cloze; remove it",
            "fieldPath": ".model",
        },
    ],
    "spec.data.sources[*].synthesize.filters": [
        {
            "rule": "(has(self.minAnswerTokens) ? self.minAnswerTokens : 1) <= "
            "(has(self.maxAnswerTokens) ? self.maxAnswerTokens : 64) && "
            "(has(self.minQuestionTokens) ? self.minQuestionTokens : 3) <= "
            "(has(self.maxQuestionTokens) ? self.maxQuestionTokens : 64)",
            "message": "spec.data.sources[*].synthesize.filters: each max...Tokens must be >= its min...Tokens",
        },
    ],
    "spec.training": [{"rule": "self == oldSelf", "message": f"spec.training {_IMMUTABLE}"}],
    "spec.stages": [
        {
            "rule": "self.all(x, self.exists_one(y, y.name == x.name))",
            "message": "spec.stages: stage names must be unique",
            "reason": "FieldValueDuplicate",
        },
        {"rule": "self == oldSelf", "message": f"spec.stages {_IMMUTABLE}"},
    ],
    "spec.stages[*]": [
        {
            "rule": "has(self.steps) != has(self.tokens)",
            "message": "spec.stages[*]: give exactly one of steps and tokens",
        },
        {
            "rule": "self.weights.exists(k, self.weights[k] > 0)",
            "message": "spec.stages[*].weights: at least one weight must be > 0",
            "fieldPath": ".weights",
        },
    ],
    "spec.deepspeed.zeroStage": [{"rule": "self == oldSelf", "message": f"spec.deepspeed.zeroStage {_IMMUTABLE}"}],
}

#: List semantics for server-side apply and strategic merges, keyed like CEL_RULES. Conditions are a map
#: keyed by type, as metav1.Condition lists are in Kubernetes' own types (`+listType=map`,
#: `+listMapKey=type`): two writers (the operator, a user's `kubectl patch`) merge by type.
LIST_TYPES: dict[str, dict[str, Any]] = {
    "status.conditions": {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.progress.totalSteps", "priority": 1},
    {"name": "Tokens", "type": "integer", "jsonPath": ".status.progress.tokens"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {
        "name": "General-Δ",
        "type": "number",
        "jsonPath": ".status.evaluation.generalLossIncrease",
        "description": "Relative increase of the general-data loss over its step-0 baseline (forgetting)",
    },
    {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt", "priority": 1},
    {
        "name": "Forgetting",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="ForgettingDetected")].status',
        "priority": 1,
    },
    {
        "name": "Failed",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Failed")].reason',
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_KEEP = {
    "description",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "enum",
    "required",
}


class SchemaConversionError(RuntimeError):
    """The models use a construct that has no structural OpenAPI equivalent."""


def _structural(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        # The referencing site's description wins: it documents the field, not the type.
        if "description" in node:
            target["description"] = node["description"]
        return _structural(target, defs, path)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaConversionError(f"{path}: unions other than Optional[X] are not supported")
        merged = {**{k: v for k, v in node.items() if k not in ("anyOf", "default")}, **options[0]}
        if "description" in node:
            merged["description"] = node["description"]
        return _structural(merged, defs, path)
    if "x-cpt-k8s" in node:
        # A core/v1 shape (pods.k8s): Kubernetes' own structural schema, as KubeRay's CRD carries it.
        shape = structural(node["x-cpt-k8s"])
        if "description" in node:
            shape["description"] = " ".join(node["description"].split())
        return shape
    if "const" in node:
        node = {**node, "enum": [node["const"]]}

    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEEP}
    if "description" in out:
        out["description"] = " ".join(out["description"].split())
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    kind = node.get("type")
    if kind is None and "enum" in node:
        kind = "string" if all(isinstance(v, str) for v in node["enum"]) else "integer"
    if kind is None:
        raise SchemaConversionError(f"{path}: no type")
    out = {"type": kind, **out}
    if kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props:
            out["properties"] = {k: _structural(v, defs, f"{path}.{k}".lstrip(".")) for k, v in props.items()}
        elif isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs, f"{path}[*]")
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = _structural(node["items"], defs, f"{path}[*]")
        out.update(LIST_TYPES.get(path, {}))
    rules = CEL_RULES.get(path)
    if rules:
        out["x-kubernetes-validations"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rules]
    return out


def openapi_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of the CPTJob resource."""
    raw = api.CPTJob.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    root = _structural(raw, defs, "")
    # The API server owns metadata; only its type may be declared.
    root["properties"]["metadata"] = {"type": "object"}
    root["required"] = ["spec"]
    root.pop("description", None)
    root["description"] = api.CPTJob.__doc__
    return root


def crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition for CPTJob."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{names.PLURAL}.{names.GROUP}",
            "labels": {names.APP_NAME_LABEL: "cpt-operator", names.APP_PART_OF_LABEL: "cpt-operator"},
        },
        "spec": {
            "group": names.GROUP,
            "names": {
                "kind": names.KIND,
                "listKind": f"{names.KIND}List",
                "plural": names.PLURAL,
                "singular": names.SINGULAR,
                "shortNames": list(names.SHORT_NAMES),
                "categories": list(names.CATEGORIES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": copy.deepcopy(PRINTER_COLUMNS),
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as the YAML committed under manifests/crds/."""
    import yaml

    header = "# Generated by `cpt crd` from cpt_core.api.v1alpha1 -- do not edit; run `make crd`.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, allow_unicode=True, width=100)


def helm_crd_template() -> str:
    """The CRD as the Helm chart's template: gated by crds.enabled, kept on uninstall when crds.keep."""
    body = crd_yaml().split("\n", 1)[1]  # without the generated-by header
    head, sep, rest = body.partition("  labels:\n")
    keep = "  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n"
    header = "# Generated by `cpt crd --helm` (make crd) from cpt_core.api.v1alpha1 -- do not edit.\n"
    return header + "{{- if .Values.crds.enabled }}\n" + head + keep + sep + rest + "{{- end }}\n"
