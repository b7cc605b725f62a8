"""The checkpointer: saves, commits and restores the run's state -- collective operations.

It gathers the trainer's `Stateful` parts (the way torchtitan's CheckpointManager does): parts
that are the same on every rank go into `trainer_state.json` under their names, rank-local parts
(RNG) into each rank's `rank_state_*.pt`, beside DeepSpeed's shards. The storage protocol
(local save, background upload, COMMITTED marker, fencing, retention) is `CheckpointStore`'s;
this class decides when the ranks agree that a checkpoint can be committed:

Parts every rank needs in full (tensors: the regularisation anchor) are saved once, by rank 0, into
`shared_state.pt`, and loaded by every rank. Every .pt file is saved as tensors and plain values and
loaded with `weights_only=True` (loading.py): a checkpoint is data, never code.

- `save(step)`: every rank saves its shards locally (the only stall) and uploads in the background;
- `poll()`: once a step, one tiny all-reduce asks whether every upload finished; then rank 0 commits;
- `finish()`: wait for the pending upload and commit it (at the end, before a new save, on failure);
  every rank's file checksums are gathered into the checkpoint's manifest;
- `restore(point)`: load a resume point that every rank verified (resume.py) into the engine and
  the parts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from cpt_core.api.v1alpha1.status import CheckpointRef, SkippedCheckpoint
from cpt_core.contract import layout

from cpt_trainer.checkpoint.loading import load_problem, safe_load
from cpt_trainer.checkpoint.store import CheckpointDamaged, CheckpointStore, Committed, FencedOut
from cpt_trainer.distributed import RunContext

if TYPE_CHECKING:
    from cpt_trainer.checkpoint.resume import ResumePoint

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
        self.resumed_from: int | None = None
        self.skipped: list[SkippedCheckpoint] = []
        self._pending_state: dict[str, Any] | None = None
        self.last_save_seconds: float | None = None
        """Local save + upload of this attempt's last checkpoint on this rank (to judge a save on interrupt)."""

    def fits_in(self, seconds: float) -> bool:
        """Whether every rank expects a save and upload to finish within `seconds` (collective).

        Judged by this attempt's last save; before the first one there is nothing to judge by and a
        save is tried (the driver still abandons it when the grace period runs out).
        """
        mine = seconds > 0 and (self.last_save_seconds is None or self.last_save_seconds <= seconds)
        return self.ctx.all_true(mine)

    def describe(self) -> str:
        """The resume point in words, for messages."""
        return f"step {self.committed.step}" if self.committed else "none yet"

    def ref(self) -> CheckpointRef | None:
        """`status.checkpoint`: the newest committed checkpoint and how this attempt resumed."""
        if self.committed is None:
            return None
        return self.committed.ref().model_copy(update={"resumed_from": self.resumed_from, "skipped": self.skipped})

    # -- restore ----------------------------------------------------------------------------

    def restore(self, engine: Any, point: ResumePoint) -> None:
        """Load a verified resume point into the engine and every part (on every rank).

        Every .pt file loads with `weights_only=True` (loading.py): nothing of the checkpoint is unpickled
        as code. A rank state that does not load so (an older format, or not written by this trainer) is
        skipped with a warning -- the run resumes without restoring the random generators; a shared state
        that does not is a damaged checkpoint (resume.py has already checked both while fetching)."""
        checkpoint = point.checkpoint
        log.info("rank %d: resuming from %s (step %d)", self.ctx.rank, checkpoint.location, checkpoint.step)
        try:
            self.store.load(engine, point.load_dir, point.tag, universal=point.universal)
            rank_state = self._rank_state(point)
            shared_file = point.local / layout.SHARED_STATE
            shared = self._shared_state(point) if shared_file.exists() else {}
        finally:
            self.ctx.barrier()  # every rank has read the node's shared conversion before it goes
            point.cleanup(self.ctx)
        for name, part in self.parts.items():
            part.load_state_dict(checkpoint.state[name])
        for name, part in self.rank_parts.items():
            if name in rank_state:
                try:
                    part.load_state_dict(rank_state[name])
                except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
                    log.warning(
                        "rank %d: %s in %s cannot be restored (%s: %s); continuing without it",
                        self.ctx.rank,
                        name,
                        layout.rank_state(self.ctx.rank),
                        type(exc).__name__,
                        exc,
                    )
            elif point.universal:
                log.info("rank %d: the checkpoint had fewer ranks, no %s state to restore", self.ctx.rank, name)
        for name, part in self.shared_parts.items():
            if name in shared:
                part.load_state_dict(shared[name])
        self.committed = checkpoint
        self.resumed_from = checkpoint.step
        self.skipped = point.skipped

    def _rank_state(self, point: ResumePoint) -> dict[str, Any]:
        path = point.rank_state
        if path is None:
            return {}
        try:
            state = safe_load(path)
        except Exception as exc:  # the RNG state is the one part a resume can go without
            log.warning(
                "rank %d: checkpoint %s: %s; resuming without restoring the random generators",
                self.ctx.rank,
                point.checkpoint.location,
                load_problem(path, exc),
            )
            return {}
        if not isinstance(state, dict):
            log.warning(
                "rank %d: checkpoint %s: %s holds a %s, not this trainer's rank state; resuming without restoring "
                "the random generators",
                self.ctx.rank,
                point.checkpoint.location,
                path.name,
                type(state).__name__,
            )
            return {}
        return state

    def _shared_state(self, point: ResumePoint) -> dict[str, Any]:
        path = point.local / layout.SHARED_STATE
        checkpoint = point.checkpoint
        try:
            state = safe_load(path)
        except Exception as exc:
            raise CheckpointDamaged(
                f"checkpoint {checkpoint.location} is damaged: {load_problem(path, exc)}",
                step=checkpoint.step,
                file=layout.SHARED_STATE,
            ) from None
        if not isinstance(state, dict):
            raise CheckpointDamaged(
                f"checkpoint {checkpoint.location} is damaged: {layout.SHARED_STATE} holds a {type(state).__name__}",
                step=checkpoint.step,
                file=layout.SHARED_STATE,
            )
        return state

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
        if upload is not None:
            self.last_save_seconds = upload.save_seconds + upload.seconds
        # Every rank's uploaded files with their checksums, for the manifest (also the barrier before commit).
        files: dict[str, Any] = {}
        for rank_files in reversed(self.ctx.gather(upload.files if upload is not None else None)):
            files.update(rank_files or {})  # a name two ranks wrote (none today) is rank 0's
        ok = True
        if self.ctx.leader and upload is not None and self._pending_state is not None:
            try:
                self.committed = self.store.commit(
                    upload.step, self._pending_state, self.ctx.attempt, self.keep_last, files
                )
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


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
