"""Checkpoints under `<checkpoint.uri>/step-XXXXXXXX/`, committed by a marker written last.

Protocol (every rank takes part; rank 0 commits):

1. every rank saves its DeepSpeed shards to a local temp dir (the only training stall), then
   uploads them in a background thread while training continues;
2. each step the ranks agree (one tiny all-reduce) whether every upload has finished;
3. then rank 0 checks the fence, writes `trainer_state.json`, then `MANIFEST.json` (every file
   of the checkpoint with its size and SHA-256, hashed by the rank that wrote it before upload),
   and writes `COMMITTED` last (it names the manifest's SHA-256).

A checkpoint without `COMMITTED` is never resumed from (it is ignored with a log line), so a
crash at any point leaves the previous committed checkpoint as the resume point. A committed
checkpoint is verified against its manifest before it is used (see resume.py): a damaged one is
skipped with a warning and moved aside under `_damaged/`, and the run resumes from the newest good
one. Retention (`keepLast`) deletes a checkpoint's marker before its files, never touches the
newest committed one, and never looks below `_damaged/`.

Fencing: `_status/fence.json` names the newest attempt. An attempt refuses to start below it,
and never commits a checkpoint (or writes progress) once a newer attempt has taken over.
Identity: `_status/run.json` names the job that owns the directory; another job's run is never
picked up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_core.api.v1alpha1.status import CheckpointRef
from cpt_core.contract import layout
from cpt_core.contract.clock import now
from cpt_core.contract.reasons import Reason
from cpt_core.storage import Location, NotFound, Storage, parse_uri
from cpt_core.storage.digest import digest_dir, sha256_bytes
from cpt_core.storage.keys import key_problem

from cpt_trainer.checkpoint.loading import UnsafeCheckpointFile

log = logging.getLogger(__name__)


class FencedOut(RuntimeError):
    """A newer attempt owns the run directory; this attempt must stop without writing."""

    reason = Reason.FencedOut


class CheckpointDamaged(RuntimeError):
    """A committed checkpoint that does not verify (a file missing, cut short, or not what was written)."""

    reason = Reason.CheckpointDamaged

    def __init__(self, message: str, step: int = 0, file: str = "") -> None:
        super().__init__(message)
        self.step, self.file = step, file


class CheckpointUnloadable(RuntimeError):
    """A checkpoint that passed verification but that DeepSpeed cannot load (a version or model change)."""

    reason = Reason.CheckpointUnloadable


class IdentityMismatch(RuntimeError):
    """The run directory belongs to another job."""

    reason = Reason.CheckpointOwnedByAnotherJob


@dataclass
class Committed:
    """A committed checkpoint and its trainer state."""

    step: int
    location: Location
    state: dict[str, Any]
    files: dict[str, dict[str, Any]] | None = None
    """Its manifest: relative name -> {size, sha256} (None for checkpoints written before manifests)."""

    @property
    def world(self) -> int:
        """How many training processes wrote it."""
        return int(self.state.get("world", 1))

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
    """The stall: the loop waited this long (a snapshot to host memory)."""
    write_seconds: float = 0.0
    """Serialising the snapshot to local disk, in the background."""
    files: dict[str, dict[str, Any]] | None = None


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
        return self.run.join(layout.step_dir(step))

    # -- discovery ------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps that have a checkpoint directory (committed or not)."""
        out = []
        for name in self.storage.list_dirs(self.run):
            match = layout.STEP_DIR.match(name)
            if match:
                out.append(int(match.group(1)))
        return sorted(out)

    def committed_steps(self) -> list[int]:
        committed = []
        for step in self.steps():
            if self.storage.exists(self.step_location(step).join(layout.COMMITTED)):
                committed.append(step)
            else:
                log.info("ignoring %s: no %s marker (an interrupted save)", self.step_location(step), layout.COMMITTED)
        return committed

    def latest_committed(self) -> Committed | None:
        """The newest committed checkpoint that verifies against its manifest, or None for a fresh run.

        Damaged ones are skipped with a warning (training uses `resume.find_resume_point`, which also
        checks every rank's shards and moves damaged checkpoints aside).
        """
        for step in reversed(self.committed_steps()):
            try:
                return self.verify(step)
            except CheckpointDamaged as exc:
                log.warning("%s; skipping it", exc)
        return None

    def listing(self, location: Location) -> dict[str, int]:
        """{relative name: size} of every object below a checkpoint directory."""
        return {o.location.key[len(location.key) :]: o.size for o in self.storage.list_objects(location)}

    def verify(self, step: int) -> Committed:
        """The committed checkpoint of `step`, checked against its manifest before anything is read as good.

        Checks the marker, the manifest's checksum (named in the marker), that every file the manifest
        lists is present with its size, and the trainer state's checksum. The shards' own checksums are
        checked by each rank as it downloads them (resume.py). Raises `CheckpointDamaged` naming the file.
        """
        location = self.step_location(step)

        def damaged(name: str, why: str) -> CheckpointDamaged:
            return CheckpointDamaged(f"checkpoint {location} is damaged: {name} {why}", step=step, file=name)

        try:
            marker = json.loads(self.storage.read_text(location.join(layout.COMMITTED)))
            listing = self.listing(location)
            raw_manifest = (
                self.storage.read_bytes(location.join(layout.MANIFEST)) if layout.MANIFEST in listing else None
            )
            raw_state = (
                self.storage.read_bytes(location.join(layout.TRAINER_STATE))
                if layout.TRAINER_STATE in listing
                else None
            )
        except (ValueError, NotFound) as exc:
            raise damaged(layout.COMMITTED, f"cannot be read ({exc})") from None
        expected = marker.get("manifestSha256") if isinstance(marker, dict) else None
        files: dict[str, dict[str, Any]] | None = None
        if raw_manifest is not None:
            if expected and sha256_bytes(raw_manifest) != expected:
                raise damaged(layout.MANIFEST, "does not match the checksum recorded in COMMITTED")
            try:
                files = dict(json.loads(raw_manifest)["files"])
            except (ValueError, KeyError, TypeError):
                raise damaged(layout.MANIFEST, "does not parse") from None
            for name, entry in sorted(files.items()):
                problem = key_problem(name)
                if problem is not None:  # written by whoever can write the prefix: never a path to follow
                    raise damaged(name, f"is not a name inside the checkpoint: {problem}")
                if name not in listing:
                    raise damaged(name, "is missing")
                if listing[name] != entry["size"]:
                    raise damaged(name, f"is {listing[name]} bytes, the manifest records {entry['size']}")
        elif expected:
            raise damaged(layout.MANIFEST, "is missing")
        if raw_state is None:
            raise damaged(layout.TRAINER_STATE, "is missing")
        if files is not None and sha256_bytes(raw_state) != files[layout.TRAINER_STATE]["sha256"]:
            raise damaged(layout.TRAINER_STATE, "does not match its checksum in the manifest")
        try:
            state = json.loads(raw_state)
        except ValueError as exc:
            raise damaged(layout.TRAINER_STATE, f"does not parse ({exc})") from None
        checkpoint = Committed(step, location, state, files)
        if files is None:
            # Written before manifests: at least every rank's own files must be there.
            for rank in range(checkpoint.world):
                for name in (
                    layout.rank_state(rank),
                    f"{layout.ENGINE_TAG}/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                ):
                    if name not in listing:
                        raise damaged(name, "is missing")
        return checkpoint

    # -- identity and fencing ---------------------------------------------------------------

    def claim(self, job: str, uid: str | None, attempt: int) -> None:
        """Rank 0, at start: check the directory belongs to this job and fence older attempts.

        The owner is the job *name*: a CPTJob deleted and applied again (a new uid) adopts the run of
        its predecessor and resumes from its checkpoints -- the way to continue a failed job. A job
        with another name never does. Fencing is per incarnation: a new uid supersedes every attempt
        of the old one, so a zombie of the deleted job can no longer write.
        """
        run_file = self.run.join(layout.RUN)
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
        self.storage.write_text(
            self.run.join(layout.FENCE), json.dumps({"attempt": attempt, "uid": uid, "since": now()})
        )

    def _fence(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.storage.read_text(self.run.join(layout.FENCE))))
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
        engine.save_checkpoint(str(local), tag=layout.ENGINE_TAG, client_state={})
        torch.save(rank_state, local / layout.rank_state(self.rank))
        if shared_state and self.rank == 0:
            torch.save(shared_state, local / layout.SHARED_STATE)
        save_seconds = time.monotonic() - started
        target = self.step_location(step)
        pending = PendingUpload(step, local, threading.Thread(), save_seconds=save_seconds)

        def upload() -> None:
            began = time.monotonic()
            try:
                # The engine may still be serialising its snapshot (snapshot.py): wait for every byte.
                flush = getattr(getattr(engine, "checkpoint_engine", None), "flush", None)
                if flush is not None:
                    flush()
                pending.write_seconds = time.monotonic() - began
                # Hashed here, in the background, from the very files that are uploaded: the manifest.
                pending.files = digest_dir(local)
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

    def commit(
        self,
        step: int,
        state: dict[str, Any],
        attempt: int,
        keep_last: int,
        files: dict[str, dict[str, Any]] | None = None,
    ) -> Committed:
        """Rank 0, after every rank's upload finished: state file, manifest, the COMMITTED marker, retention.

        `files` are every rank's uploaded files with their sizes and SHA-256.
        """
        self.check_fence(attempt)
        location = self.step_location(step)
        state = {**state, "step": step, "attempt": attempt, "committedAt": now(), "world": self.world}
        state_bytes = json.dumps(state, indent=2).encode()
        self.storage.write_bytes(location.join(layout.TRAINER_STATE), state_bytes)
        files = {**(files or {}), layout.TRAINER_STATE: {"size": len(state_bytes), "sha256": sha256_bytes(state_bytes)}}
        manifest = json.dumps({"step": step, "world": self.world, "files": files}, indent=1, sort_keys=True).encode()
        self.storage.write_bytes(location.join(layout.MANIFEST), manifest)
        marker = {"step": step, "attempt": attempt, "manifestSha256": sha256_bytes(manifest)}
        self.storage.write_text(location.join(layout.COMMITTED), json.dumps(marker))
        self.retain(keep_last, newest=step)
        return Committed(step, location, state, files)

    def retain(self, keep_last: int, newest: int) -> list[int]:
        """Delete committed checkpoints beyond `keep_last` and stale uncommitted ones; never `newest`."""
        committed = [s for s in self.committed_steps() if s <= newest]
        doomed = committed[: max(0, len(committed) - max(1, keep_last))]
        doomed += [s for s in self.steps() if s < newest and s not in committed]
        for step in sorted(set(doomed)):
            if step == newest:
                continue
            location = self.step_location(step)
            self.storage.delete(
                location.join(layout.COMMITTED)
            )  # first: a half-deleted checkpoint is never "committed"
            self.storage.delete_prefix(location)
        return sorted(set(doomed) - {newest})

    def set_aside(self, step: int, why: str, attempt: int) -> Location:
        """Move a damaged checkpoint out of the run, never deleting it: `_damaged/step-XXXXXXXX-<time>/`
        with a note `DAMAGED.json` saying why. Retention never looks below `_damaged/`.

        Locally one rename. On S3 the objects are copied (server side) before the originals go, the
        COMMITTED marker first, so a crash half-way leaves an uncommitted directory, never a committed one.
        """
        source = self.step_location(step)
        target = self.run.join(
            f"{layout.DAMAGED}{layout.step_dir(step).rstrip('/')}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}/"
        )
        if source.is_s3:
            for obj in self.storage.list_objects(source):
                relative = obj.location.key[len(source.key) :]
                self.storage.s3.copy(
                    {"Bucket": obj.location.bucket, "Key": obj.location.key}, target.bucket, target.join(relative).key
                )
            self.storage.delete(source.join(layout.COMMITTED))
            self.storage.delete_prefix(source)
        else:
            target.path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source.path, target.path)
        note = {"step": step, "from": str(source), "why": why, "attempt": attempt, "movedAt": now()}
        self.storage.write_text(target.join("DAMAGED.json"), json.dumps(note, indent=2))
        log.warning("moved damaged checkpoint %s to %s (kept for inspection): %s", source, target, why)
        return target

    # -- load -----------------------------------------------------------------------------

    def load(self, engine: Any, local: Path, tag: str = layout.ENGINE_TAG, universal: bool = False) -> None:
        """Load verified, downloaded shards into the engine (`universal`: a converted, resized checkpoint)."""
        # Two slips of DeepSpeed's ZeRO-3 universal load (stage3.py,
        # load_hp_checkpoint_state_from_checkpoint_dir_stage3), undone after it: it copies param group
        # 0's hyperparameters onto every group (weight decay would reach the no-decay group; the groups'
        # own settings are this engine's, so they are put back), and it gives every sub-group the same
        # `step` tensor, which Adam then increments once per sub-group (each gets its own copy back).
        groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
        if universal:
            # DeepSpeed reads this flag at load time only: set for this load, then cleared, so the
            # next save is an ordinary checkpoint of the new world size.
            engine._config.load_universal_checkpoint = True
        try:
            path, _ = engine.load_checkpoint(str(local), tag=tag, load_module_strict=True)
            if universal:
                for group, settings in zip(engine.optimizer.param_groups, groups, strict=True):
                    group.update(settings)
                inner = getattr(engine.optimizer, "optimizer", None)
                for state in getattr(inner, "state", {}).values():
                    if hasattr(state.get("step"), "clone"):
                        state["step"] = state["step"].clone()
        except UnsafeCheckpointFile as exc:  # resume.py checked every shard: only a file changed since
            raise CheckpointDamaged(
                f"the verified checkpoint in {local} is damaged: {exc}", file=exc.path.name
            ) from None
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointUnloadable(
                f"the verified checkpoint in {local} could not be loaded by DeepSpeed ({type(exc).__name__}: {first})"
            ) from exc
        finally:
            if universal:
                engine._config.load_universal_checkpoint = False
        if path is None:
            raise CheckpointUnloadable(f"DeepSpeed found no checkpoint '{tag}' in {local}")
