"""Prometheus metrics of the operator (served on /metrics by `cpt operator`)."""

from __future__ import annotations

from cpt_core.api.v1alpha1 import Phase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """One registry per operator instance (so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Gauge("cpt_jobs", "CPTJobs by phase", ["phase"], registry=self.registry)
        self.reconcile_errors = Counter(
            "cpt_reconcile_errors_total", "Reconciliations that raised an error", registry=self.registry
        )
        self.restarts = Counter("cpt_restarts_total", "Attempts started after a failed attempt", registry=self.registry)
        self.preflight_failures = Counter(
            "cpt_preflight_failures_total", "Failed storage preflights by reason", ["reason"], registry=self.registry
        )
        self.rayjobs_created = Counter("cpt_rayjobs_created_total", "RayJobs created", registry=self.registry)
        self.reconcile_seconds = Histogram(
            "cpt_reconcile_seconds", "Time of one reconciliation (observe, decide, act)", registry=self.registry
        )
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        key = (namespace, name)
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        for value in Phase:
            self.jobs.labels(phase=value.value).set(sum(1 for p in self._phases.values() if p == value.value))

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
