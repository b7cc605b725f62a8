"""Reading and writing the progress file, and taking it only when it is the reader's.

Reading and writing the progress file (`<checkpoint.uri>/_status/progress.json`, schema in
`cpt_core.api.progress`): written atomically and only by `write_progress`; read back by the operator,
`cpt run` and the trainer's own reporter, which take it only when it is theirs (`read_progress`).
"""

from __future__ import annotations

import logging
import re

from pydantic import ValidationError

from cpt_core.api.progress import Progress
from cpt_core.contract import layout
from cpt_core.storage.locations import Location, NotFound, TooLarge, parse_uri
from cpt_core.storage.store import Storage

log = logging.getLogger(__name__)


def progress_location(run_uri: str) -> Location:
    """`<run>/_status/progress.json`."""
    return parse_uri(run_uri).as_prefix().join(layout.PROGRESS)


def write_progress(storage: Storage, run_uri: str, progress: Progress) -> None:
    """Replace the progress file atomically (the only way it is written)."""
    storage.write_text(progress_location(run_uri), progress.to_json())


class UnreadableProgress(ValueError):
    """The progress file exists but is not a progress file of this schema (damaged or foreign)."""


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


def _one_line(exc: ValueError) -> str:
    """A pydantic error as `progress.step: step 31 is beyond totalSteps 30; ...` (one line, no URLs).

    Nothing the file says is repeated but numbers and field names: the file may come from any endpoint a
    job names, so its text never reaches a condition or an event."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) if isinstance(p, int) or _FIELD.match(str(p)) else "?" for p in err["loc"])
            value = err.get("input")
            got = f" (got {value!r})" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
            parts.append(f"{where or 'file'}: {err['msg'].removeprefix('Value error, ')}{got}"[:200])
        return "; ".join(parts)
    return type(exc).__name__


def load_progress(storage: Storage, run_uri: str, max_bytes: int | None = None) -> Progress | None:
    """The progress file below a run directory, whoever wrote it (None when there is none).

    Callers that act on it check `belongs_to` (or use `read_progress`). A file that cannot be
    parsed, carries impossible values or is larger than `max_bytes` (not read then) raises
    `UnreadableProgress`; storage failures raise `StorageError`.
    """
    where = progress_location(run_uri)
    try:
        text = storage.read_text(where, max_bytes)
    except NotFound:
        return None
    except TooLarge as exc:
        raise UnreadableProgress(f"{where}: not a progress file ({str(exc).rsplit(': ', 1)[-1]})") from None
    except UnicodeDecodeError:
        raise UnreadableProgress(f"{where}: not a valid progress file (not UTF-8 text)") from None
    try:
        return Progress.model_validate_json(text)
    except ValueError as exc:
        raise UnreadableProgress(f"{where}: not a valid progress file ({_one_line(exc)})") from None


def read_progress(
    storage: Storage, run_uri: str, *, job: str, uid: str | None, attempt: int | None = None
) -> Progress | None:
    """The progress file below a run directory when it belongs to this incarnation (and attempt).

    None when no file was written yet or when it was written by another job, another incarnation
    of this job (a deleted and re-applied CPTJob has a new uid) or another attempt. A file that
    cannot be parsed raises `UnreadableProgress`; storage failures raise `StorageError`.
    """
    progress = load_progress(storage, run_uri)
    if progress is None:
        return None
    if not progress.belongs_to(job, uid, attempt):
        log.debug(
            "ignoring %s: written by job %s uid %s attempt %s, not by job %s uid %s attempt %s",
            progress_location(run_uri),
            progress.job,
            progress.uid,
            progress.attempt,
            job,
            uid,
            attempt,
        )
        return None
    return progress
