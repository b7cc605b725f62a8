"""The progress reporter: the trainer's only writer of `_status/progress.json`.

The launcher (on the Ray driver) reports `preparing` and failures it sees before or around the
training processes; rank 0 of the trainer reports everything else. Both go through this class:
it stamps the file with the run's identity (job, uid, attempt), checks the fence before every
write (an attempt that lost the run directory never writes), throttles routine writes, and
carries forward what it does not know from this incarnation's previous file, so a new attempt's
`preparing` still shows the last step and checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cpt_core.api.progress import Progress, State, TrainingProgress
from cpt_core.contract.clock import now
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Storage
from cpt_core.storage.progress import read_progress, write_progress


class ProgressReporter:
    def __init__(
        self,
        storage: Storage,
        run_uri: str,
        *,
        job: str,
        uid: str | None,
        attempt: int,
        fence: Callable[[], None] | None = None,
        enabled: bool = True,
        min_interval: float = 2.0,
    ) -> None:
        self.storage, self.run_uri = storage, run_uri
        self.fence = fence
        self.enabled = enabled
        self.min_interval = min_interval
        self._last_write = 0.0
        identity = {"job": job, "uid": uid, "attempt": attempt, "state": "preparing", "started_at": now()}
        self.current = Progress.model_validate(identity)
        if enabled:
            previous = _previous(storage, run_uri, job, uid)
            if previous is not None and previous.attempt <= attempt:
                carried = previous.model_dump(exclude={"reason", "message", "output"})
                self.current = Progress.model_validate({**carried, **identity})

    def refresh(self) -> None:
        """Take what this attempt's trainer wrote since (steps, checkpoint, ...) before the driver writes."""
        if not self.enabled:
            return
        latest = _previous(self.storage, self.run_uri, self.current.job, self.current.uid)
        if latest is not None and latest.attempt == self.current.attempt:
            self.current = latest

    def report(
        self,
        state: State,
        *,
        reason: Reason | None = None,
        message: str | None = None,
        force: bool = False,
        **sections: Any,
    ) -> None:
        """Write the file with `state` and the given sections (others are carried forward)."""
        if not self.enabled:
            return
        if not force and time.monotonic() - self._last_write < self.min_interval:
            return
        progress: TrainingProgress = sections.pop("progress", self.current.progress)
        sections["progress"] = progress.model_copy(update={"updated_at": now()})
        update = {"state": state, "reason": reason.value if reason else None, "message": message, **sections}
        self.current = Progress.model_validate(self.current.model_copy(update=update).model_dump())
        if self.fence is not None:
            self.fence()
        write_progress(self.storage, self.run_uri, self.current)
        self._last_write = time.monotonic()


def _previous(storage: Storage, run_uri: str, job: str, uid: str | None) -> Progress | None:
    try:
        return read_progress(storage, run_uri, job=job, uid=uid)
    except ValueError:
        return None  # a damaged file is replaced, never carried forward
