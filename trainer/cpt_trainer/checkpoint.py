"""Checkpoints under `<checkpoint.uri>/step-XXXXXXXX/`, committed by a marker written last.

Protocol (every rank takes part; rank 0 commits):

1. every rank saves its DeepSpeed shards to a local temp dir (the only training stall), then
   uploads them in a background thread while training continues;
2. each step the ranks agree (one tiny all-reduce) whether every upload has finished;
3. then rank 0 checks the fence, writes `trainer_state.json`, and writes `COMMITTED` last.

A checkpoint without `COMMITTED` is never resumed from (it is ignored with a log line), so a
crash at any point leaves the previous committed checkpoint as the resume point. Retention
(`keepLast`) deletes a checkpoint's marker before its files and never touches the newest
committed one.

Fencing: `_status/fence.json` names the newest attempt. An attempt refuses to start below it,
and never commits a checkpoint (or writes progress) once a newer attempt has taken over.
Identity: `_status/run.json` names the job that owns the directory; another job's run is never
picked up.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_core.api.progress import FENCE_PATH, RUN_PATH, CheckpointRef
from cpt_core.reasons import Reason
from cpt_core.storage import Location, NotFound, Storage, parse_uri

from .train_state import now

log = logging.getLogger(__name__)

COMMITTED = "COMMITTED"
STATE_FILE = "trainer_state.json"
SHARED_STATE = "shared_state.pt"
TAG = "ckpt"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class FencedOut(RuntimeError):
    """A newer attempt owns the run directory; this attempt must stop without writing."""

    reason = Reason.FencedOut


class IdentityMismatch(RuntimeError):
    """The run directory belongs to another job."""

    reason = Reason.CheckpointOwnedByAnotherJob


@dataclass
class Committed:
    """A committed checkpoint and its trainer state."""

    step: int
    location: Location
    state: dict[str, Any]

    def ref(self) -> CheckpointRef:
        return CheckpointRef(
            step=self.step,
            uri=str(self.location),
            time=self.state.get("committedAt"),
            attempt=int(self.state.get("attempt", 0)),
        )


@dataclass
class PendingUpload:
    step: int
    local_dir: Path
    thread: threading.Thread
    error: BaseException | None = None
    seconds: float = 0.0
    bytes: int = 0
    save_seconds: float = 0.0


class CheckpointStore:
    """The run directory: checkpoints, fence and identity. One instance per rank."""

    def __init__(self, storage: Storage, run_uri: str, rank: int = 0, world: int = 1) -> None:
        self.storage = storage
        self.run = parse_uri(run_uri).as_prefix()
        self.rank, self.world = rank, world
        self.pending: PendingUpload | None = None
        self.uid: str | None = None
        self._claimed = False

    def step_location(self, step: int) -> Location:
        return self.run.join(f"step-{step:08d}/")

    # -- discovery ------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps that have a checkpoint directory (committed or not)."""
        out = []
        for name in self.storage.list_dirs(self.run):
            match = _STEP_DIR.match(name)
            if match:
                out.append(int(match.group(1)))
        return sorted(out)

    def committed_steps(self) -> list[int]:
        committed = []
        for step in self.steps():
            if self.storage.exists(self.step_location(step).join(COMMITTED)):
                committed.append(step)
            else:
                log.info("ignoring %s: no %s marker (an interrupted save)", self.step_location(step), COMMITTED)
        return committed

    def latest_committed(self) -> Committed | None:
        """The newest committed checkpoint, or None for a fresh run."""
        steps = self.committed_steps()
        if not steps:
            return None
        location = self.step_location(steps[-1])
        state = json.loads(self.storage.read_text(location.join(STATE_FILE)))
        return Committed(steps[-1], location, state)

    # -- identity and fencing ---------------------------------------------------------------

    def claim(self, job: str, uid: str | None, attempt: int) -> None:
        """Rank 0, at start: check the directory belongs to this job and fence older attempts.

        The owner is the job *name*: a CPTJob deleted and applied again (a new uid) adopts the run of
        its predecessor and resumes from its checkpoints -- the way to continue a failed job. A job
        with another name never does. Fencing is per incarnation: a new uid supersedes every attempt
        of the old one, so a zombie of the deleted job can no longer write.
        """
        run_file = self.run.join(RUN_PATH)
        try:
            owner = json.loads(self.storage.read_text(run_file))
        except NotFound:
            owner = None
        if owner is not None and owner.get("job") != job:
            raise IdentityMismatch(
                f"checkpoint.uri {self.run} already holds the run of job '{owner.get('job')}'; a job never "
                "resumes another job's checkpoints. Use a different spec.checkpoint.uri, or delete the old run "
                "to start over"
            )
        if owner is None or (uid and owner.get("uid") != uid):
            if owner is not None:
                log.warning("job '%s' (uid %s) adopts the run of its predecessor (uid %s)", job, uid, owner.get("uid"))
            self.storage.write_text(run_file, json.dumps({"job": job, "uid": uid, "createdAt": now()}))
        self.uid, self._claimed = uid, True
        fence = self._fence()
        if fence.get("uid") == uid and int(fence.get("attempt", 0)) > attempt:
            raise FencedOut(f"attempt {attempt} is older than attempt {fence['attempt']}, which owns {self.run}")
        self.storage.write_text(self.run.join(FENCE_PATH), json.dumps({"attempt": attempt, "uid": uid, "since": now()}))

    def _fence(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.storage.read_text(self.run.join(FENCE_PATH))))
        except NotFound:
            return {}

    def fence(self) -> int:
        """The attempt number that owns the run directory (0: none yet)."""
        return int(self._fence().get("attempt", 0))

    def check_fence(self, attempt: int) -> None:
        fence = self._fence()
        newer_incarnation = self._claimed and fence.get("uid") != self.uid
        if newer_incarnation or int(fence.get("attempt", 0)) > attempt:
            raise FencedOut(
                f"attempt {fence.get('attempt')} took over {self.run}; attempt {attempt} stops without writing"
            )

    # -- save -----------------------------------------------------------------------------

    def save(
        self, engine: Any, step: int, rank_state: dict[str, Any], shared_state: dict[str, Any] | None = None
    ) -> PendingUpload:
        """Save this rank's shards locally (collective) and start uploading them in the background.

        `shared_state` (tensors every rank needs, the same on all) is written once, by rank 0."""
        import torch

        started = time.monotonic()
        local = Path(tempfile.mkdtemp(prefix=f"cpt-ckpt-{step}-r{self.rank}-"))
        engine.save_checkpoint(str(local), tag=TAG, client_state={})
        torch.save(rank_state, local / f"rank_state_{self.rank:05d}.pt")
        if shared_state and self.rank == 0:
            torch.save(shared_state, local / SHARED_STATE)
        save_seconds = time.monotonic() - started
        target = self.step_location(step)
        pending = PendingUpload(step, local, threading.Thread(), save_seconds=save_seconds)

        def upload() -> None:
            began = time.monotonic()
            try:
                pending.bytes = self.storage.upload_dir(local, target)
            except BaseException as exc:
                pending.error = exc
            pending.seconds = time.monotonic() - began

        pending.thread = threading.Thread(target=upload, name=f"cpt-upload-{step}", daemon=True)
        pending.thread.start()
        self.pending = pending
        return pending

    def upload_done(self) -> bool:
        return self.pending is None or not self.pending.thread.is_alive()

    def finish_upload(self) -> PendingUpload | None:
        """Wait for this rank's upload; raise its error. Returns the finished upload."""
        pending = self.pending
        if pending is None:
            return None
        pending.thread.join()
        shutil.rmtree(pending.local_dir, ignore_errors=True)
        if pending.error is not None:
            self.pending = None
            raise pending.error
        return pending

    def commit(self, step: int, state: dict[str, Any], attempt: int, keep_last: int) -> Committed:
        """Rank 0, after every rank's upload finished: state file, then the COMMITTED marker, then retention."""
        self.check_fence(attempt)
        location = self.step_location(step)
        state = {**state, "step": step, "attempt": attempt, "committedAt": now(), "world": self.world}
        self.storage.write_text(location.join(STATE_FILE), json.dumps(state, indent=2))
        self.storage.write_text(location.join(COMMITTED), json.dumps({"step": step, "attempt": attempt}))
        self.retain(keep_last, newest=step)
        return Committed(step, location, state)

    def retain(self, keep_last: int, newest: int) -> list[int]:
        """Delete committed checkpoints beyond `keep_last` and stale uncommitted ones; never `newest`."""
        committed = [s for s in self.committed_steps() if s <= newest]
        doomed = committed[: max(0, len(committed) - max(1, keep_last))]
        doomed += [s for s in self.steps() if s < newest and s not in committed]
        for step in sorted(set(doomed)):
            if step == newest:
                continue
            location = self.step_location(step)
            self.storage.delete(location.join(COMMITTED))  # first: a half-deleted checkpoint is never "committed"
            self.storage.delete_prefix(location)
        return sorted(set(doomed) - {newest})

    # -- load -----------------------------------------------------------------------------

    def load(self, engine: Any, checkpoint: Committed) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load this rank's shards of a committed checkpoint into the engine; returns (this rank's state,
        the shared state)."""
        import torch

        written_by = int(checkpoint.state.get("world", self.world))
        if written_by != self.world:
            raise RuntimeError(
                f"checkpoint {checkpoint.location} was written by {written_by} training processes; resuming it "
                f"needs the same number (now {self.world}): set cluster.workers x gpusPerWorker accordingly"
            )
        local = Path(tempfile.mkdtemp(prefix=f"cpt-load-r{self.rank}-"))
        try:
            mine = re.compile(rf"zero_pp_rank_{self.rank}_|/mp_rank_00_model_states\.pt$|/latest$")
            for obj in self.storage.list_objects(checkpoint.location):
                relative = obj.location.key[len(checkpoint.location.key) :]
                shared = "zero_pp_rank_" not in relative and relative.endswith(".pt") and "rank_state_" not in relative
                if mine.search("/" + relative) or shared or relative == f"rank_state_{self.rank:05d}.pt":
                    self.storage.download_file(obj.location, local / relative)
            engine.load_checkpoint(str(local), tag=TAG, load_module_strict=True)
            state_file = local / f"rank_state_{self.rank:05d}.pt"
            shared_file = local / SHARED_STATE
            rank_state = torch.load(state_file, weights_only=False) if state_file.exists() else {}
            shared = torch.load(shared_file, weights_only=False, map_location="cpu") if shared_file.exists() else {}
            return rank_state, shared
        finally:
            shutil.rmtree(local, ignore_errors=True)
