"""`cpt status|logs|suspend|resume` and `kubectl cpt` against the Kubernetes API emulator, the real operator and
SeaweedFS: a kubeconfig like a user's, the console scripts as installed, stdout parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from devkit.cluster import cluster_job, create_secret, wait_for
from devkit.k8s_emulator import CPTJOBS, PODS, RAYJOBS, EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_checks import set_rayjob_status
from tests.support.operator_runner import OperatorFactory

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stack(
    cluster: EmulatorThread, s3: SeaweedS3, operator_factory: OperatorFactory, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EmulatorThread, dict[str, str]]:
    """The emulator with the operator running, and the environment of a user whose kubeconfig points at it.
    The S3 server is on loopback: the admin policy allows private endpoints here, as on a development cluster."""
    from cpt_operator.controller.policy.admin import AdminPolicy, StoragePolicy

    operator_factory(policy=AdminPolicy(storage=StoragePolicy(allow_private_endpoints=True)))
    create_secret(cluster, s3)
    config = tmp_path_factory.mktemp("kube") / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": cluster.url}}],
                "users": [{"name": "me", "user": {"token": "t"}}],
                "contexts": [{"name": "dev", "context": {"cluster": "emulator", "user": "me", "namespace": "ml"}}],
                "current-context": "dev",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_"))}
    env["KUBECONFIG"] = str(config)
    return cluster, env


def cli(env: dict[str, str], *args: str, program: str = "cpt", timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / program), *args], env=env, capture_output=True, text=True, timeout=timeout)


def add_pod(cluster: EmulatorThread, rayjob: str, pod: str, labels: dict[str, str], log: Path) -> None:
    owner = cluster.get(RAYJOBS, "ml", rayjob)["metadata"]
    ref = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": rayjob, "uid": owner["uid"]}
    meta = {"name": pod, "namespace": "ml", "labels": labels, "ownerReferences": [ref]}
    cluster.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": [{"name": "c"}]}})
    cluster.patch(PODS, "ml", pod, {"status": {"phase": "Running"}}, subresource="status")
    cluster.emulator.pod_logs[("ml", pod, "c")] = log


def test_status_prints_text_json_and_yaml(stack: tuple[EmulatorThread, dict[str, str]], s3: SeaweedS3) -> None:
    cluster, env = stack
    cluster.create(CPTJOBS, cluster_job(s3, "shown"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "shown-a1"), what="RayJob")
    text = cli(env, "status", "shown")
    assert text.returncode == 0, text.stderr
    assert "Phase:       Preparing  attempt 1, 0 restarts" in text.stdout and "RayJob:      shown-a1" in text.stdout
    as_json = json.loads(cli(env, "status", "shown", "-n", "ml", "-o", "json").stdout)
    assert as_json["metadata"]["name"] == "shown" and as_json["status"]["rayJobName"] == "shown-a1"
    as_yaml = yaml.safe_load(cli(env, "status", "shown", "-o", "yaml").stdout)
    assert as_yaml["status"]["attempt"] == 1
    plugin = cli(env, "status", "shown", "-o", "json", program="kubectl-cpt")
    assert plugin.returncode == 0 and json.loads(plugin.stdout)["status"]["phase"] == as_json["status"]["phase"]
    missing = cli(env, "status", "nope")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == 'error: cptjob "nope" not found in namespace "ml" (kubectl get cptjobs -n ml)'


def test_suspend_and_resume_patch_the_run_policy(stack: tuple[EmulatorThread, dict[str, str]], s3: SeaweedS3) -> None:
    cluster, env = stack
    cluster.create(CPTJOBS, cluster_job(s3, "paused"))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "paused-a1"), what="RayJob")
    out = cli(env, "suspend", "paused")
    assert out.returncode == 0 and out.stdout.strip() == "cptjob.cpt.dev/paused suspended (namespace ml)"
    wait_for(lambda: (cluster.get(CPTJOBS, "ml", "paused").get("status") or {}).get("phase") == "Suspended")
    assert cluster.get(RAYJOBS, "ml", "paused-a1") is None
    assert cli(env, "resume", "paused").returncode == 0
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "paused-a2"), what="attempt 2 after resume")


def test_logs_follow_the_live_attempt_then_read_the_copies(
    stack: tuple[EmulatorThread, dict[str, str]], s3: SeaweedS3, tmp_path: Path
) -> None:
    cluster, env = stack
    cluster.create(CPTJOBS, cluster_job(s3, "told", runPolicy={"maxRestarts": 1}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "told-a1"), what="RayJob")
    driver, head = tmp_path / "driver.log", tmp_path / "head.log"
    driver.write_text("step 1 loss 7.6\n")
    head.write_text("ray head started\n")
    add_pod(cluster, "told-a1", "told-a1-abcde", {"batch.kubernetes.io/job-name": "told-a1"}, driver)
    add_pod(
        cluster,
        "told-a1",
        "told-a1-rc-head-x",
        {"cpt.dev/job": "told", "cpt.dev/attempt": "1", "ray.io/node-type": "head"},
        head,
    )

    # -f streams the driver until its pod ends.
    follow = subprocess.Popen(
        [str(BIN / "cpt"), "logs", "told", "-f"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(2)
    with driver.open("a") as f:
        f.write("step 2 loss 7.1\nTraceback: RuntimeError: boom\n")
    time.sleep(1)
    cluster.patch(PODS, "ml", "told-a1-abcde", {"status": {"phase": "Failed"}}, subresource="status")
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err
    assert out == "step 1 loss 7.6\nstep 2 loss 7.1\nTraceback: RuntimeError: boom\n"

    every = cli(env, "logs", "told", "--role", "all")
    assert every.stdout == "step 1 loss 7.6\nstep 2 loss 7.1\nTraceback: RuntimeError: boom\nray head started\n"
    assert "==> driver told-a1-abcde/c <==" in every.stderr and "==> head told-a1-rc-head-x/c <==" in every.stderr

    # The attempt fails: the operator copies the logs, the next attempt starts; once the pods are gone,
    # `cpt logs --attempt 1` reads the copies (with the job's Secret: this user may read it).
    set_rayjob_status(cluster, "told-a1", "Failed", "FAILED", reason="AppFailed", message="boom")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "told-a2"), what="attempt 2")
    # A restarted attempt's RayJob is deleted after the copy, and its pods with it (owner references).
    wait_for(lambda: cluster.get(RAYJOBS, "ml", "told-a1") is None, what="attempt 1's RayJob deleted")
    wait_for(
        lambda: all(cluster.get(PODS, "ml", p) is None for p in ("told-a1-abcde", "told-a1-rc-head-x")),
        what="attempt 1's pods gone",
    )
    copied = cli(env, "logs", "told", "--attempt", "1", "--tail", "1")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout == "Traceback: RuntimeError: boom\n"
    assert f"attempt 1 has ended; its logs as copied to s3://{s3.bucket}/runs/told/logs/attempt-1/" in copied.stderr
    nothing = cli(env, "logs", "told", "--attempt", "3")
    assert nothing.returncode == 1 and "has no attempt 3" in nothing.stderr


HOSTILE_LOG = (
    b"step 1 \x1b[31mloss 7.6\x1b[0m\x1b]0;pwned\x07\n"
    b"\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x1b\\step 2\x1b[1A\x1b[2K forged\x07\n"
)
HOSTILE_SHOWN = "step 1 loss 7.6\nstep 2 forged\n"


def failed_attempt(cluster: EmulatorThread, s3: SeaweedS3, name: str, log: Path, live: Callable[[], None]) -> str:
    """A job whose attempt 1 ran a driver pod writing `log` (`live` runs while it is there), failed, had its logs
    copied and its pods removed; the URI of the copies."""
    cluster.create(CPTJOBS, cluster_job(s3, name, runPolicy={"maxRestarts": 1}))
    wait_for(lambda: cluster.get(RAYJOBS, "ml", f"{name}-a1"), what="RayJob")
    add_pod(cluster, f"{name}-a1", f"{name}-a1-abcde", {"batch.kubernetes.io/job-name": f"{name}-a1"}, log)
    live()
    set_rayjob_status(cluster, f"{name}-a1", "Failed", "FAILED", reason="AppFailed", message="boom")
    wait_for(lambda: cluster.get(RAYJOBS, "ml", f"{name}-a2"), what="attempt 2")
    wait_for(lambda: cluster.get(PODS, "ml", f"{name}-a1-abcde") is None, what="attempt 1's pods gone")
    return f"s3://{s3.bucket}/runs/{name}/logs/attempt-1/"


def test_logs_reach_the_terminal_without_control_sequences(
    stack: tuple[EmulatorThread, dict[str, str]], s3: SeaweedS3, tmp_path: Path
) -> None:
    """A job's log is its container's to write: the terminal escapes in it (colours, a window title, an OSC 52
    clipboard write, a cursor move that overwrites a line) are not printed, live or from the copies."""
    cluster, env = stack
    driver = tmp_path / "driver.log"
    driver.write_bytes(HOSTILE_LOG)

    def live() -> None:
        shown = subprocess.run([str(BIN / "cpt"), "logs", "escapes"], env=env, capture_output=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.decode() == HOSTILE_SHOWN

    logs_uri = failed_attempt(cluster, s3, "escapes", driver, live)
    copied = cli(env, "logs", "escapes", "--attempt", "1")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout == HOSTILE_SHOWN and f"its logs as copied to {logs_uri}" in copied.stderr
    assert "\x1b" not in copied.stdout + copied.stderr


def test_copied_logs_are_read_with_the_jobs_secret_never_with_the_callers_credentials(
    stack: tuple[EmulatorThread, dict[str, str]], s3: SeaweedS3, tmp_path: Path
) -> None:
    """Copied logs are read with the job's own Secret. A user who may not read it gets one line saying so and
    where the logs are -- the AWS credentials in their own environment go to the job's endpoint only when they
    pass --my-credentials."""
    cluster, env = stack
    driver = tmp_path / "driver.log"
    driver.write_text("step 1 loss 7.6\n")
    logs_uri = failed_attempt(cluster, s3, "guarded", driver, lambda: None)

    # This user may not get Secrets in ml, and has working S3 credentials of their own in the environment.
    mine = {**env, **s3.env()}
    cluster.emulator.forbidden["t"] = {("", "secrets", "get")}
    try:
        denied = cli(mine, "logs", "guarded", "--attempt", "1")
        assert denied.returncode == 1 and denied.stdout == ""
        assert denied.stderr == (
            'error: cannot read Secret "s3-credentials" (spec.storage.credentialsSecret of cptjob guarded) in '
            'namespace "ml": you may not read it (the API server answered 403); attempt 1\'s copied logs are at '
            f"{logs_uri} (pass --my-credentials to read them with your own AWS credentials)\n"
        )
        asked = cli(mine, "logs", "guarded", "--attempt", "1", "--my-credentials")
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout == "step 1 loss 7.6\n"
    finally:
        cluster.emulator.forbidden.pop("t")
    assert cli(env, "logs", "guarded", "--attempt", "1").stdout == "step 1 loss 7.6\n"  # allowed: the job's Secret

    # A job that names no Secret: nothing to read the copies with but the caller's own, so only when asked.
    # (spec.storage is fixed while an attempt runs: suspend first, as the API server's message says.)
    cluster.patch(CPTJOBS, "ml", "guarded", {"spec": {"runPolicy": {"suspend": True}}})
    wait_for(
        lambda: (cluster.get(CPTJOBS, "ml", "guarded") or {}).get("status", {}).get("phase") == "Suspended",
        what="suspended",
    )
    cluster.patch(CPTJOBS, "ml", "guarded", {"spec": {"storage": {"credentialsSecret": None}}})
    unnamed = cli(mine, "logs", "guarded", "--attempt", "1")
    assert unnamed.returncode == 1 and unnamed.stdout == ""
    assert unnamed.stderr.startswith("error: cptjob guarded names no spec.storage.credentialsSecret")
    assert logs_uri in unnamed.stderr and len(unnamed.stderr.splitlines()) == 1
