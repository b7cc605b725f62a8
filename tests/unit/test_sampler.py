"""BlendedSampler: exact proportions, O(1) resume, epochs, rank slices, state checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from cpt_trainer.data.sampler import (
    BlendedSampler,
    FeistelPermutation,
    SamplerStateMismatch,
    SourceInfo,
    mixture_period,
)


def sampler(weights: list[int], rows: list[int] | None = None, seed: int = 7) -> BlendedSampler:
    rows = rows or [1000] * len(weights)
    return BlendedSampler(
        [SourceInfo(f"s{i}", w, r, f"fp{i}") for i, (w, r) in enumerate(zip(weights, rows, strict=True))], seed
    )


def max_prefix_error(s: BlendedSampler, n: int) -> float:
    src, _ = s.lookup(np.arange(n))
    weights = np.asarray([x.weight for x in s.sources], dtype=np.float64)
    share = weights / weights.sum()
    worst = 0.0
    for i in range(len(weights)):
        counts = np.cumsum(src == i)
        expected = share[i] * np.arange(1, n + 1)
        worst = max(worst, float(np.abs(counts - expected).max()))
    return worst


@pytest.mark.parametrize("weights", [[95, 4, 1], [90, 8, 2], [1, 1], [3, 7, 11, 13], [999, 1], [50, 0, 50]])
def test_every_prefix_is_within_one_sample_of_its_share(weights: list[int]) -> None:
    assert max_prefix_error(sampler(weights), 200_000) <= 1.0


def test_95_4_1_over_a_million_prefixes() -> None:
    assert max_prefix_error(sampler([95, 4, 1]), 1_000_000) <= 1.0


def test_zero_weight_sources_are_never_drawn() -> None:
    src, _ = sampler([3, 0, 1]).lookup(np.arange(10_000))
    assert not (src == 1).any()


def test_period_is_exact_and_reduced_by_gcd() -> None:
    period = mixture_period([90, 8, 2])
    assert len(period) == 50
    assert np.bincount(period).tolist() == [45, 4, 1]


def test_counts_match_lookup() -> None:
    s = sampler([95, 4, 1])
    src, _ = s.lookup(np.arange(12_345))
    assert s.counts(12_345).tolist() == np.bincount(src, minlength=3).tolist()


def test_feistel_is_a_bijection() -> None:
    for n in (1, 2, 3, 7, 100, 1023, 1024, 1025, 50_000):
        perm = FeistelPermutation(n, b"key")(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    a = FeistelPermutation(1000, b"a")(np.arange(1000))
    b = FeistelPermutation(1000, b"b")(np.arange(1000))
    assert (a != b).mean() > 0.9  # different keys, different orders


def test_small_sources_repeat_with_a_fresh_shuffle_per_epoch() -> None:
    s = sampler([1, 1], rows=[10, 10_000])
    src, rows = s.lookup(np.arange(60))
    small = rows[src == 0]  # 30 draws from a 10-row source: 3 epochs
    epochs = [small[i * 10 : (i + 1) * 10].tolist() for i in range(3)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    large = rows[src == 1]
    assert len(set(large.tolist())) == len(large)  # never repeated before exhausted


def test_restored_sampler_yields_exactly_the_uninterrupted_stream() -> None:
    reference = sampler([95, 4, 1], rows=[5000, 300, 17])
    full_src, full_rows = reference.lookup(np.arange(20_000))
    resumed = sampler([95, 4, 1], rows=[5000, 300, 17])
    resumed.load_state_dict({**reference.state_dict(), "consumedSamples": 12_000})
    assert resumed.consumed_samples == 12_000
    src, rows = resumed.lookup(np.arange(12_000, 20_000))
    assert (src == full_src[12_000:]).all() and (rows == full_rows[12_000:]).all()


def test_positioning_cost_does_not_grow_with_the_sample_index() -> None:
    s = sampler([95, 4, 1], rows=[10**7, 10**6, 10**5])
    timings = {}
    for start in (10**3, 10**9):
        s.lookup(np.arange(start, start + 8))  # warm the permutation cache of this epoch
        began = time.perf_counter()
        for _ in range(50):
            s.lookup(np.arange(start, start + 8))
        timings[start] = (time.perf_counter() - began) / 50
    assert timings[10**9] < 5e-3 and timings[10**3] < 5e-3
    assert timings[10**9] < 3 * timings[10**3] + 1e-4


def test_rank_slices_are_disjoint_and_cover_the_global_batch() -> None:
    world, batch = 4, 32
    for step in (0, 1, 57):
        parts = [BlendedSampler.rank_indices(step, r, world, batch) for r in range(world)]
        merged = np.concatenate(parts)
        assert sorted(merged.tolist()) == list(range(step * batch, (step + 1) * batch))
    with pytest.raises(ValueError, match="does not divide"):
        BlendedSampler.rank_indices(0, 0, 3, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda st: st.update(seed=8), "training.seed 8 -> 7"),
        (lambda st: st["weights"].update(s0=90), "weights"),
        (lambda st: st["fingerprints"].update(s1="other"), "data of source(s) s1"),
    ],
)
def test_resuming_with_changed_mixture_is_refused_unless_allowed(change, message: str) -> None:
    state = sampler([95, 4, 1]).state_dict()
    state["consumedSamples"] = 500
    change(state)
    fresh = sampler([95, 4, 1])
    with pytest.raises(SamplerStateMismatch, match="allowChangesOnResume") as info:
        fresh.load_state_dict(state)
    assert message in str(info.value)
    fresh.load_state_dict(state, allow_changes=True)
    assert fresh.consumed_samples == 500 and fresh.resumed_with_changes
    assert fresh.state_dict()["resumedWithChanges"] is True


def test_too_fine_grained_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="too fine-grained"):
        mixture_period([999_983, 999_979])
