"""Finding the resume point: the newest committed checkpoint that verifies on every rank (collective).

Newest first, each committed checkpoint is

1. verified against its manifest (`CheckpointStore.verify`: marker, manifest checksum, every file
   present with its size, the trainer state's checksum);
2. fetched: every rank downloads the files it needs (each name checked to stay inside the download
   directory, `safe_join`) and checks each one's SHA-256 against the manifest (checkpoints written
   before manifests: torch's zip CRCs, via `zipfile.testzip`), then that each .pt file but its own
   rank state loads with `weights_only=True` (loading.py; read, never run: a file whose unpickling
   would call anything but the few allowed classes makes the checkpoint damaged);
3. agreed on: one gather tells every rank whether all ranks succeeded.

A checkpoint that fails anywhere is skipped with a warning naming the file and the reason, and
moved aside by rank 0 (`_damaged/`, never deleted); the next older one is tried. All of this
happens before the model is built, so a run whose every checkpoint is damaged starts from the
starting weights.

Resize: a checkpoint written by N training processes resumes with M. DeepSpeed's own universal
checkpoint conversion (`deepspeed.checkpoint.ds_to_universal`) turns the N-way ZeRO partitions
into per-parameter files, once per node (local rank 0 downloads every shard and converts into a
directory the node's ranks share), and the engine loads them with `load_universal`. The sampler
needs nothing: its position is the global sample count, the same for any number of ranks. The
conversion reads the shards with DeepSpeed's own `torch.load(weights_only=False)`, which this trainer
cannot change; what it reads are the fetched files, each of which has just loaded with
`weights_only=True`, so it unpickles nothing that a restricted load refused (and the parameter names
it turns into directories were checked as file names).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpt_core.api.v1alpha1.status import SkippedCheckpoint
from cpt_core.contract import layout
from cpt_core.storage import UnsafeKey, safe_join
from cpt_core.storage.digest import sha256_file
from cpt_core.storage.keys import key_problem

from cpt_trainer.checkpoint.loading import UnsafeCheckpointFile, first_line, safe_load
from cpt_trainer.checkpoint.store import CheckpointDamaged, CheckpointStore, Committed
from cpt_trainer.distributed import RunContext

log = logging.getLogger(__name__)

UNIVERSAL_TAG = f"{layout.ENGINE_TAG}_universal"
_ZERO_FILE = re.compile(r"zero_pp_rank_(\d+)_")


class ResizeFailed(RuntimeError):
    """DeepSpeed's universal conversion failed for this checkpoint."""


@dataclass
class ResumePoint:
    """A verified checkpoint, fetched on this rank, ready to load into the engine."""

    checkpoint: Committed
    local: Path
    """This rank's verified files."""
    load_dir: Path
    """Where the engine loads from: `local`, or the node's universal conversion after a resize."""
    tag: str = layout.ENGINE_TAG
    universal: bool = False
    skipped: list[SkippedCheckpoint] = field(default_factory=list)
    shared: Path | None = None
    """The node's conversion directory (removed by local rank 0 after loading)."""

    @property
    def rank_state(self) -> Path | None:
        return next(iter(self.local.glob(layout.RANK_STATE_GLOB)), None)

    def cleanup(self, ctx: RunContext) -> None:
        shutil.rmtree(self.local, ignore_errors=True)
        if self.shared is not None and ctx.local_rank == 0:
            shutil.rmtree(self.shared, ignore_errors=True)


def files_needed(names: list[str], rank: int, resize: bool, converter: bool) -> list[str]:
    """The files of a checkpoint one rank downloads (pure).

    Same world: its own ZeRO shards and RNG state, the shared model states and `latest`. Resize: its
    own RNG state (if the old world had its rank), and on the node's converter every shard as well.
    """
    own_state = layout.rank_state(rank)
    out = []
    for name in names:
        zero = _ZERO_FILE.search(name)
        state = layout.RANK_STATE.match(name)
        if state:
            keep = name == own_state
        elif name == layout.SHARED_STATE:
            keep = True  # tensors every rank needs whole (the regularisation anchor), written once
        elif resize:
            keep = converter and name.startswith(f"{layout.ENGINE_TAG}/")
        elif zero:
            keep = int(zero.group(1)) == rank
        else:
            keep = name.startswith(f"{layout.ENGINE_TAG}/") or name == "latest"
        if keep:
            out.append(name)
    return out


def fetch(store: CheckpointStore, checkpoint: Committed, ctx: RunContext) -> Path:
    """Download this rank's files of `checkpoint` and check each one; returns the local directory."""
    resize = checkpoint.world != ctx.world
    names = sorted(checkpoint.files) if checkpoint.files is not None else sorted(store.listing(checkpoint.location))
    wanted = files_needed(names, ctx.rank, resize, converter=ctx.local_rank == 0)
    if not resize and layout.rank_state(ctx.rank) not in wanted:
        raise CheckpointDamaged(
            f"checkpoint {checkpoint.location} is damaged: {layout.rank_state(ctx.rank)} is missing",
            step=checkpoint.step,
            file=layout.rank_state(ctx.rank),
        )
    local = Path(tempfile.mkdtemp(prefix=f"cpt-load-{checkpoint.step}-r{ctx.rank}-"))
    try:
        for name in wanted:
            try:
                target = safe_join(local, name, str(checkpoint.location.join(name)))
            except UnsafeKey as exc:
                raise CheckpointDamaged(
                    f"checkpoint {checkpoint.location} is damaged: {exc}", step=checkpoint.step, file=name
                ) from None
            store.storage.download_file(checkpoint.location.join(name), target)
            problem = _check(target, (checkpoint.files or {}).get(name))
            if problem is None and target.suffix == ".pt" and not layout.RANK_STATE.match(name):
                problem = _unpickle_problem(target)  # a rank state that does not load: restore() goes without it
            if problem:
                raise CheckpointDamaged(
                    f"checkpoint {checkpoint.location} is damaged: {name} {problem}", step=checkpoint.step, file=name
                )
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local


def _check(path: Path, recorded: dict[str, Any] | None) -> str | None:
    size = path.stat().st_size
    if recorded is not None:
        if size != recorded["size"]:
            return f"is {size} bytes, the manifest records {recorded['size']}"
        if sha256_file(path) != recorded["sha256"]:
            return "does not match its SHA-256 in the manifest"
        return None
    if path.suffix == ".pt":
        # A checkpoint from before manifests: torch.save writes a zip whose members carry CRC-32s.
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"is not a readable torch file ({exc})"
        if bad is not None:
            return f"fails its CRC check ({bad})"
    return None


def _unpickle_problem(path: Path) -> str | None:
    """Why a fetched .pt file cannot be loaded without running code from it (or converted), or None.

    The pickle is read with `weights_only=True` and the tensors memory-mapped, not read. Parameter names
    in DeepSpeed's model states become directory names in the universal conversion after a resize: one
    that is not a plain name inside its directory is refused too."""
    try:
        content = safe_load(path, mmap=True)
    except UnsafeCheckpointFile as exc:
        return exc.why
    except Exception as exc:
        return f"does not load ({type(exc).__name__}: {first_line(exc)})"
    shapes = content.get("param_shapes") if isinstance(content, dict) else None
    groups = shapes if isinstance(shapes, list) else [shapes]
    for group in groups:
        for parameter in group if isinstance(group, dict) else ():
            why = key_problem(parameter) if isinstance(parameter, str) else "it is not a string"
            if why is not None:
                return f"names a parameter {str(parameter)[:200]!r} that cannot be a file name ({why})"
    return None


def find_resume_point(store: CheckpointStore, ctx: RunContext) -> tuple[ResumePoint | None, list[SkippedCheckpoint]]:
    """The newest committed checkpoint every rank could verify and fetch (collective; see the module doc),
    and the newer ones that were skipped (moved aside by rank 0)."""
    steps: list[int] = ctx.gather(store.committed_steps() if ctx.leader else None)[0]
    skipped: list[SkippedCheckpoint] = []
    found: ResumePoint | None = None
    for step in reversed(steps):
        point, error = None, None
        try:
            checkpoint = store.verify(step)
            point = ResumePoint(checkpoint, local := fetch(store, checkpoint, ctx), load_dir=local)
        except CheckpointDamaged as exc:
            error = str(exc)
        errors = [e for e in ctx.gather(error) if e]
        if not errors:
            assert point is not None
            found = point
            break
        if point is not None:
            shutil.rmtree(point.local, ignore_errors=True)
        log.warning("rank %d: %s; trying the checkpoint before it", ctx.rank, errors[0])
        skipped.append(SkippedCheckpoint(step=step, uri=str(store.step_location(step)), reason=errors[0]))
    if ctx.leader:
        for entry in skipped:
            entry.kept_at = str(store.set_aside(entry.step, entry.reason, ctx.attempt))
    if found is None:
        if skipped:
            log.warning("no committed checkpoint could be used: starting from the starting weights")
        return None, skipped
    found.skipped = skipped
    if found.checkpoint.world != ctx.world:
        _convert_for_resize(found, ctx)
    return found, skipped


def _convert_for_resize(point: ResumePoint, ctx: RunContext) -> None:
    """Universal conversion of a checkpoint written by another number of processes, once per node."""
    checkpoint = point.checkpoint
    key = hashlib.sha256(f"{checkpoint.location}|{ctx.attempt}|{ctx.job}".encode()).hexdigest()[:12]
    shared = Path(tempfile.gettempdir()) / f"cpt-universal-{key}"
    error = None
    if ctx.local_rank == 0:
        log.info(
            "checkpoint step %d was written by %d training processes, this run has %d: converting it with "
            "DeepSpeed's universal checkpoint tool",
            checkpoint.step,
            checkpoint.world,
            ctx.world,
        )
        try:
            to_universal(point.local / layout.ENGINE_TAG, shared / UNIVERSAL_TAG)
        except Exception as exc:
            error = f"cannot convert checkpoint {checkpoint.location} for {ctx.world} processes: {exc}"
    errors = [e for e in ctx.gather(error) if e]
    if errors:
        raise ResizeFailed(errors[0])
    point.load_dir, point.tag, point.universal, point.shared = shared, UNIVERSAL_TAG, True, shared


def to_universal(source: Path, target: Path) -> None:
    """DeepSpeed's `ds_to_universal` on one checkpoint tag directory, in this process, quietly."""
    from types import SimpleNamespace

    from deepspeed.checkpoint.ds_to_universal import main as convert

    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    args = SimpleNamespace(
        input_folder=str(source),
        output_folder=str(target),
        num_extract_workers=1,  # no process pool inside a Ray worker
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # our checkpoints carry no universal_checkpoint_info of their own
    )
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            convert(args)
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
