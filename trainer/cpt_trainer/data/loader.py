"""The trainer's data loader: micro-batches of one rank, prefetched in the background.

For optimizer step t, rank r of W trains on the global samples
`[t*B + r*B/W, t*B + (r+1)*B/W)` (B = rows per global batch), split into micro-batches;
`BlendedSampler` maps each to (source, row) and `ShardReader` fetches only those rows. A
background thread keeps `prefetch` micro-batches ready so reading (a memory map locally, a
ranged GET on S3) overlaps the training step.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from cpt_core.storage import Storage

from cpt_trainer.data.prepare import PreparedSource
from cpt_trainer.data.sampler import BlendedSampler, SourceInfo
from cpt_trainer.data.shards import ShardReader
from cpt_trainer.data.tokenize import DOC_START, TRAIN

IGNORE_INDEX = -100


@dataclass
class MicroBatch:
    """One micro-batch for one rank, as numpy arrays of shape [batch, seq_len]."""

    step: int
    micro: int
    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    sources: np.ndarray  # source index per sample
    indices: np.ndarray  # global sample index per sample


def to_model_inputs(tokens: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, labels (-100 where no label) and position_ids (restarting at document starts)."""
    labels = np.where(flags & TRAIN, tokens, IGNORE_INDEX)
    seq_len = tokens.shape[1]
    starts = (flags & DOC_START) != 0
    starts[:, 0] = True
    arange = np.arange(seq_len)
    last_start = np.maximum.accumulate(np.where(starts, arange, 0), axis=1)
    return tokens, labels, arange - last_start


def build_sampler(
    prepared: Sequence[PreparedSource], seed: int, weights: dict[str, int] | None = None
) -> BlendedSampler:
    """The mixture over `prepared` with the sources' own weights, or with `weights` (by name; absent = 0)."""
    return BlendedSampler(
        [
            SourceInfo(p.name, p.weight if weights is None else weights.get(p.name, 0), p.rows, p.fingerprint)
            for p in prepared
        ],
        seed,
    )


class RankLoader:
    """Yields the micro-batches of one rank from `start_step` on."""

    def __init__(
        self,
        prepared: Sequence[PreparedSource],
        sampler: BlendedSampler,
        storage: Storage,
        *,
        global_batch_rows: int,
        micro_batch_size: int,
        rank: int = 0,
        world: int = 1,
        prefetch: int = 4,
        io_threads: int = 8,
    ) -> None:
        per_rank, remainder = divmod(global_batch_rows, world)
        if remainder or per_rank % micro_batch_size:
            raise ValueError(
                f"a global batch of {global_batch_rows} rows (training.globalBatchTokens / data.sequenceLength) "
                f"must split evenly over {world} workers x training.microBatchSize {micro_batch_size}; "
                f"adjust training.globalBatchTokens, training.microBatchSize or cluster.workers"
            )
        self.prepared = list(prepared)
        self.sampler = sampler
        self.readers: list[ShardReader] = [p.reader(storage) for p in self.prepared]
        self.global_batch_rows = global_batch_rows
        self.micro_batch_size = micro_batch_size
        self.accumulation = per_rank // micro_batch_size
        self.rank, self.world = rank, world
        self.prefetch = prefetch
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="cpt-read")

    def micro_batch(self, step: int, micro: int) -> MicroBatch:
        """Build one micro-batch directly (no prefetch): what `iterate` yields."""
        indices = BlendedSampler.rank_indices(step, self.rank, self.world, self.global_batch_rows)
        indices = indices[micro * self.micro_batch_size : (micro + 1) * self.micro_batch_size]
        sources, rows = self.sampler.lookup(indices)
        seq_len = self.prepared[0].layout.seq_len
        tokens = np.empty((len(indices), seq_len), dtype=np.int64)
        flags = np.empty((len(indices), seq_len), dtype=np.uint8)
        for s in np.unique(sources).tolist():
            sel = np.flatnonzero(sources == s)
            tokens[sel], flags[sel] = self.readers[s].read(rows[sel].tolist(), self._pool)
        input_ids, labels, position_ids = to_model_inputs(tokens, flags)
        return MicroBatch(step, micro, input_ids, labels, position_ids, sources, indices)

    def iterate(self, start_step: int, end_step: int) -> Generator[MicroBatch, None, None]:
        """Micro-batches for steps [start_step, end_step), `accumulation` per step, prefetched."""
        ready: queue.Queue[MicroBatch | BaseException | None] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce() -> None:
            try:
                for step in range(start_step, end_step):
                    for micro in range(self.accumulation):
                        if stop.is_set():
                            return
                        ready.put(self.micro_batch(step, micro))
                ready.put(None)
            except BaseException as exc:
                ready.put(exc)

        thread = threading.Thread(target=produce, name="cpt-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def holdout_batches(
    prepared: PreparedSource, storage: Storage, micro_batch_size: int, max_batches: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The evaluation batches of a source's holdout: (input_ids, labels, position_ids)."""
    reader = prepared.reader(storage, "holdout")
    rows = min(reader.rows, micro_batch_size * max_batches)
    for start in range(0, rows, micro_batch_size):
        tokens, flags = reader.read(list(range(start, min(rows, start + micro_batch_size))))
        yield to_model_inputs(tokens, flags)
