"""The trainer's data part: which mixture each optimizer step draws from, and where.

A job trains through stages; inside a stage the mixture can change when the forgetting watch
adapts the replay share. Each stretch of steps with one mixture is a `Segment`: its samples are
drawn by a `BlendedSampler` over the segment's weights, and the sample index restarts at the
segment's first step, so every segment gets its exact proportions from its start and a resume at
any step is a lookup (no replay of the past). The segments are this part's checkpointed state,
which is what makes a resume the same data stream -- also after adaptive changes.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cpt_core.api.v1alpha1 import SourceRole
from cpt_core.api.v1alpha1.status import MixtureChange
from cpt_core.storage import Storage

from cpt_trainer.data.loader import MicroBatch, RankLoader, build_sampler
from cpt_trainer.data.prepare import PreparedSource
from cpt_trainer.data.sampler import BlendedSampler, SamplerStateMismatch

if TYPE_CHECKING:
    from cpt_trainer.plan.stages import Stage

#: Adapted mixtures are expressed in integer weights summing to this (shares to 0.1 %).
WEIGHT_SCALE = 1000


@dataclass
class Segment:
    stage: str
    start: int  # first optimizer step index (0-based) that draws from it
    weights: dict[str, int]
    reason: str = "stage"  # "stage" (the stage's own mixture), or why the watch changed it


def replay_share(weights: dict[str, int], roles: dict[str, str]) -> float:
    total = sum(weights.values())
    replay = sum(w for name, w in weights.items() if roles.get(name) == SourceRole.replay.value)
    return replay / total if total else 0.0


def with_replay_share(weights: dict[str, int], roles: dict[str, str], share: float) -> dict[str, int]:
    """`weights` rescaled so that replay sources get `share` of the samples (pure).

    Within each group (replay, the rest) the relative weights stay; replay sources weighted 0 in
    `weights` share equally when the group had none. Integers sum to WEIGHT_SCALE (largest remainder).
    """
    names = list(roles)
    replay = [n for n in names if roles[n] == SourceRole.replay.value]
    others = [n for n in names if roles[n] != SourceRole.replay.value]
    targets: dict[str, float] = {}
    for group, total in ((replay, share * WEIGHT_SCALE), (others, (1 - share) * WEIGHT_SCALE)):
        base = {n: weights.get(n, 0) for n in group}
        mass = sum(base.values())
        if mass == 0:
            base = {n: 1 for n in group} if group is replay else base
            mass = sum(base.values())
        for n in group:
            targets[n] = total * base[n] / mass if mass else 0.0
    floors = {n: int(v) for n, v in targets.items()}
    missing = WEIGHT_SCALE - sum(floors.values())
    for n in sorted(targets, key=lambda n: targets[n] - floors[n], reverse=True)[: max(0, missing)]:
        floors[n] += 1
    return floors


class DataFeed:
    """The mixture segments of the run, the loader of the current one, and their checkpointed state."""

    def __init__(
        self,
        prepared: Sequence[PreparedSource],
        storage: Storage,
        stages: Sequence[Stage],
        *,
        seed: int,
        global_batch_rows: int,
        micro_batch_size: int,
        rank: int,
        world: int,
        allow_changes: bool,
    ) -> None:
        self.prepared = list(prepared)
        self.stages = list(stages)
        self.roles = {p.name: p.role for p in self.prepared}
        self.storage = storage
        self.seed = seed
        self.rows, self.micro_batch_size = global_batch_rows, micro_batch_size
        self.rank, self.world = rank, world
        self.allow_changes = allow_changes
        self.segments: list[Segment] = []
        self.resumed_with_changes = False
        self._changed_on_resume = False
        self.stage: Stage | None = None
        self.loader: RankLoader | None = None
        self._samplers: dict[tuple[tuple[str, int], ...], BlendedSampler] = {}

    # -- segments -------------------------------------------------------------------------

    @property
    def segment(self) -> Segment:
        return self.segments[-1]

    def _sampler(self, weights: dict[str, int]) -> BlendedSampler:
        key = tuple(sorted(weights.items()))
        if key not in self._samplers:
            self._samplers[key] = build_sampler(self.prepared, self.seed, weights)
        return self._samplers[key]

    def _open(self) -> None:
        if self.loader is not None:
            self.loader.close()
        self.loader = RankLoader(
            self.prepared,
            self._sampler(self.segment.weights),
            self.storage,
            global_batch_rows=self.rows,
            micro_batch_size=self.micro_batch_size,
            rank=self.rank,
            world=self.world,
        )

    def enter(self, stage: Stage, step: int) -> None:
        """Draw from `stage` at optimizer step index `step`: from its own mixture when it begins, or from
        where the checkpoint left it inside the stage (with allowed changes, the new plan applies from `step`)."""
        if self.stage == stage:
            return
        self.stage = stage
        if not self.segments or self.segment.stage != stage.name:
            self.segments.append(Segment(stage.name, stage.start, dict(stage.weights)))
        elif self._changed_on_resume and self.segment.weights != stage.weights:
            self.segments.append(Segment(stage.name, step, dict(stage.weights), "resumed with changes"))
        self._open()

    def change_mixture(self, step: int, weights: dict[str, int], reason: str) -> None:
        """From optimizer step index `step` on, draw from `weights` (the caller restarts its batch iterator)."""
        assert self.stage is not None
        self.segments.append(Segment(self.stage.name, step, dict(weights), reason))
        self._open()

    def batches(self, step: int) -> Generator[MicroBatch, None, None]:
        """The micro-batches of optimizer steps [step, end of the stage) of the current segment."""
        assert self.stage is not None and self.loader is not None
        start = self.segment.start
        return self.loader.iterate(step - start, self.stage.end - start)

    # -- accounting -----------------------------------------------------------------------

    def consumed_rows(self, step: int) -> dict[str, int]:
        """Rows drawn from each source by optimizer steps [0, step)."""
        out = {p.name: 0 for p in self.prepared}
        for i, seg in enumerate(self.segments):
            end = self.segments[i + 1].start if i + 1 < len(self.segments) else step
            steps = max(0, min(step, end) - seg.start)
            counts = self._sampler(seg.weights).counts(steps * self.rows)
            for p, c in zip(self.prepared, counts, strict=True):
                out[p.name] += int(c)
        return out

    @property
    def replay_share(self) -> float | None:
        return replay_share(self.segment.weights, self.roles) if self.segments else None

    def mixture_changes(self) -> list[MixtureChange]:
        return [
            MixtureChange(
                step=s.start, stage=s.stage, replay_share=round(replay_share(s.weights, self.roles), 4), reason=s.reason
            )
            for s in self.segments
            if s.reason != "stage"
        ]

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "fingerprints": {p.name: p.fingerprint for p in self.prepared},
            "segments": [asdict(s) for s in self.segments],
            "resumedWithChanges": self.resumed_with_changes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the checkpoint's data stream; refuse changed data, weights or seed unless allowed."""
        segments = [Segment(**s) for s in state["segments"]]
        planned = {stage.name: stage.weights for stage in self.stages}
        changes = []
        if state.get("seed") != self.seed:
            changes.append(f"training.seed {state.get('seed')} -> {self.seed}")
        for seg in segments:
            if seg.reason == "stage" and seg.stage in planned and planned[seg.stage] != seg.weights:
                changes.append(f"weights of stage '{seg.stage}' {seg.weights} -> {planned[seg.stage]}")
        if any(seg.stage not in planned for seg in segments):
            changes.append("the stages")
        old = state.get("fingerprints", {})
        new = {p.name: p.fingerprint for p in self.prepared}
        changed_data = sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
        if changed_data:
            changes.append(f"data of source(s) {', '.join(changed_data)}")
        if changes and not self.allow_changes:
            raise SamplerStateMismatch(
                "cannot resume: the checkpoint was written with different " + "; ".join(changes) + ". Resuming would "
                "not continue the same data stream. Start a new run (new checkpoint.uri), restore the old settings, "
                "or set spec.data.allowChangesOnResume: true to continue anyway"
            )
        if changes:
            # Allowed: the stages still planned keep their history (accounting); `enter` applies the new plan.
            segments = [seg for seg in segments if seg.stage in planned]
        self.segments = segments
        self._changed_on_resume = bool(changes)
        self.resumed_with_changes = bool(changes) or bool(state.get("resumedWithChanges"))

    def close(self) -> None:
        if self.loader is not None:
            self.loader.close()
