"""Shared fixtures. Tiers follow the directory: tests/unit, tests/integration, tests/e2e.

Real components only: the `s3` fixture starts a SeaweedFS server; when it cannot start, the
tests that use it fail with the server's log (they never skip or pass silently).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Local Ray stays on loopback, without telemetry or auth; nothing reaches for a hub.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from devkit.seaweed import SeaweedS3  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


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
