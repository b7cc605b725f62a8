"""`cpt operator`: run the control plane."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from cpt_operator.controller.handlers import register
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.settings import OperatorSettings


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


def configure_logging(log_format: str) -> None:
    """Records on stderr as text, or as JSON with kopf's formatter (one object per line, with the
    Kubernetes object a record is about under "k8s"); our loggers at INFO, libraries at WARNING."""
    if log_format == "json":
        kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey="k8s")
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if type(h).__name__ == "_KopfStreamHandler"]
        root.setLevel(logging.WARNING)
    for name in ("cpt_core", "cpt_operator"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(settings: OperatorSettings) -> None:
    configure_logging(settings.log_format)
    metrics = Metrics()
    metrics.serve(settings.metrics_port)
    asyncio.run(run_operator(settings, metrics))
