"""The chart's monitoring: Grafana dashboard ConfigMap, PrometheusRule and JSON logs, rendered by a real helm.

Every metric the dashboard and the alerts query must be one the operator exports: the names are read
from what its /metrics serves for a job with a full status (prometheus_client's own exposition)."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest
from cpt_core.api.progress import TrainingProgress
from cpt_core.api.v1alpha1 import CPTJobStatus, Phase
from cpt_core.api.v1alpha1.status import EvalResult, EvaluationStatus
from cpt_operator.controller.metrics import Metrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from devkit.chart import CHART, helm, render

ON = ("monitoring.dashboard.enabled=true", "monitoring.prometheusRule.enabled=true")


def kinds(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def exported_names() -> set[str]:
    metrics = Metrics()
    status = CPTJobStatus(
        phase=Phase.Running,
        attempt=2,
        restarts=1,
        progress=TrainingProgress(
            step=3, total_steps=9, tokens_per_second=1.0, loss=2.0, updated_at="2026-01-01T00:00:00Z"
        ),
        evaluation=EvaluationStatus(latest=EvalResult(step=2, domain_loss=1.0, general_loss=1.5)),
    )
    metrics.observe_job("ml", "j", status)
    metrics.reconcile_seconds.observe(0.1)
    metrics.preflight_failures.labels(reason="SecretNotFound").inc()
    text = generate_latest(metrics.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def queried_names(text: str) -> set[str]:
    return set(re.findall(r"\bcpt_[a-z_]+\b", text))


def test_monitoring_is_off_by_default() -> None:
    found = kinds(render())
    assert "PrometheusRule" not in found
    assert not any("grafana_dashboard" in d["metadata"].get("labels", {}) for d in found.get("ConfigMap", []))


def test_enabled_monitoring_lints_and_renders_valid_objects() -> None:
    args = [a for s in ON for a in ("--set", s)]
    result = helm("lint", str(CHART), *args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    found = kinds(render(set_values=(*ON, "monitoring.dashboard.namespace=grafana")))
    [dashboard] = [d for d in found["ConfigMap"] if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    kubernetes_validate.validate(dashboard, "1.32", strict=True)
    assert dashboard["metadata"]["namespace"] == "grafana"
    board = json.loads(dashboard["data"]["cpt-operator.json"])
    assert board["uid"] == "cpt-operator" and len(board["panels"]) >= 8
    [rule] = found["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"CPTJobStalled", "CPTJobForgetting", "CPTJobRestarting", "CPTOperatorDown"} <= set(alerts)
    for alert in alerts.values():
        assert alert["expr"].strip() and alert["labels"]["severity"] in ("warning", "critical")
        assert "{{ $labels" in alert["annotations"]["summary"] or alert["alert"].startswith("CPTOperator")


def test_dashboard_and_alerts_query_only_metrics_the_operator_exports() -> None:
    found = kinds(render(set_values=ON))
    [rule] = found["PrometheusRule"]
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    board = next(d for d in found["ConfigMap"] if "cpt-operator.json" in d.get("data", {}))["data"]["cpt-operator.json"]
    exported = exported_names()
    assert queried_names(exprs) and queried_names(exprs) <= exported, queried_names(exprs) - exported
    assert queried_names(board) <= exported, queried_names(board) - exported
    assert {"cpt_job_seconds_since_progress", "cpt_job_forgetting_detected", "cpt_job_restarts"} <= queried_names(exprs)


def test_alert_thresholds_come_from_values() -> None:
    values = (*ON, "monitoring.prometheusRule.stalledMinutes=10", "monitoring.prometheusRule.restartWindow=30m")
    [rule] = kinds(render(set_values=values))["PrometheusRule"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "cpt_job_seconds_since_progress > 600" in alerts["CPTJobStalled"]["expr"]
    assert 'cpt_job_phase{phase="Running"} == 1' in alerts["CPTJobStalled"]["expr"]
    assert "delta(cpt_job_restarts[30m]) >= 1" in alerts["CPTJobRestarting"]["expr"]


def test_service_monitor_keeps_the_jobs_namespace_label() -> None:
    monitor = kinds(render(set_values=("metrics.serviceMonitor.enabled=true",)))["ServiceMonitor"][0]
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True


def test_log_format_reaches_the_operator() -> None:
    args = kinds(render(set_values=("logFormat=json",)))["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert "--log-format=json" in args["args"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("logFormat=xml", "logFormat"),
        ("monitoring.bogus=1", "Additional property bogus is not allowed"),
        ("monitoring.prometheusRule.restartWindow=an hour", "monitoring.prometheusRule.restartWindow"),
        ("monitoring.prometheusRule.stalledMinutes=0", "monitoring.prometheusRule.stalledMinutes"),
    ],
)
def test_invalid_monitoring_values_are_rejected(setting: str, message: str) -> None:
    result = helm("template", "x", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
