"""BlendedSampler: global sample index -> (source, row), exact, seeded and O(1) to resume.

**Mixture.** Sources are interleaved with the greedy largest-deficit rule (Megatron's blend,
also known as smooth weighted round-robin): sample n goes to the source whose count lags its
share `w_i / W` the most. For every prefix of N samples each source's count stays within 1 of
`share x N` -- exact even at 95/4/1. With integer weights reduced by their gcd, the sequence
is periodic with period W = sum(weights): after W samples every deficit is back to zero. So
one period is built once (W entries) and sample n is `period[n mod W]` plus `n div W` whole
periods -- O(1) for n = 10^3 and n = 10^9 alike.

**Within a source.** The k-th draw from source s is row `perm_{seed,s,epoch}(k mod rows)` in
epoch `k div rows`: every row once per pass, a fresh seeded shuffle each pass (small sources
are re-used, large ones never repeat before they are exhausted). The permutation is a
Feistel network with cycle-walking: a bijection on [0, rows) evaluated per index, with no
table to build or store.

**State** is a few numbers (consumed samples, seed, weights, per-source fingerprints); a rank
computes its own indices from (step, rank, world) without touching other ranks' data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cpt_core.contract.reasons import Reason

MAX_PERIOD = 1_000_000
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class SamplerStateMismatch(ValueError):
    """A checkpoint's sampler state does not match the current data, weights or seed."""

    reason = Reason.ResumeMismatch


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class FeistelPermutation:
    """A seeded bijection on [0, n), evaluated index by index (vectorised)."""

    ROUNDS = 4

    def __init__(self, n: int, key: bytes) -> None:
        if n <= 0:
            raise ValueError("permutation size must be positive")
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        digest = hashlib.blake2b(key, digest_size=8 * self.ROUNDS).digest()
        self.keys = [np.uint64(int.from_bytes(digest[8 * i : 8 * i + 8], "little")) for i in range(self.ROUNDS)]

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ (_splitmix(right ^ key) & self.mask)
        return (left << self.half) | right

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        x = np.asarray(index, dtype=np.uint64)
        if np.any(x >= self.n):
            raise IndexError("index outside the permutation's domain")
        if self.n == 1:
            return np.zeros_like(x, dtype=np.int64)
        y = self._encrypt(x)
        outside = y >= self.n
        while np.any(outside):  # cycle-walking: the domain is < 4n, so this ends fast
            y[outside] = self._encrypt(y[outside])
            outside = y >= self.n
        return y.astype(np.int64)


def reduced_weights(weights: Sequence[int]) -> list[int]:
    """Weights divided by their gcd (zero weights stay zero)."""
    positive = [w for w in weights if w > 0]
    if not positive:
        raise ValueError("at least one source needs weight > 0")
    g = math.gcd(*positive)
    return [w // g for w in weights]


def mixture_period(weights: Sequence[int]) -> np.ndarray:
    """One period of the largest-deficit interleaving: the source of each of W samples."""
    w = reduced_weights(weights)
    total = sum(w)
    if total > MAX_PERIOD:
        raise ValueError(
            f"weights too fine-grained: sum/gcd = {total} > {MAX_PERIOD}; use smaller integers (e.g. percentages)"
        )
    current = [0] * len(w)
    out = np.empty(total, dtype=np.int32)
    for n in range(total):
        best = 0
        for i, wi in enumerate(w):
            current[i] += wi
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out[n] = best
    return out


@dataclass(frozen=True)
class SourceInfo:
    """What the sampler needs to know about a source."""

    name: str
    weight: int
    rows: int
    fingerprint: str


class BlendedSampler:
    """Deterministic mapping from a global sample index to (source index, row)."""

    def __init__(self, sources: Sequence[SourceInfo], seed: int) -> None:
        self.sources = list(sources)
        self.seed = seed
        for s in self.sources:
            if s.weight > 0 and s.rows <= 0:
                raise ValueError(f"source '{s.name}' has weight {s.weight} but no training rows")
        self.weights = reduced_weights([s.weight for s in self.sources])
        self.period_sources = mixture_period(self.weights)
        self.period = len(self.period_sources)
        # ordinal[j]: how many earlier samples of the period went to the same source as sample j.
        self.ordinal = np.zeros(self.period, dtype=np.int64)
        seen = np.zeros(len(self.sources), dtype=np.int64)
        for j, s in enumerate(self.period_sources.tolist()):
            self.ordinal[j] = seen[s]
            seen[s] += 1
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}
        self.consumed_samples = 0
        self.resumed_with_changes = False

    def _perm(self, source: int, epoch: int) -> FeistelPermutation:
        perm = self._perms.get((source, epoch))
        if perm is None:
            if len(self._perms) > 256:
                self._perms.clear()
            key = f"{self.seed}\0{self.sources[source].fingerprint}\0{source}\0{epoch}".encode()
            perm = FeistelPermutation(self.sources[source].rows, key)
            self._perms[(source, epoch)] = perm
        return perm

    def lookup(self, indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(source index, row) for each global sample index."""
        n = np.asarray(indices, dtype=np.int64)
        cycle, offset = np.divmod(n, self.period)
        src = self.period_sources[offset].astype(np.int64)
        weights = np.asarray(self.weights, dtype=np.int64)
        draw = cycle * weights[src] + self.ordinal[offset]  # k: the draw number within its source
        rows = np.empty_like(n)
        for s in np.unique(src).tolist():
            sel = src == s
            epoch, position = np.divmod(draw[sel], self.sources[s].rows)
            out = np.empty(int(sel.sum()), dtype=np.int64)
            for e in np.unique(epoch).tolist():
                pick = epoch == e
                out[pick] = self._perm(s, e)(position[pick])
            rows[sel] = out
        return src, rows

    def counts(self, samples: int) -> np.ndarray:
        """Samples drawn from each source among the first `samples` global samples."""
        cycle, offset = divmod(samples, self.period)
        partial = np.bincount(self.period_sources[:offset], minlength=len(self.sources))
        return cycle * np.asarray(self.weights, dtype=np.int64) + partial

    @staticmethod
    def rank_indices(step: int, rank: int, world: int, global_batch: int) -> np.ndarray:
        """The global sample indices rank `rank` of `world` trains on at optimizer step `step`."""
        if global_batch % world:
            raise ValueError(f"global batch of {global_batch} rows does not divide over {world} workers")
        per_rank = global_batch // world
        start = step * global_batch + rank * per_rank
        return np.arange(start, start + per_rank, dtype=np.int64)

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumedSamples": int(self.consumed_samples),
            "seed": self.seed,
            "weights": {s.name: s.weight for s in self.sources},
            "fingerprints": {s.name: s.fingerprint for s in self.sources},
            "resumedWithChanges": self.resumed_with_changes,
        }

    def load_state_dict(self, state: dict[str, Any], allow_changes: bool = False) -> None:
        """Resume at the checkpoint's sample count; refuse changed data, weights or seed unless allowed."""
        changes = []
        if state.get("seed") != self.seed:
            changes.append(f"training.seed {state.get('seed')} -> {self.seed}")
        old_weights = state.get("weights", {})
        new_weights = {s.name: s.weight for s in self.sources}
        if old_weights != new_weights:
            changes.append(f"weights {old_weights} -> {new_weights}")
        old_fp = state.get("fingerprints", {})
        changed_data = sorted(
            name for name in set(old_fp) | {s.name for s in self.sources} if old_fp.get(name) != self._fingerprint(name)
        )
        if changed_data:
            changes.append(f"data of source(s) {', '.join(changed_data)}")
        if changes and not allow_changes:
            raise SamplerStateMismatch(
                "cannot resume: the checkpoint was written with different " + "; ".join(changes) + ". Resuming would "
                "not continue the same data stream. Start a new run (new checkpoint.uri), restore the old settings, "
                "or set spec.data.allowChangesOnResume: true to continue anyway"
            )
        self.consumed_samples = int(state["consumedSamples"])
        self.resumed_with_changes = bool(changes) or bool(state.get("resumedWithChanges"))

    def _fingerprint(self, name: str) -> str | None:
        return next((s.fingerprint for s in self.sources if s.name == name), None)
