"""The checkpointer: saves, commits and restores the run's state -- collective operations.

It gathers the trainer's `Stateful` parts (the way torchtitan's CheckpointManager does): parts
that are the same on every rank go into `trainer_state.json` under their names, rank-local parts
(RNG) into each rank's `rank_state_*.pt`, beside DeepSpeed's shards. The storage protocol
(local save, background upload, COMMITTED marker, fencing, retention) is `CheckpointStore`'s;
this class decides when the ranks agree that a checkpoint can be committed:

Parts every rank needs in full (tensors: the regularisation anchor) are saved once, by rank 0, into
`shared_state.pt`, and loaded by every rank.

- `save(step)`: every rank saves its shards locally (the only stall) and uploads in the background;
- `poll()`: once a step, one tiny all-reduce asks whether every upload finished; then rank 0 commits;
- `finish()`: wait for the pending upload and commit it (at the end, before a new save, on failure).
"""

from __future__ import annotations

import logging
from typing import Any

from .checkpoint import CheckpointStore, Committed, FencedOut
from .context import RunContext
from .train_state import Stateful

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self,
        store: CheckpointStore,
        ctx: RunContext,
        keep_last: int,
        parts: dict[str, Stateful],
        rank_parts: dict[str, Stateful],
        shared_parts: dict[str, Stateful] | None = None,
    ) -> None:
        self.store, self.ctx, self.keep_last = store, ctx, keep_last
        self.parts, self.rank_parts, self.shared_parts = parts, rank_parts, dict(shared_parts or {})
        self.committed: Committed | None = None
        self._pending_state: dict[str, Any] | None = None

    def describe(self) -> str:
        """The resume point in words, for messages."""
        return f"step {self.committed.step}" if self.committed else "none yet"

    # -- restore ----------------------------------------------------------------------------

    def restore(self, engine: Any, checkpoint: Committed) -> None:
        """Load a committed checkpoint into the engine and every part (on every rank)."""
        log.info("rank %d: resuming from %s (step %d)", self.ctx.rank, checkpoint.location, checkpoint.step)
        rank_state, shared = self.store.load(engine, checkpoint)
        for name, part in self.parts.items():
            part.load_state_dict(checkpoint.state[name])
        for name, part in self.rank_parts.items():
            if name in rank_state:
                part.load_state_dict(rank_state[name])
        for name, part in self.shared_parts.items():
            if name in shared:
                part.load_state_dict(shared[name])
        self.committed = checkpoint

    # -- save and commit --------------------------------------------------------------------

    def save(self, engine: Any, step: int) -> None:
        """Save `step` (collective); the upload runs in the background."""
        self.finish()
        if self.committed is not None and self.committed.step == step:
            return
        rank_state = {name: part.state_dict() for name, part in self.rank_parts.items()}
        shared = {name: part.state_dict() for name, part in self.shared_parts.items()}
        pending = self.store.save(engine, step, rank_state, shared)
        self._pending_state = {name: part.state_dict() for name, part in self.parts.items()}
        log.info(
            "rank %d: checkpoint step %d saved locally in %.2fs (training stall)",
            self.ctx.rank,
            step,
            pending.save_seconds,
        )

    def poll(self) -> None:
        """Commit the pending checkpoint once every rank finished its upload (one all-reduce)."""
        if self.store.pending is not None and self.ctx.all_true(self.store.upload_done()):
            self.finish()

    def finish(self) -> None:
        """Wait for the pending upload on every rank, then commit it (rank 0) -- collective."""
        if self.store.pending is None:
            return
        upload = self.store.finish_upload()
        self.ctx.barrier()
        ok = True
        if self.ctx.leader and upload is not None and self._pending_state is not None:
            try:
                self.committed = self.store.commit(upload.step, self._pending_state, self.ctx.attempt, self.keep_last)
                log.info(
                    "checkpoint step %d committed: %.1f MB uploaded in %.2fs (%.1f MB/s), stall %.2fs",
                    upload.step,
                    upload.bytes / 1e6,
                    upload.seconds,
                    upload.bytes / 1e6 / max(upload.seconds, 1e-9),
                    upload.save_seconds,
                )
            except FencedOut:
                ok = False
        self.store.pending = None
        self._pending_state = None
        if not self.ctx.all_true(ok):
            raise FencedOut(f"a newer attempt took over {self.store.run}; attempt {self.ctx.attempt} stops")
        if not self.ctx.leader and upload is not None:
            self.committed = Committed(
                upload.step, self.store.step_location(upload.step), {"attempt": self.ctx.attempt}
            )
