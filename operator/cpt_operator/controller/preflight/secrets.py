"""The one check of a Secret a job references (pure): it exists, its values are text, and it has the keys the
pods need. A problem is SecretNotFound with a message that names the field and says how to fix it."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from cpt_core.contract.reasons import Reason

from cpt_operator.controller.lifecycle.decision import PreflightResult


def secret_problem(
    namespace: str | None,
    name: str,
    field: str,
    secret: Mapping[str, str | None] | None,
    keys: Mapping[str, str],
    optional: Collection[str] = (),
) -> PreflightResult | None:
    """None when the Secret `name` (referenced by `field`) is fine, else why not. `secret` is its decoded
    data (None: not found; a value None: not UTF-8); `keys` maps each key the pods read to the placeholder the
    `kubectl create secret` hint shows; `optional` keys may be absent."""

    def problem(message: str) -> PreflightResult:
        return PreflightResult(False, Reason.SecretNotFound, message)

    ns = namespace
    if secret is None:
        literals = " ".join(f"--from-literal={key}={value}" for key, value in keys.items() if key not in optional)
        create = f"kubectl -n {ns} create secret generic {name} {literals}"
        return problem(f"Secret {ns}/{name} ({field}) not found; create it: {create}")
    binary = [key for key in keys if key in secret and secret[key] is None]
    if binary:
        return problem(
            f"Secret {ns}/{name}: the value of {', '.join(binary)} is not UTF-8 text; store the key as plain text"
        )
    missing = [key for key in keys if key not in optional and not secret.get(key)]
    if missing:
        which = f"key {missing[0]}" if len(missing) == 1 else f"keys {', '.join(missing)}"
        return problem(f"Secret {ns}/{name} ({field}) lacks the {which}; add it to the Secret")
    return None
