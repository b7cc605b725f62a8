"""Per-job metrics, scraped from the operator's real /metrics endpoint while it reconciles a job on the emulator."""

from __future__ import annotations

import datetime as dt
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from cpt_core.api.progress import Progress, TrainingProgress
from cpt_core.api.v1alpha1.status import EvalResult, EvaluationStatus
from cpt_operator.controller.metrics import JOB_GAUGES, Metrics
from prometheus_client.parser import text_string_to_metric_families

from devkit.cluster import cluster_job, create_secret, wait_for
from devkit.k8s_emulator import CPTJOBS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_runner import OperatorFactory, OperatorThread


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def stack(
    cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory
) -> Iterator[tuple[EmulatorThread, OperatorThread, str]]:
    """The emulator, the operator running with its metrics, and the URL of their real /metrics endpoint."""
    metrics, port = Metrics(), free_port()
    server: Any = metrics.serve(port, addr="127.0.0.1")
    operator = operator_factory(metrics=metrics)
    create_secret(cluster, s3)
    yield cluster, operator, f"http://127.0.0.1:{port}/metrics"
    operator.stop()  # before the endpoint it exports to
    server.shutdown()


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} as Prometheus would read the endpoint."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def of(samples: dict[str, Any], metric: str, **labels: str) -> float | None:
    return samples.get(metric, {}).get(tuple(sorted({"namespace": "ml", "name": "gauged", **labels}.items())))


def test_per_job_gauges_follow_the_job_and_go_with_it(
    stack: tuple[EmulatorThread, OperatorThread, str], s3: SeaweedS3
) -> None:
    cluster, operator, url = stack
    cluster.create(CPTJOBS, cluster_job(s3, "gauged"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "gauged-a1"), what="RayJob")
    cluster.patch(
        RAYJOBS, "ml", "gauged-a1", {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}, "status"
    )
    uid = cluster.get(CPTJOBS, "ml", "gauged")["metadata"]["uid"]
    written = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=120)).strftime("%Y-%m-%dT%H:%M:%SZ")
    progress = Progress(
        job="gauged",
        uid=uid,
        attempt=1,
        state="running",
        progress=TrainingProgress(step=12, total_steps=30, tokens_per_second=1500.0, loss=3.5, updated_at=written),
        evaluation=EvaluationStatus(latest=EvalResult(step=10, domain_loss=5.0, general_loss=7.25)),
    )
    s3.client().put_object(Bucket=s3.bucket, Key="runs/gauged/_status/progress.json", Body=progress.to_json().encode())

    samples = wait_for(lambda: (s := scrape(url)) and of(s, "cpt_job_step") == 12 and s, what="cpt_job_step 12")
    assert of(samples, "cpt_job_total_steps") == 30 and of(samples, "cpt_job_tokens_per_second") == 1500.0
    assert of(samples, "cpt_job_train_loss") == 3.5 and of(samples, "cpt_job_eval_general_loss") == 7.25
    assert of(samples, "cpt_job_eval_domain_loss") == 5.0 and of(samples, "cpt_job_forgetting_detected") == 0
    assert of(samples, "cpt_job_attempt") == 1 and of(samples, "cpt_job_restarts") == 0
    assert of(samples, "cpt_job_phase", phase="Running") == 1
    stalled = of(samples, "cpt_job_seconds_since_progress")
    assert stalled is not None and 119 <= stalled < 200
    time.sleep(1.5)  # computed at scrape time: it grows while nothing is reported
    assert (of(scrape(url), "cpt_job_seconds_since_progress") or 0) >= stalled + 1
    assert set(JOB_GAUGES) <= set(samples)  # every gauge the chart's rules may use is exported

    cluster.delete(CPTJOBS, "ml", "gauged")
    wait_for(lambda: of(scrape(url), "cpt_job_step") is None, what="the job's series removed")
    assert not any(("name", "gauged") in labels for series in scrape(url).values() for labels in series)
    assert operator.metrics.per_job.jobs == {}  # nothing kept for a deleted job
