"""Hub preflight: does each `hf://` model exist, and can the job's token read it.

Hub preflight: before any pod is requested, ask the Hugging Face Hub whether each `hf://` model of a
job exists and whether the token of `spec.model.tokenSecret` can read it.

Only definite answers fail the preflight (ModelNotFound, retried with backoff): the repository does
not exist or is hidden from the token, it is gated and the token has no access, or the token is
rejected. When the operator cannot reach the Hub (no egress, a proxy, a 5xx, a timeout) the job goes
on with a warning in the operator's log: the pods may well reach it, and if they do not, the trainer
fails with ModelSourceError naming the field. `hub_preflight: skip` never contacts the Hub. The call
is bounded by `hub_timeout_seconds` and runs in a thread (huggingface_hub is synchronous). The token
is read from the Secret, passed to the call and never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cpt_core.api.v1alpha1 import CPTJob
from cpt_core.contract.reasons import Reason

from cpt_operator.controller.lifecycle.decision import PreflightResult
from cpt_operator.controller.preflight.secrets import secret_problem
from cpt_operator.controller.settings import OperatorSettings

log = logging.getLogger(__name__)

#: HTTP answers that say the token is wrong (not that the Hub is unreachable).
TOKEN_REJECTED = (401, 403)


def classify(exc: BaseException, field: str, repo: str, has_token: bool) -> PreflightResult | None:
    """The preflight failure a huggingface_hub error means; None when it only says the Hub could not be asked."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{field} hf://{repo}"
    token_hint = (
        "check that the token in spec.model.tokenSecret belongs to an account with access"
        if has_token
        else "for a private or gated model set spec.model.tokenSecret to a Secret with an HF token"
    )
    # GatedRepoError subclasses RepositoryNotFoundError: test it first.
    if isinstance(exc, GatedRepoError):
        return PreflightResult(
            False,
            Reason.ModelNotFound,
            f"{where} is gated on the Hugging Face Hub: accept its terms on the Hub, then {token_hint}",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return PreflightResult(
            False,
            Reason.ModelNotFound,
            f"{where} does not exist on the Hugging Face Hub or is private: check the id; {token_hint}",
        )
    if isinstance(exc, RevisionNotFoundError):
        return PreflightResult(
            False, Reason.ModelNotFound, f"{where} has no main revision on the Hugging Face Hub (an empty repository?)"
        )
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in TOKEN_REJECTED:
        return PreflightResult(
            False,
            Reason.ModelNotFound,
            f"{where}: the Hugging Face Hub rejected the token (HTTP {status}); {token_hint}",
        )
    return None


def check_hub_models(
    job: CPTJob, token: str | None, timeout: float, model_info: Callable[..., Any] | None = None
) -> PreflightResult | None:
    """Ask the Hub about every hf:// model of the job (blocking). None: all found, or the Hub was not reachable."""
    if model_info is None:
        from huggingface_hub import HfApi

        model_info = HfApi().model_info
    for field, repo in job.spec.hub_models():
        try:
            model_info(repo, token=token or False, timeout=timeout)
        except Exception as exc:
            failed = classify(exc, field, repo, has_token=bool(token))
            if failed is not None:
                return failed
            log.warning(
                "hub preflight of %s/%s: could not ask the Hugging Face Hub about %s (%s); going on, the pods "
                "download it (set hub_preflight: skip for an operator without egress)",
                job.metadata.namespace,
                job.metadata.name,
                repo,
                type(exc).__name__,
            )
            return None
    return None


def token_problem(job: CPTJob, secret: Mapping[str, str | None] | None) -> PreflightResult | None:
    """The token Secret of spec.model.tokenSecret is missing or lacks its key (pure)."""
    ref = job.spec.model.token_secret
    if ref is None:
        return None
    return secret_problem(job.metadata.namespace, ref.name, "spec.model.tokenSecret", secret, {ref.key: "hf_..."})


async def hub_preflight(kube: Any, job: CPTJob, settings: OperatorSettings) -> PreflightResult | None:
    """The Hub part of the preflight (after storage): None when there is nothing to say."""
    ref = job.spec.model.token_secret
    secret = None
    if ref is not None:
        secret = await kube.secret_data(job.metadata.namespace or "", ref.name, [ref.key])
        failed = token_problem(job, secret)
        if failed is not None:
            return failed
    if settings.hub_preflight == "skip" or not job.spec.hub_models():
        return None
    token = (secret or {}).get(ref.key) if ref is not None else None
    timeout = settings.hub_timeout_seconds
    try:
        return await asyncio.wait_for(asyncio.to_thread(check_hub_models, job, token, timeout), timeout + 1.0)
    except (asyncio.TimeoutError, ImportError) as exc:
        log.warning("hub preflight of %s/%s skipped: %s", job.metadata.namespace, job.metadata.name, type(exc).__name__)
        return None
