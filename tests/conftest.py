"""What every tier needs. Tiers follow the directory: tests/unit, tests/integration, tests/e2e.

Here: the import path, the environment, the markers (the tier by directory; `trainer` from what a test
imports, see tests/support/frameworks.py) and `repo_root`. The server fixtures are in
tests/integration/conftest.py: unit tests never start a server.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from itertools import product
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

from tests.support.frameworks import file_needs, function_needs  # noqa: E402

TIERS = ("unit", "integration", "e2e")
NOT_COLLECTED = pytest.StashKey[set[Path]]()


def _tier(path: Path) -> str | None:
    try:
        parts = path.resolve().relative_to(ROOT / "tests").parts
    except ValueError:  # not under tests/
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def _deselects_trainer_tests(config: pytest.Config, tier: str | None) -> bool:
    """Whether `-m` leaves out every test marked `trainer` of this tier, whatever its other markers."""
    markexpr = config.getoption("markexpr", default="") or ""
    if not markexpr:
        return False
    try:
        from _pytest.mark.expression import Expression
    except ImportError:  # pytest moved it: collect everything (an import error then says why), never skip silently
        return False
    expression = Expression.compile(markexpr)
    fixed = {"trainer": True, **{t: t == tier for t in TIERS}}
    free = sorted(expression.idents() - set(fixed))
    for values in product((False, True), repeat=len(free)):
        marks = {**dict(zip(free, values, strict=True)), **fixed}
        if expression.evaluate(partial(_has, marks)):
            return False
    return True


def _has(marks: dict[str, bool], name: str, /, **kwargs: object) -> bool:
    return marks.get(name, False)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A test file that imports the trainer's frameworks holds only `trainer` tests: with `-m "not trainer"`
    it is not even imported (where they are not installed, importing it would fail)."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    if file_needs(collection_path) and _deselects_trainer_tests(config, _tier(collection_path)):
        asked = [Path(arg.split("::")[0]).resolve() for arg in config.args]
        if any(collection_path.resolve().is_relative_to(a) for a in asked):  # not a sibling pytest looked at
            config.stash.setdefault(NOT_COLLECTED, set()).add(collection_path)
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(Path(str(item.fspath)))
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
        if _needs_trainer(item):
            item.add_marker(pytest.mark.trainer)


def _needs_trainer(item: pytest.Item) -> bool:
    if file_needs(Path(str(item.fspath))):
        return True
    functions = [getattr(item, "function", None)]
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    functions += [definitions[-1].func for definitions in fixtures.values() if definitions]
    return any(function_needs(f) for f in functions if callable(f))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not_collected := config.stash.get(NOT_COLLECTED, set()):
        names = ", ".join(sorted(p.name for p in not_collected))
        terminalreporter.write_line(f"not collected ({len(not_collected)} files of trainer tests, -m): {names}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
