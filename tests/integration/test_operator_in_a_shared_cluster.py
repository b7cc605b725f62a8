"""One operator, many tenants: a tenant who may create CPTJobs in their own namespace, and nothing else, must not
make the operator act with its own identity, call into the cluster for them, echo what an endpoint answers, let
one tenant's slow endpoints stall another's job, or read a huge file into memory.

The real operator (kopf, on a thread) against the Kubernetes API emulator, SeaweedFS, and real TCP servers that
misbehave (`devkit.faulty_endpoint`, `devkit.hostile_s3`).
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import kmock
import pytest
from cpt_core.api.progress import TrainingProgress
from cpt_core.contract import layout
from cpt_core.storage import StorageError

from devkit.cluster import cluster_job, create_secret, ensure_namespace, wait_for
from devkit.faulty_endpoint import FaultyEndpoint
from devkit.hostile_s3 import HostileS3
from devkit.k8s_emulator import CPTJOBS, EVENTS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_checks import condition_is, phase_is, set_rayjob_status, status, write_progress
from tests.support.operator_runner import OperatorFactory, OperatorThread

SECRET_BODY = b"db_password=hunter2-7f3a9c"  # what an internal service answers; it must never reach a status


@pytest.fixture(scope="module")
def operator(
    cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory, monkeymodule: pytest.MonkeyPatch
) -> OperatorThread:
    # The operator's own identity (an IAM role in a real cluster): credentials in its environment that can write
    # every tenant's prefix. Only namespace team-admins may borrow it.
    for key, value in s3.env().items():
        monkeymodule.setenv(key, value)
    for namespace in ("ml", "team-a", "team-b", "team-admins", "slow", "fast"):  # ml: the echo test's own operator
        ensure_namespace(cluster, namespace)
        create_secret(cluster, s3, namespace)
    return operator_factory(
        namespaces=["team-a", "team-b", "team-admins", "slow", "fast"],
        policy={"storage": {"privateEndpoints": ["127.0.0.1:*"], "ambientCredentialsNamespaces": ["team-admins"]}},
        s3_connect_timeout_seconds=1,
        s3_read_timeout_seconds=3,
        s3_max_attempts=1,
        storage_threads=4,
        storage_calls_per_namespace=2,
        storage_deadline_seconds=4,
        storage_breaker_seconds=2,
    )


@pytest.fixture(scope="module")
def monkeymodule() -> Iterator[pytest.MonkeyPatch]:
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def everything_said(cluster: EmulatorThread, namespace: str, name: str) -> str:
    """The job's whole object and its events, as text: what a user with read access can see."""
    events = [e for e in cluster.list(EVENTS, namespace) if e["involvedObject"]["name"] == name]
    return repr(cluster.get(CPTJOBS, namespace, name)) + repr(events)


def keys_below(s3: SeaweedS3, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


# -- no ambient identity for tenants ------------------------------------------------------------------


def test_a_job_without_a_secret_cannot_make_the_operator_write_another_tenants_prefix(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    victim = f"s3://{s3.bucket}/runs/team-a-legal/"
    s3.client().put_object(Bucket=s3.bucket, Key="runs/team-a-legal/step-00000010/COMMITTED", Body=b"{}")
    before = keys_below(s3, "runs/team-a-legal/")
    with FaultyEndpoint(target=("127.0.0.1", s3.port)) as proxy:  # counts every connection to the storage
        doc = cluster_job(s3, "intruder", namespace="team-b", secret=None, checkpoint={"uri": victim})
        doc["spec"]["storage"]["endpoint"] = proxy.url
        cluster.create(CPTJOBS, doc)
        failed = wait_for(
            condition_is(cluster, "intruder", "Failed", "True", "RefusedByPolicy", "team-b"), what="refused"
        )
        assert proxy.connections == 0, "the operator called the job's storage"
    assert failed["message"].startswith(
        "refused by the cluster's admin policy (generation 1): spec.storage.credentialsSecret"
    )
    assert cluster.get(RAYJOBS, "team-b", "intruder-a1") is None
    assert keys_below(s3, "runs/team-a-legal/") == before


def test_a_namespace_the_admin_lends_the_operators_identity_to_runs_without_a_secret(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "trusted", namespace="team-admins", secret=None))
    st = wait_for(phase_is(cluster, "trusted", "Preparing", "team-admins"), what="Preparing")
    assert st["attempt"] == 1  # the storage preflight passed with the operator's own credentials


# -- no calls into the cluster, nothing echoed -----------------------------------------------------------


def test_an_endpoint_inside_the_cluster_is_refused_before_it_is_called(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    # E.g. a metadata service or a database's admin port, on an address the admin did not allow (127.0.0.1 is).
    with HostileS3(SECRET_BODY, host="127.0.0.2") as internal:
        doc = cluster_job(s3, "ssrf", namespace="team-b")
        doc["spec"]["storage"]["endpoint"] = internal.url
        cluster.create(CPTJOBS, doc)
        failed = wait_for(condition_is(cluster, "ssrf", "Failed", "True", "RefusedByPolicy", "team-b"), what="refused")
        assert internal.requests == []
    assert "resolves to 127.0.0.2, inside 127.0.0.0/8" in failed["message"]


def test_what_an_endpoint_answers_never_reaches_the_status_or_an_event(
    cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory
) -> None:
    """An endpoint the admin allowed answers with something that is not S3 (a compromised or mistaken endpoint):
    the preflight and the progress file read fail, and their messages say so without repeating the answer."""
    with HostileS3(SECRET_BODY) as hostile:
        operator_factory(policy={"storage": {"privateEndpoints": ["127.0.0.1:*"]}}, namespaces=["ml"])
        doc = cluster_job(s3, "echo")
        doc["spec"]["storage"]["endpoint"] = hostile.url
        cluster.create(CPTJOBS, doc)
        wait_for(lambda: cluster.get(RAYJOBS, "ml", "echo-a1"), what="RayJob echo-a1")
        set_rayjob_status(cluster, "echo-a1", "Running", "RUNNING")
        ignored = wait_for(
            condition_is(cluster, "echo", "ProgressIgnored", "True", "ProgressUnreadable"), what="ignored"
        )
        assert any(r.startswith("GET /") and layout.PROGRESS in r for r in hostile.requests), hostile.requests
    assert "not a valid progress file" in ignored["message"]
    assert SECRET_BODY.decode() not in everything_said(cluster, "ml", "echo")
    assert b"hunter2" not in repr(cluster.get(CPTJOBS, "ml", "echo")).encode()


def test_storage_cannot_be_pointed_elsewhere_while_an_attempt_runs(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "steady", namespace="team-a"))
    wait_for(lambda: cluster.get(RAYJOBS, "team-a", "steady-a1"), what="RayJob steady-a1")
    set_rayjob_status(cluster, "steady-a1", "Running", "RUNNING", ns="team-a")
    write_progress(cluster, s3, "steady", "running", ns="team-a", progress=TrainingProgress(step=3, total_steps=30))
    wait_for(phase_is(cluster, "steady", "Running", "team-a"), what="Running")
    with pytest.raises(kmock.KubernetesError, match=r"spec\.storage: cannot change while an attempt runs"):
        cluster.patch(CPTJOBS, "team-a", "steady", {"spec": {"storage": {"endpoint": "http://169.254.169.254"}}})


# -- bounded cost per tenant -----------------------------------------------------------------------------


def _stuck_storage_threads() -> list[str]:
    frames = sys._current_frames()
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("cpt-storage") and "recv_into" in repr(frames.get(t.ident or 0, ""))
    ]


def test_one_tenants_slow_endpoints_leave_another_tenants_job_unaffected(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    """Tenant `slow` runs six jobs, each on its own endpoint that drips its answer a byte a second (per-read
    timeouts never fire; a different endpoint per job defeats a per-endpoint limit). The operator has 4 storage
    threads. Tenant `fast`'s job still gets through its preflight as it would alone, and the slow calls end at
    their deadline: their threads return."""
    drips = [FaultyEndpoint(drip=1.0).start() for _ in range(6)]
    try:
        for i, drip in enumerate(drips):
            doc = cluster_job(s3, f"drip-{i}", namespace="slow")
            doc["spec"]["storage"]["endpoint"] = drip.url
            cluster.create(CPTJOBS, doc)
        wait_for(lambda: sum(d.connections for d in drips) >= 2, what="the slow tenant's calls to start")
        started = time.monotonic()
        cluster.create(CPTJOBS, cluster_job(s3, "prompt", namespace="fast"))
        wait_for(phase_is(cluster, "prompt", "Preparing", "fast"), timeout=20, what="the fast tenant's job to start")
        elapsed = time.monotonic() - started
        assert elapsed < 8, f"the other tenant's preflight waited {elapsed:.1f} s"
        assert max(d.peak for d in drips) <= 1 and sum(d.active for d in drips) <= 2  # the slow tenant's share
        unreachable = wait_for(
            condition_is(cluster, "drip-0", "StorageReady", "False", "StorageUnreachable", "slow"), what="drip-0"
        )
        assert "no result within 4 s" in unreachable["message"] or "still running after 4 s" in unreachable["message"]
        time.sleep(1.5)
        assert _stuck_storage_threads() == [], "a call past its deadline kept its thread"
    finally:
        for drip in drips:
            drip.stop()


def _rss_mib() -> float:
    with open("/proc/self/status") as proc:
        for line in proc:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class _Spaces(io.RawIOBase):
    """`size` bytes of JSON-ish filler, produced as they are read (the test never holds the file in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = b" " * n
        self.left -= n
        return n


def test_a_400_mib_progress_file_leaves_the_operators_memory_flat(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    cluster.create(CPTJOBS, cluster_job(s3, "huge", namespace="team-a"))
    wait_for(lambda: cluster.get(RAYJOBS, "team-a", "huge-a1"), what="RayJob huge-a1")
    set_rayjob_status(cluster, "huge-a1", "Running", "RUNNING", ns="team-a")
    key = f"runs/huge/{layout.PROGRESS}"
    s3.client().upload_fileobj(io.BufferedReader(_Spaces(400 * 1024 * 1024), 8 << 20), s3.bucket, key)
    before = _rss_mib()
    ignored = wait_for(
        condition_is(cluster, "huge", "ProgressIgnored", "True", "ProgressUnreadable", "team-a"), what="ignored"
    )
    assert "419430400 bytes, over the 1048576 allowed" in ignored["message"]
    time.sleep(1.5)  # a few more polls read (and refuse) it again
    assert _rss_mib() - before < 40, f"the operator's memory grew by {_rss_mib() - before:.0f} MiB"
    assert status(cluster, "huge", "team-a").get("phase") == "Preparing"


# -- pods the user could not create ----------------------------------------------------------------------


def test_a_privileged_pod_override_is_refused_before_any_rayjob_and_a_fix_resumes(
    cluster: EmulatorThread, s3: SeaweedS3, operator: OperatorThread
) -> None:
    override = {
        "targets": ["workers"],
        "containerSecurityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
    }
    cluster.create(CPTJOBS, cluster_job(s3, "escalate", namespace="team-b", cluster={"podOverrides": [override]}))
    failed = wait_for(condition_is(cluster, "escalate", "Failed", "True", "RefusedByPolicy", "team-b"), what="refused")
    assert "spec.cluster.podOverrides[0].containerSecurityContext.privileged" in failed["message"]
    assert "capability SYS_ADMIN is not allowed" in failed["message"]
    assert cluster.get(RAYJOBS, "team-b", "escalate-a1") is None
    cluster.patch(CPTJOBS, "team-b", "escalate", {"spec": {"cluster": {"podOverrides": [{"labels": {"team": "b"}}]}}})
    wait_for(lambda: cluster.get(RAYJOBS, "team-b", "escalate-a1"), what="the corrected job's RayJob")
    assert "SpecCorrected" in [
        e["reason"] for e in cluster.list(EVENTS, "team-b") if e["involvedObject"]["name"] == "escalate"
    ]


def test_a_progress_read_never_repeats_what_the_endpoint_answered() -> None:
    """The storage layer under the operator's messages: an answer that is not a progress file is named as such,
    never quoted (before, its first 300 characters went into the condition and the event)."""
    from cpt_core.storage import S3Settings, Storage
    from cpt_core.storage.progress import UnreadableProgress, load_progress

    with HostileS3(SECRET_BODY) as hostile:
        storage = Storage(S3Settings(endpoint=hostile.url, access_key_id="a", secret_access_key="b", max_attempts=1))
        with pytest.raises(UnreadableProgress) as info:
            load_progress(storage, "s3://bucket/runs/x/")
    with HostileS3(SECRET_BODY, errors=True) as talkative:
        storage = Storage(S3Settings(endpoint=talkative.url, access_key_id="a", secret_access_key="b", max_attempts=1))
        with pytest.raises(StorageError) as listing:  # the S3 client's error quotes the server's message; ours not
            storage.list_objects("s3://bucket/data/")
    assert "not a valid progress file" in str(info.value) and "hunter2" not in str(info.value)
    assert str(listing.value) == "list s3://bucket/data/: S3 error SlowDown2 (HTTP 500)"
