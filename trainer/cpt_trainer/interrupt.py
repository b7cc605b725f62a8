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
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cpt_core.storage import Location, NotFound, Storage, parse_uri

from .train_state import now

log = logging.getLogger(__name__)

STOP_PATH = "_status/stop.json"
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class Interrupted(Exception):
    """Raised in the training loop after the step in which every rank learned of a stop request."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self.signal_name = signal_name


def stop_location(run_uri: str) -> Location:
    return parse_uri(run_uri).as_prefix().join(STOP_PATH)


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


@contextmanager
def signals_to(handler: Callable[[str], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler(name)` (main thread only), restoring the previous handlers.

    Installed after `ray.init`: Ray's driver has a C++ SIGTERM handler that aborts with a stack dump
    (exit 134), and Ray Train registers its own SIGINT handler in `fit()` -- which is why `fit()`
    runs in a thread (`launch.run_job`): Ray Train only installs it from the main thread.
    """
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        handler(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class DriverStop:
    """The driver's side of an interruption; installed as the SIGINT/SIGTERM handler (`signals_to`).

    While training runs, the first signal writes the stop request and announces it; before that
    (preparing data: nothing to save) and on a second signal it abandons at once with
    KeyboardInterrupt. `overdue()` says the trainers took longer than the grace period.
    """

    MARGIN = 30.0

    def __init__(
        self, storage: Storage, run_uri: str, attempt: int, grace_seconds: float, announce: Callable[[str], None]
    ) -> None:
        self.storage, self.run_uri, self.attempt = storage, run_uri, attempt
        self.grace = grace_seconds
        self.announce = announce
        self.signal_name: str | None = None
        self.training = False
        self._since: float | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_name or "SIGINT", 130)

    def __call__(self, signal_name: str) -> None:
        if self.signal_name is not None or not self.training:
            self.signal_name = self.signal_name or signal_name
            raise KeyboardInterrupt(signal_name)
        self.signal_name, self._since = signal_name, time.monotonic()
        request_stop(self.storage, self.run_uri, self.attempt, signal_name)
        self.announce(
            f"{signal_name}: finishing the current step and committing a checkpoint if it fits in "
            f"{self.grace:.0f} s; send it again to stop at once"
        )

    def overdue(self) -> bool:
        return self._since is not None and time.monotonic() - self._since > self.grace + self.MARGIN
