"""Validation of CPTJob documents: one function that every entry point uses.

Layers, in the order a user meets them on a cluster, all run here so `cpt validate` on a
laptop says what the API server and the operator would say:

1. no credentials inline (checked first so a secret value never reaches an error message; credentials in a
   URI are refused by the models before any other check of it, and every value a message shows has the
   userinfo of its URIs redacted);
2. the generated openAPIV3Schema (what the API server checks) and its CEL rules;
3. the pydantic models (field-precise semantic checks);
4. recommended-practice warnings (never a rejection).

Every problem is a `Problem(path, message)` whose `str()` is `spec.data.sources[1].weight:
must be > 0 (got 0)`.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cpt_core.api import v1alpha1 as api
from cpt_core.api.v1alpha1.base import FieldError, redact_userinfo
from cpt_core.contract import names
from cpt_core.validation.recommendations import Problem, recommendations

__all__ = [
    "InvalidJob",
    "Problem",
    "Report",
    "UnreadableFile",
    "load_documents",
    "load_job",
    "parse_job",
    "recommendations",
    "validate",
]


@dataclass
class Report:
    """The outcome of validating one document."""

    job: api.CPTJob | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class InvalidJob(ValueError):
    """Raised by `load_job` and `parse_job` when a document is not a valid CPTJob."""

    def __init__(self, source: str, errors: Sequence[Problem]) -> None:
        self.source = source
        self.errors = list(errors)
        super().__init__("\n".join(f"{source}: {e}" for e in self.errors))


# --------------------------------------------------------------------------- paths


def format_path(loc: Iterable[str | int]) -> str:
    """('spec', 'data', 'sources', 1, 'weight') -> 'spec.data.sources[1].weight'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _show(value: Any) -> str:
    """A value as a message shows it: short, and with the userinfo of any URI in it redacted (a value a check
    refuses for another reason may still carry credentials)."""
    if isinstance(value, str):
        value = redact_userinfo(value)
        return repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    if isinstance(value, (dict, list)):
        text = redact_userinfo(json.dumps(value, default=str))
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


# --------------------------------------------------------------------------- credentials

_CREDENTIAL_KEYS = {
    "accesskey",
    "accesskeyid",
    "awsaccesskeyid",
    "secretkey",
    "secretaccesskey",
    "awssecretaccesskey",
    "sessiontoken",
    "awssessiontoken",
    "token",
    "hftoken",
    "huggingfacetoken",
    "password",
    "apikey",
    "credentials",
}
_AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
_SECRET_HINT = (
    "credentials must not be inline. Create a Secret (kubectl create secret generic s3-credentials "
    f"--from-literal={names.ACCESS_KEY_ID}=... --from-literal={names.SECRET_ACCESS_KEY}=...) and set "
    "spec.storage.credentialsSecret: s3-credentials; `cpt run` reads the same keys from the environment"
)


def inline_credentials(doc: Any, loc: tuple[str | int, ...] = ()) -> list[Problem]:
    """Paths in `doc` that carry credentials inline. The values themselves are never reported."""
    found: list[Problem] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            here = (*loc, str(key))
            normal = re.sub(r"[^a-z]", "", str(key).lower())
            if normal in _CREDENTIAL_KEYS and value not in (None, "", {}):
                found.append(Problem(format_path(here), _SECRET_HINT))
            else:
                found.extend(inline_credentials(value, here))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found.extend(inline_credentials(value, (*loc, i)))
    elif isinstance(doc, str) and _AWS_KEY_ID.search(doc):
        found.append(Problem(format_path(loc), "looks like an AWS access key ID; " + _SECRET_HINT))
    return found


# --------------------------------------------------------------------------- schema + CEL


@functools.cache
def _schema() -> dict[str, Any]:
    from cpt_core.schema.crd import openapi_schema

    return openapi_schema()


def _schema_at(loc: Sequence[str | int]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = _schema()
    for part in loc:
        if node is None:
            return None
        if isinstance(part, int):
            node = node.get("items")
        else:
            node = node.get("properties", {}).get(part) or (
                node["additionalProperties"] if isinstance(node.get("additionalProperties"), dict) else None
            )
    return node


def _unknown_field_message(loc: Sequence[str | int]) -> str:
    parent = _schema_at(loc[:-1]) or {}
    known = list(parent.get("properties", {}))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else (f" (known: {', '.join(known)})" if known else "")
    return f"unknown field{hint}"


def schema_errors(doc: Any) -> list[Problem]:
    """Errors the API server's structural schema check would report."""
    import jsonschema

    validator = jsonschema.Draft4Validator(_schema())
    problems = []
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        loc = list(err.absolute_path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            continue  # reported through the models' extra="forbid" with a suggestion
        if err.validator == "required":
            missing = re.findall(r"'([^']+)' is a required property", err.message)
            problems.append(Problem(format_path([*loc, *missing[:1]]), "required field is missing"))
            continue
        problems.append(Problem(format_path(loc), _schema_message(err)))
    return problems


def _schema_message(err: Any) -> str:
    v, value, inst = err.validator, err.validator_value, err.instance
    if v == "enum":
        return f"must be one of {', '.join(_show(x) for x in value)} (got {_show(inst)})"
    if v == "type":
        return f"must be of type {value} (got {_show(inst)})"
    if v == "minimum":
        op = ">" if err.schema.get("exclusiveMinimum") else ">="
        return f"must be {op} {value} (got {_show(inst)})"
    if v == "maximum":
        op = "<" if err.schema.get("exclusiveMaximum") else "<="
        return f"must be {op} {value} (got {_show(inst)})"
    if v == "minItems":
        return f"must have at least {value} item{'s' if value != 1 else ''}"
    if v == "maxItems":
        return f"must have at most {value} items"
    if v == "maxLength":
        return f"must be at most {value} characters"
    if v == "minLength":
        return "must not be empty" if value == 1 else f"must be at least {value} characters"
    if v == "pattern":
        return f"must match {value} (got {_show(inst)})"
    return err.message


@functools.cache
def _cel_program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_violations(doc: Any, old: Any = None) -> list[Problem]:
    """Evaluate the schema's x-kubernetes-validations on `doc` like the API server does.

    Transition rules (those that use `oldSelf`) run only when `old` is given and the node exists
    in both, exactly as on a Kubernetes update.
    """
    import celpy

    problems: list[Problem] = []

    def walk(schema: dict[str, Any] | None, value: Any, previous: Any, loc: tuple[str | int, ...]) -> None:
        if schema is None or value is None:
            return
        for rule in schema.get("x-kubernetes-validations", []):
            transition = "oldSelf" in rule["rule"]
            if transition and previous is None:
                continue
            activation = {"self": celpy.json_to_cel(value)}
            if transition:
                activation["oldSelf"] = celpy.json_to_cel(previous)
            try:
                result = _cel_program(rule["rule"]).evaluate(activation)
            except Exception as exc:
                result = exc
            if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
                where = format_path(loc) + _rule_path(rule)
                head, sep, tail = rule["message"].partition(": ")
                message = tail if sep and " " not in head else rule["message"]  # drop a leading "path: "
                problems.append(Problem(where.lstrip("."), message))
        if isinstance(value, dict) and "properties" in schema:
            for key, sub in schema["properties"].items():
                if key in value:
                    prev = previous.get(key) if isinstance(previous, dict) else None
                    walk(sub, value[key], prev, (*loc, key))
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                prev = previous[i] if isinstance(previous, list) and i < len(previous) else None
                walk(schema["items"], item, prev, (*loc, i))

    walk(_schema(), doc, old, ())
    return problems


def _rule_path(rule: dict[str, str]) -> str:
    from cpt_core.schema.crd import CEL_RULES

    for rules in CEL_RULES.values():
        for candidate in rules:
            if candidate["rule"] == rule["rule"]:
                return candidate.get("_path", candidate.get("fieldPath", ""))
    return rule.get("fieldPath", "")


# --------------------------------------------------------------------------- pydantic errors


def _pydantic_problems(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        loc = list(err["loc"])
        kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
        cause = ctx.get("error")
        if isinstance(cause, FieldError):
            problems.append(Problem(format_path([*loc, *cause.loc]), cause.message))
            continue
        if kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message = _unknown_field_message(loc)
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
            bound = next(iter(v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")))
            message = f"must be {op} {bound} (got {_show(got)})"
        elif kind in ("literal_error", "enum"):
            message = f"must be one of {ctx.get('expected', '')} (got {_show(got)})"
        elif kind in ("too_short", "too_long"):
            n = ctx.get("min_length", ctx.get("max_length"))
            what = "at least" if kind == "too_short" else "at most"
            message = f"must have {what} {n} item{'s' if n != 1 else ''}"
        elif kind == "string_too_short":
            message = "must not be empty"
        elif kind == "string_too_long":
            message = f"must be at most {ctx['max_length']} characters"
        elif kind == "string_pattern_mismatch" and "eEinumkKMGTP" in ctx.get("pattern", ""):
            message = f'must be a Kubernetes quantity such as "4", "500m" or "16Gi" (got {_show(got)})'
        elif kind == "string_pattern_mismatch":
            message = (
                f"must be a lowercase DNS label (a-z, 0-9, '-'; starting and ending with a letter "
                f"or digit) (got {_show(got)})"
                if "[-a-z0-9]" in ctx.get("pattern", "")
                else f"must match {ctx.get('pattern')} (got {_show(got)})"
            )
        elif kind in ("int_parsing", "int_type", "int_from_float"):
            message = f"must be an integer (got {_show(got)})"
        elif kind in ("float_parsing", "float_type"):
            message = f"must be a number (got {_show(got)})"
        elif kind in ("bool_parsing", "bool_type"):
            message = f"must be true or false (got {_show(got)})"
        elif kind in ("string_type",):
            message = f"must be a string (got {_show(got)})"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = f"must be a mapping (got {_show(got)})"
        elif kind == "list_type":
            message = f"must be a list (got {_show(got)})"
        elif kind == "value_error":
            message = str(cause) if cause is not None else err["msg"]
        else:
            message = err["msg"]
        problems.append(Problem(format_path(loc), message))
    return problems


# --------------------------------------------------------------------------- entry points


def _dedupe(problems: Iterable[Problem], shadowing: Iterable[Problem]) -> Iterator[Problem]:
    """Problems whose path is not already covered by `shadowing` (same path or an ancestor)."""
    taken = {p.path for p in shadowing}
    seen: set[Problem] = set()
    for p in problems:
        covered = any(p.path == t or p.path.startswith(t + ".") or p.path.startswith(t + "[") for t in taken)
        if not covered and p not in seen:
            seen.add(p)
            yield p


def validate(doc: Any, old: Any = None, server_checked: bool = False) -> Report:
    """Validate one CPTJob document; `old` (the stored object) enables update-only CEL rules.

    `server_checked=True` skips the structural schema and CEL layers, which the API server has
    already enforced for an object read from the cluster (the operator's hot path).
    """
    if not isinstance(doc, dict):
        return Report(None, [Problem("", f"a CPTJob manifest must be a mapping (got {type(doc).__name__})")])
    if doc.get("kind") != names.KIND or doc.get("apiVersion") != names.API_VERSION:
        got = f"{doc.get('apiVersion')}/{doc.get('kind')}"
        return Report(
            None, [Problem("", f"not a CPTJob: expected apiVersion {names.API_VERSION}, kind {names.KIND} (got {got})")]
        )

    secret = inline_credentials(doc.get("spec"), ("spec",))
    errors: list[Problem] = list(secret)
    job = None
    try:
        job = api.CPTJob.model_validate(doc)
    except ValidationError as exc:
        errors.extend(_dedupe(_pydantic_problems(exc), secret))
    if not server_checked:
        errors.extend(_dedupe(schema_errors(doc), errors))
    if not errors and not server_checked:
        # Like the API server, CEL rules only run on objects that pass the structural schema.
        errors.extend(cel_violations(doc, old))
    if errors:
        return Report(None, errors)
    assert job is not None
    warnings = recommendations(job.spec)
    return Report(job, [], warnings)


def parse_job(doc: Any, source: str = "<object>") -> api.CPTJob:
    """The typed job, or `InvalidJob` listing every problem."""
    report = validate(doc)
    if report.job is None:
        raise InvalidJob(source, report.errors)
    return report.job


class UnreadableFile(OSError):
    """The file is missing or cannot be read (a usage error, not an invalid manifest)."""


def load_documents(path: str | Path) -> list[Any]:
    """All YAML documents of a file. Raises UnreadableFile, or InvalidJob for a YAML syntax error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UnreadableFile(f"{path}: cannot read file: {reason}") from None
    return parse_documents(str(path), text)


def parse_documents(label: str, text: str) -> list[Any]:
    """Every non-empty YAML document of `text`. Raises InvalidJob (naming `label`) for a syntax error or none."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidJob(label, [Problem("", f"invalid YAML: {where}{problem}")]) from None
    if not docs:
        raise InvalidJob(label, [Problem("", "no YAML documents in file")])
    return docs


def load_job(path: str | Path, local: bool = False) -> api.CPTJob:
    """The single CPTJob in a file (what `cpt run`, `cpt prepare` and `cpt train` take).

    With `local=True` relative paths in the spec are resolved against the file's directory.
    """
    docs = load_documents(path)
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == names.KIND]
    if len(jobs) != 1:
        raise InvalidJob(str(path), [Problem("", f"expected exactly one CPTJob document (found {len(jobs)})")])
    job = parse_job(jobs[0], str(path))
    if local:
        job.spec = job.spec.with_base_dir(str(Path(path).resolve().parent))
    return job
