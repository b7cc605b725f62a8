"""Interruptions: SIGINT/SIGTERM end a run cleanly, with a checkpoint when there is time for one.

The signal reaches the driver (`cpt run` on a laptop, `cpt train` in the RayJob), not the training
processes, which Ray runs elsewhere. So the driver writes a *stop request* beside the progress file,
`<checkpoint.uri>/_status/stop.json` (this attempt's number and the signal), and the training
processes act on it:

- rank 0 polls the request in a background thread (a stat per second, nothing per step);
- the flag rides along in the one all-reduce every step already does (`TrainStep`), so all ranks
  learn it after the same step, without a collective of their own;
- the trainer finishes that step, commits a checkpoint of it when `checkpoint.interruptGraceSeconds`
  allows (judged by this attempt's last save and upload), writes `progress.json` with state
  `interrupted`, and returns; the driver prints where the run resumes from and exits 130 (SIGINT)
  or 143 (SIGTERM).

A second signal, or the grace period running out, abandons the step: Ray is shut down and the
driver records `interrupted` itself; the run resumes from the last committed checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading

from cpt_core.contract import layout
from cpt_core.contract.clock import now
from cpt_core.storage import Location, NotFound, Storage, parse_uri

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised in the training loop after the step in which every rank learned of a stop request."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


def stop_location(run_uri: str) -> Location:
    return parse_uri(run_uri).as_prefix().join(layout.STOP)


def request_stop(storage: Storage, run_uri: str, attempt: int, signal_name: str) -> None:
    """Ask the training processes of `attempt` to stop after their current step (the driver's side)."""
    payload = {"attempt": attempt, "signal": signal_name, "requestedAt": now()}
    storage.write_text(stop_location(run_uri), json.dumps(payload))


def clear_stop(storage: Storage, run_uri: str) -> None:
    """Forget an old request (a new attempt starts)."""
    storage.delete(stop_location(run_uri))


class StopSignal:
    """Whether this rank was asked to stop: by a request file (rank 0 watches it) or directly."""

    def __init__(self) -> None:
        self.requested: str | None = None  # the signal's name
        self._done = threading.Event()

    def request(self, signal_name: str) -> None:
        if self.requested is None:
            log.warning("stop requested (%s): finishing the current step", signal_name)
            self.requested = signal_name

    def watch(self, storage: Storage, run_uri: str, attempt: int, interval: float = 1.0) -> None:
        """Poll the request file of `attempt` in a background thread until `close()`."""
        location = stop_location(run_uri)

        def loop() -> None:
            while not self._done.wait(interval):
                try:
                    request = json.loads(storage.read_text(location))
                except (NotFound, ValueError):
                    continue
                except Exception as exc:  # storage trouble must not end training; try again later
                    log.debug("cannot read %s: %s", location, exc)
                    continue
                if int(request.get("attempt", -1)) == attempt:
                    self.request(str(request.get("signal", "SIGTERM")))
                    return

        threading.Thread(target=loop, name="cpt-stop-watch", daemon=True).start()

    def close(self) -> None:
        self._done.set()
