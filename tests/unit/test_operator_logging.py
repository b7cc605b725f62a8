"""`cpt operator --log-format json`: one JSON object per line on stderr (kopf's formatter)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from cpt_operator.controller.app import configure_logging
from cpt_operator.controller.settings import OperatorSettings


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_are_one_object_per_line(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    logging.getLogger("cpt_operator.controller.handlers").warning("ml/legal: reconciliation failed: %s", "boom")
    logging.getLogger("botocore").info("chatter that stays out")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "ml/legal: reconciliation failed: boom"
    assert record["severity"] == "warn" and "timestamp" in record


def test_the_format_is_a_flag_and_an_environment_variable() -> None:
    assert OperatorSettings.from_env({"CPT_OPERATOR_LOG_FORMAT": "json"}).log_format == "json"
    assert OperatorSettings.from_env({}).log_format == "text"
    from cpt_operator.cli.operator import operator

    result = CliRunner().invoke(operator, ["--log-format", "xml"])
    assert result.exit_code == 2 and "'xml' is not one of 'text', 'json'" in result.output
