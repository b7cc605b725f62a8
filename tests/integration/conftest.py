"""The real servers and processes integration tests run against, started by fixtures.

Real components only: the `s3` fixture starts a SeaweedFS server; when it cannot start, the tests that
use it fail with the server's log (they never skip or pass silently); `verbatim_s3` puts a front before it
that keeps keys verbatim as AWS S3 does, to plant the keys SeaweedFS refuses. `cluster` is the faithful
Kubernetes API emulator (one per test module), `operator_factory` the real operator (kopf) on a thread
against it, `trainer_factory` the real Trainer (DeepSpeed on CPU) in this process.

The trainer's frameworks are imported inside the fixtures that need them: the operator's tests run
where torch and Ray are not installed (`make py310`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import kopf
import pytest
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.settings import OperatorSettings

from devkit.cluster import start_cluster, upload_example_data
from devkit.k8s_emulator import EmulatorThread
from devkit.seaweed import SeaweedS3
from tests.support.operator_runner import OperatorFactory, OperatorThread
from tests.support.verbatim_s3 import VerbatimS3

if TYPE_CHECKING:
    from tests.support.trainer_runs import TrainerFactory

# What the operator tests run with unless a module says otherwise: fast polls and preflight retries,
# no metrics or health server (port 0), a trainer image that is never pulled, and the admin policy's
# defaults except that endpoints on 127.0.0.1 are allowed by name -- SeaweedFS and the tests' misbehaving
# endpoints listen there, as an admin allows an in-cluster MinIO.
OPERATOR_DEFAULTS: dict[str, Any] = {
    "poll_seconds": 0.5,
    "metrics_port": 0,
    "health_port": 0,
    "preflight_backoff_seconds": 0.5,
    "preflight_backoff_max_seconds": 2,
    "trainer_image": "cpt-trainer:test",
    "policy": {"storage": {"privateEndpoints": ["127.0.0.1:*"]}},
}


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A real SeaweedFS S3 server on 127.0.0.1 with one bucket and random credentials."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()  # raises with the server log if it does not come up: tests fail, not skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """The S3 server's endpoint and credentials in this process's environment."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture
def verbatim_s3(s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[VerbatimS3]:
    """The S3 server behind a front that keeps every key verbatim, as AWS S3 does (SeaweedFS refuses `.` and
    `..` segments and collapses `//`; tests/support/verbatim_s3.py), with this process's environment pointing
    at the front. `plant(key, data)` stores a key that SeaweedFS would not keep."""
    front = VerbatimS3(s3_env.port, s3_env.bucket).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", front.endpoint)
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmulatorThread]:
    """The Kubernetes API emulator with the CPTJob and KubeRay CRDs, one per test module."""
    emulator = start_cluster()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def operator_factory(cluster: EmulatorThread, s3: SeaweedS3) -> Iterator[OperatorFactory]:
    """Starts the real operator against this module's `cluster`, with OPERATOR_DEFAULTS updated by the
    keyword arguments (OperatorSettings fields) and, if given, the Metrics it exports. The example data
    is on S3 (s3://<bucket>/data/) before it starts. At the end of the module every operator it started
    is stopped, and must have stopped without an error."""
    upload_example_data(s3)
    started: list[OperatorThread] = []

    def start(metrics: Metrics | None = None, **overrides: Any) -> OperatorThread:
        settings = OperatorSettings(**{**OPERATOR_DEFAULTS, **overrides})
        thread = OperatorThread(settings, login=kopf.ConnectionInfo(server=cluster.url), metrics=metrics)
        started.append(thread)
        return thread.start()

    yield start
    for thread in started:
        thread.stop()
    for thread in started:
        assert thread.error is None, thread.error


@pytest.fixture(scope="module")
def process_group() -> None:
    """The one-process torch.distributed group (gloo on CPU) the Trainer needs outside Ray and torchrun.
    Once made it stays for the rest of the session (a second call is a no-op)."""
    from cpt_trainer.distributed import init_distributed_single_process

    init_distributed_single_process()


@pytest.fixture(scope="module")
def trainer_factory(process_group: None) -> TrainerFactory:
    """`make_trainer` of tests/support/trainer_runs.py once the process group exists: a set-up Trainer for a
    spec (see `spec_for` there), with its attempt, job name and hooks."""
    from tests.support.trainer_runs import make_trainer

    return make_trainer
