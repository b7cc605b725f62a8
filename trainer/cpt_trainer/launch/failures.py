"""Failure classes of an attempt: what the training processes raised, permanent or transient, with the one
line a user reads (never traceback lines).

One mechanism gives an error its reason: the exception class carries its `Reason` (`reason = Reason.X`;
`cpt_core.contract.reasons.reason_of` reads it). An error that knows its reason is permanent for this
attempt -- bad spec, bad data, a damaged cache, a checkpoint that cannot be loaded, a resume mismatch, NaN,
fenced out -- and reported once with it; the Reason's terminal flag tells the operator whether a new
attempt may help (FencedOut: yes). Anything else (a lost worker or node, OOM, network) is transient.
"""

from __future__ import annotations

from dataclasses import dataclass

from cpt_core.contract.reasons import Reason, reason_of


@dataclass(frozen=True)
class Failure:
    """What the training processes raised, classified."""

    reason: Reason
    message: str
    retry: bool


def one_line(error: BaseException) -> str:
    """The first line of an error's message (Ray wraps remote errors in tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:1000]


def classify(error: BaseException) -> Failure:
    """Permanent or transient, with the one line a user reads (pure; unit-tested).

    Of several ranks' errors, one with a terminal reason wins over a non-terminal one (a rank fenced out
    because another saw NaN must not hide the NaN), then the lowest rank."""
    failures: dict[int, BaseException] = dict(getattr(error, "worker_failures", None) or {})
    errors: list[tuple[int | None, BaseException]] = sorted(failures.items()) or [(None, error)]
    known = [(reason, rank, failure) for rank, failure in errors if (reason := reason_of(failure)) is not None]
    if known:
        reason, _, failure = min(known, key=lambda item: (not item[0].terminal, item[1] or 0))
        return Failure(reason, one_line(failure), retry=False)
    rank, first = errors[0]
    where = f"rank {rank}: " if rank is not None else ""
    return Failure(
        Reason.TrainingFailed,
        f"the training processes failed ({where}{type(first).__name__}: {one_line(first)})",
        retry=True,
    )
