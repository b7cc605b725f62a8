"""Who may reach a job's Ray cluster, with the real operator against the faithful emulator: KubeRay token auth
with a Secret the operator owns, the job's NetworkPolicy, both made before the RayJob and reused by every
attempt; what the operator does on an older KubeRay (its RayJob CRD is served from the emulator, and replacing
it is an upgrade or a downgrade); and what it does with a token Secret that is not its own or not whole.
KubeRay does not run here: the tests drive the RayJob status.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.cluster import cluster_job, create_secret, install_kuberay_crd, wait_for
from devkit.k8s_emulator import CPTJOBS, EVENTS, NETWORK_POLICIES, RAYJOBS, SECRETS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_checks import condition_is, conditions, events, set_rayjob_status, status
from tests.support.operator_runner import OperatorFactory, OperatorThread

DETECT_SECONDS = 1.0


@pytest.fixture(scope="module")
def operator(operator_factory: OperatorFactory) -> OperatorThread:
    # KubeRay's CRD is read again a second after the last read, so a test can up- or downgrade KubeRay. The test
    # S3 server is on loopback, which the admin policy refuses unless allowed.
    return operator_factory(
        kuberay_detect_seconds=DETECT_SECONDS, policy={"storage": {"allow_private_endpoints": True}}
    )


@pytest.fixture
def kuberay(cluster: EmulatorThread) -> Iterator[Any]:
    """`kuberay("1.5.0")` serves that version's RayJob CRD until the test ends (then v1.7.0's again)."""

    def install(version: str) -> None:
        install_kuberay_crd(cluster, version)
        time.sleep(DETECT_SECONDS * 1.5)  # what the operator read before is stale now

    yield install
    install("1.7.0")


def owner_uid(obj: dict[str, Any]) -> str:
    [ref] = [r for r in obj["metadata"]["ownerReferences"] if r.get("controller")]
    assert ref["kind"] == "CPTJob"
    return str(ref["uid"])


def fail_attempt(cluster: EmulatorThread, name: str, attempt: int) -> None:
    set_rayjob_status(cluster, f"{name}-a{attempt}", "Failed", "FAILED", reason="AppFailed", message="node lost")
    wait_for(lambda: status(cluster, name).get("attempt") == attempt + 1, what=f"attempt {attempt + 1}")


def test_every_attempt_requires_the_jobs_own_token_behind_its_network_policy(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    created: list[tuple[str, str]] = []
    cluster.emulator.listeners.append(
        lambda key, kind, obj: kind == "ADDED" and created.append((key[2], obj["metadata"]["name"]))
    )
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "guarded", runPolicy={"maxRestarts": 1}))
    rayjob = wait_for(lambda: cluster.get(RAYJOBS, "ml", "guarded-a1"), what="RayJob of attempt 1")
    uid = cluster.get(CPTJOBS, "ml", "guarded")["metadata"]["uid"]

    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token", "secretName": "guarded-ray-auth"}
    secret = cluster.get(SECRETS, "ml", "guarded-ray-auth")
    assert owner_uid(secret) == uid and secret["immutable"] is True
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert len(token) >= 40  # 32 random bytes, URL-safe
    policy = cluster.get(NETWORK_POLICIES, "ml", "guarded-ray")
    assert owner_uid(policy) == uid
    assert policy["spec"]["podSelector"] == {"matchLabels": {"cpt.dev/job": "guarded"}}
    submitter = policy["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"]
    assert submitter == {"batch.kubernetes.io/job-name": "guarded-a1"}
    # Before the RayJob: KubeRay never starts a Ray pod that is reachable by anyone or needs a missing Secret.
    order = [name for _, name in created if name.startswith("guarded")]
    assert order.index("guarded-ray-auth") < order.index("guarded-a1")
    assert order.index("guarded-ray") < order.index("guarded-a1")
    c = conditions(cluster, "guarded")["RayAuth"]
    assert (c["status"], c["reason"]) == ("True", "TokenAuth") and "secretName" in c["message"]

    fail_attempt(cluster, "guarded", 1)
    second = wait_for(lambda: cluster.get(RAYJOBS, "ml", "guarded-a2"), what="RayJob of attempt 2")
    assert second["spec"]["rayClusterSpec"]["authOptions"]["secretName"] == "guarded-ray-auth"
    again = cluster.get(SECRETS, "ml", "guarded-ray-auth")
    assert again["metadata"]["uid"] == secret["metadata"]["uid"] and again["data"] == secret["data"]  # reused
    moved = cluster.get(NETWORK_POLICIES, "ml", "guarded-ray")
    assert moved["metadata"]["uid"] == policy["metadata"]["uid"]  # the same policy, now for attempt 2's submitter
    assert moved["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"] == {
        "batch.kubernetes.io/job-name": "guarded-a2"
    }
    assert created.count(("secrets", "guarded-ray-auth")) == 1

    cluster.delete(CPTJOBS, "ml", "guarded")
    wait_for(
        lambda: (
            cluster.get(SECRETS, "ml", "guarded-ray-auth") is None
            and cluster.get(NETWORK_POLICIES, "ml", "guarded-ray") is None
        ),
        what="the token Secret and the NetworkPolicy garbage-collected with the job",
    )


def test_kuberay_with_only_auth_mode_makes_the_token_itself(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread, kuberay: Any
) -> None:
    kuberay("1.5.1")
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "modeonly"))
    rayjob = wait_for(lambda: cluster.get(RAYJOBS, "ml", "modeonly-a1"), what="RayJob")
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert cluster.get(SECRETS, "ml", "modeonly-ray-auth") is None  # KubeRay generates one per Ray cluster
    assert cluster.get(NETWORK_POLICIES, "ml", "modeonly-ray") is not None
    wait_for(condition_is(cluster, "modeonly", "RayAuth", "True", "TokenAuth"), what="RayAuth=True")


def test_kuberay_without_auth_options_runs_the_job_with_one_warning(
    cluster: EmulatorThread,
    s3: SeaweedS3,
    operator: OperatorThread,
    kuberay: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kuberay("1.5.0")
    caplog.set_level(logging.WARNING, logger="cpt_operator")
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "exposed", runPolicy={"maxRestarts": 1}))
    rayjob = wait_for(lambda: cluster.get(RAYJOBS, "ml", "exposed-a1"), what="RayJob")
    assert "authOptions" not in rayjob["spec"]["rayClusterSpec"]
    assert cluster.get(SECRETS, "ml", "exposed-ray-auth") is None
    assert cluster.get(NETWORK_POLICIES, "ml", "exposed-ray") is not None  # the one guard left
    c = wait_for(condition_is(cluster, "exposed", "RayAuth", "False", "RayAuthUnsupported"), what="RayAuth=False")
    assert "without authentication" in c["message"] and "upgrade KubeRay" in c["message"]
    fail_attempt(cluster, "exposed", 1)
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "exposed-a2"), what="RayJob of attempt 2")
    warnings = [e for e in events(cluster, "exposed") if e["reason"] == "RayAuthUnsupported"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"  # one event for the job, not one per attempt
    logged = [r.getMessage() for r in caplog.records if "runs without authentication" in r.getMessage()]
    assert any("ml/exposed" in line and "attempt 1" in line for line in logged), logged


def test_a_token_secret_that_is_not_the_jobs_blocks_the_attempt(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    planted = base64.b64encode(b"a-token-someone-else-knows").decode()
    meta = {"name": "squatted-ray-auth", "namespace": "ml"}
    cluster.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"auth_token": planted}})
    cluster.create(CPTJOBS, cluster_job(s3, "squatted"))
    c = wait_for(condition_is(cluster, "squatted", "ClusterReady", "False", "ForeignObject"), what="ForeignObject")
    assert "kubectl -n ml delete secrets squatted-ray-auth" in c["message"]
    assert cluster.get(RAYJOBS, "ml", "squatted-a1") is None  # never a Ray cluster with a token someone chose
    cluster.delete(SECRETS, "ml", "squatted-ray-auth")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "squatted-a1"), what="RayJob once the foreign Secret is gone")
    secret = cluster.get(SECRETS, "ml", "squatted-ray-auth")
    assert secret["data"]["auth_token"] != planted and owner_uid(secret)


def test_a_damaged_token_secret_is_reported_and_replaced_once_deleted(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    create_secret(cluster, s3)
    cluster.create(CPTJOBS, cluster_job(s3, "damaged", runPolicy={"maxRestarts": 1}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "damaged-a1"), what="RayJob of attempt 1")
    # Someone replaces the (immutable) Secret by one that claims the job but holds no token.
    secret = cluster.get(SECRETS, "ml", "damaged-ray-auth")
    cluster.delete(SECRETS, "ml", "damaged-ray-auth")
    meta = {k: secret["metadata"][k] for k in ("name", "namespace", "ownerReferences")}
    cluster.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {"other": "eA=="}})
    set_rayjob_status(cluster, "damaged-a1", "Failed", "FAILED", reason="AppFailed", message="node lost")
    c = wait_for(
        condition_is(cluster, "damaged", "ClusterReady", "False", "RayAuthSecretDamaged"), what="RayAuthSecretDamaged"
    )
    assert "kubectl -n ml delete secret damaged-ray-auth" in c["message"]
    assert cluster.get(RAYJOBS, "ml", "damaged-a2") is None
    assert ("Warning", "RayAuthSecretDamaged") in [
        (e["type"], e["reason"]) for e in cluster.list(EVENTS, "ml") if e["involvedObject"]["name"] == "damaged"
    ]
    cluster.delete(SECRETS, "ml", "damaged-ray-auth")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "damaged-a2"), timeout=30, what="attempt 2 with a new token")
    assert cluster.get(SECRETS, "ml", "damaged-ray-auth")["data"]["auth_token"]


def test_operator_calls_only_what_the_chart_grants(cluster: EmulatorThread, operator: OperatorThread) -> None:
    """Runs last in this module: every call the operator made here (the new ones included) is declared and
    granted by the chart's default RBAC."""
    from cpt_operator.controller.io.kube import API_CALLS

    from devkit.chart import granted

    made = cluster.emulator.requests_seen
    new = {
        ("", "secrets", "create"),
        ("networking.k8s.io", "networkpolicies", "create"),
        ("networking.k8s.io", "networkpolicies", "update"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "get"),
    }
    assert new <= made, sorted(new - made)
    assert made <= API_CALLS, sorted(made - API_CALLS)
    allowed = granted(cluster_wide=True)
    assert all(allowed(call) for call in made), [c for c in made if not allowed(c)]
