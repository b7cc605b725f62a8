"""`cpt operator`: run the control plane."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf

from .handlers import register
from .metrics import Metrics
from .settings import OperatorSettings


def build_registry(settings: OperatorSettings, metrics: Metrics, login: Any = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, settings, metrics, login)
    return registry


async def run_operator(
    settings: OperatorSettings,
    metrics: Metrics | None = None,
    login: Any = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run until `stop_flag` is set (or forever). One replica by design: see docs/operations.md."""
    metrics = metrics or Metrics()
    registry = build_registry(settings, metrics, login)
    await kopf.operator(
        registry=registry,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def main(settings: OperatorSettings) -> None:
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    asyncio.run(run_operator(settings, metrics))


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
