"""`cpt operator`: run the control plane."""

from __future__ import annotations

import asyncio
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
