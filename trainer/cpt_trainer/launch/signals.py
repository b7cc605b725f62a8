"""The driver's side of an interruption: SIGINT/SIGTERM become a stop request.

SIGINT/SIGTERM of `cpt run` and `cpt train` become a stop request to the training processes
(`cpt_trainer.train.interrupt`), a second signal or an overdue stop abandons the step, and the exit code
says which signal ended the run (130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cpt_core.storage import Storage

from cpt_trainer.train.interrupt import request_stop

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


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
