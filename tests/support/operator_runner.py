"""The operator on a background thread of the test process (tests and the operator benchmark).

Production runs `cpt operator` (cpt_operator.controller.app.main); this runner only adds a
thread, a ready flag and a stop flag around the same `run_operator`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Protocol

from cpt_operator.controller.app import run_operator
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.settings import OperatorSettings


class OperatorThread:
    """The operator on a background thread (tests and the benchmark)."""

    def __init__(self, settings: OperatorSettings, login: Any, metrics: Metrics | None = None) -> None:
        self.settings, self.login = settings, login
        self.metrics = metrics or Metrics()
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="cpt-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(run_operator(self.settings, self.metrics, self.login, self.stop_flag, self.ready_flag))
        except BaseException as exc:
            self.error = exc

    def start(self) -> OperatorThread:
        self.thread.start()
        if not self.ready_flag.wait(30):
            raise RuntimeError(f"the operator did not start: {self.error}")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=30)


class OperatorFactory(Protocol):
    """Starts an OperatorThread (the `operator_factory` fixture of tests/integration/conftest.py)."""

    def __call__(self, metrics: Metrics | None = None, **settings: Any) -> OperatorThread: ...
