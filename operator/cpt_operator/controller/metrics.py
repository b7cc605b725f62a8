"""Prometheus metrics of the operator (served on /metrics by `cpt operator`).

Two kinds: the operator's health (counters, the reconcile histogram, jobs by phase) and per-job gauges
labelled namespace/name (step, throughput, losses, attempt, restarts, seconds since the last progress).
The per-job gauges come from one collector over a dict of the last status seen per job: a job deleted
is dropped from it (the operator's memory stays flat as jobs come and go), and the seconds since the
last progress are computed when Prometheus scrapes, so a stalled job's value keeps growing although
nothing is reconciled.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from cpt_core.api.v1alpha1 import CPTJobStatus, Phase
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: name -> help of every per-job gauge (labels: namespace, name); the chart's PrometheusRule uses these names.
JOB_GAUGES = {
    "cpt_job_step": "Optimizer steps done",
    "cpt_job_total_steps": "Steps the job trains for",
    "cpt_job_tokens_per_second": "Recent training throughput (all ranks)",
    "cpt_job_train_loss": "Recent training loss",
    "cpt_job_eval_general_loss": "Latest held-out loss on general (replay) data",
    "cpt_job_eval_domain_loss": "Latest held-out loss on domain data",
    "cpt_job_forgetting_detected": "1 when the general loss rose past evaluation.forgetting's limit",
    "cpt_job_seconds_since_progress": "Seconds since the trainer last reported progress (computed at scrape time)",
    "cpt_job_attempt": "Current attempt (1 for the first RayJob)",
    "cpt_job_restarts": "Attempts started after a failed one",
    "cpt_job_phase": "1 for the job's current phase (label phase)",
}


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)).timestamp()


@dataclass
class JobSample:
    """What the gauges of one job show: taken from its status at each reconciliation."""

    values: dict[str, float]
    phase: str | None
    progress_at: float | None  # epoch seconds of the last progress


def sample(status: CPTJobStatus, previous: JobSample | None, now: float) -> JobSample:
    values: dict[str, float] = {"cpt_job_attempt": status.attempt, "cpt_job_restarts": status.restarts}
    progress, evaluation = status.progress, status.evaluation
    progress_at = previous.progress_at if previous is not None else None
    if progress is not None:
        values["cpt_job_step"] = progress.step
        for key, value in (
            ("cpt_job_total_steps", progress.total_steps),
            ("cpt_job_tokens_per_second", progress.tokens_per_second),
            ("cpt_job_train_loss", progress.loss),
        ):
            if value is not None:
                values[key] = value
        # The trainer's own timestamp; the operator's clock when it has none (or the step moved since).
        stepped = previous is None or previous.values.get("cpt_job_step") != progress.step
        progress_at = _epoch(progress.updated_at) or (now if stepped or progress_at is None else progress_at)
    if evaluation is not None:
        values["cpt_job_forgetting_detected"] = float(bool(evaluation.forgetting_detected))
        latest = evaluation.latest
        if latest is not None and latest.general_loss is not None:
            values["cpt_job_eval_general_loss"] = latest.general_loss
        if latest is not None and latest.domain_loss is not None:
            values["cpt_job_eval_domain_loss"] = latest.domain_loss
    return JobSample(values, status.phase.value if status.phase else None, progress_at)


class JobCollector(Collector):
    """The per-job gauges, built from the last samples at scrape time."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], JobSample] = {}
        self._lock = threading.Lock()  # scrapes run on the HTTP server's thread

    def observe(self, namespace: str, name: str, status: CPTJobStatus) -> None:
        key = (namespace, name)
        with self._lock:
            self.jobs[key] = sample(status, self.jobs.get(key), time.time())

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self.jobs.pop((namespace, name), None)

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "name"]
        families = {
            name: GaugeMetricFamily(name, text, labels=labels + (["phase"] if name == "cpt_job_phase" else []))
            for name, text in JOB_GAUGES.items()
        }
        now = time.time()
        with self._lock:
            jobs = list(self.jobs.items())
        for (namespace, name), job in jobs:
            for metric, value in job.values.items():
                families[metric].add_metric([namespace, name], value)
            if job.progress_at is not None:
                since = max(0.0, now - job.progress_at)
                families["cpt_job_seconds_since_progress"].add_metric([namespace, name], since)
            if job.phase is not None:
                families["cpt_job_phase"].add_metric([namespace, name, job.phase], 1.0)
        yield from families.values()


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
        self.log_copy_failures = Counter(
            "cpt_log_copy_failures_total", "Ended attempts whose logs were not fully copied", registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "cpt_reconcile_seconds", "Time of one reconciliation (observe, decide, act)", registry=self.registry
        )
        self.per_job = JobCollector()
        self.registry.register(self.per_job)
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

    def observe_job(self, namespace: str, name: str, status: CPTJobStatus) -> None:
        self.per_job.observe(namespace, name, status)

    def forget_job(self, namespace: str, name: str) -> None:
        self.per_job.forget(namespace, name)

    def serve(self, port: int, addr: str = "0.0.0.0") -> object:
        """Serve /metrics on `port` (0: not at all); returns the server (tests shut it down)."""
        if not port:
            return None
        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return server
