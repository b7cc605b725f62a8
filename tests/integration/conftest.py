"""The real servers integration tests run against, started by fixtures.

Real components only: the `s3` fixture starts a SeaweedFS server; when it cannot start, the tests that
use it fail with the server's log (they never skip or pass silently).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devkit.seaweed import SeaweedS3


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
