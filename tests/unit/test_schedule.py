"""Learning-rate schedules."""

from __future__ import annotations

import itertools

import pytest
from cpt_core.api.v1alpha1 import Schedule
from cpt_trainer.plan.schedule import lr_at


def lrs(kind: str, total: int = 100, **kw: float) -> list[float]:
    schedule = Schedule.model_validate({"type": kind, **kw})
    return [lr_at(s, total, 1.0, schedule) for s in range(total)]


def test_warmup_is_linear_to_the_peak() -> None:
    values = lrs("cosine", warmupSteps=10)
    assert values[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])


def test_cosine_decays_monotonically_to_the_floor() -> None:
    values = lrs("cosine", warmupSteps=5, minLrRatio=0.1)
    tail = values[5:]
    assert tail[0] == pytest.approx(1.0) and tail[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(tail))


def test_wsd_is_stable_then_decays_over_the_last_fraction() -> None:
    values = lrs("wsd", warmupSteps=5, decayFraction=0.2, minLrRatio=0.0)
    assert values[5:80] == pytest.approx([1.0] * 75)
    assert values[80] < 1.0 and values[-1] == pytest.approx(0.0)


def test_constant_after_warmup() -> None:
    assert lrs("constant", warmupSteps=3)[3:] == pytest.approx([1.0] * 97)


def test_tiny_runs_do_not_divide_by_zero() -> None:
    for kind in ("cosine", "wsd", "constant"):
        assert len(lrs(kind, total=1, warmupSteps=5)) == 1
