"""A DeepSpeed checkpoint engine that stops training only for a copy to host memory.

Checkpoints that stop training only for a copy: DeepSpeed's shards are snapshotted to host memory
(pinned, reused across checkpoints, on GPUs) and serialised to disk by a background thread.

DeepSpeed writes a checkpoint through its `CheckpointEngine.save(state_dict, path)`; the default
engine runs `torch.save` there, in the training loop, which is the stall (19.5 s for a ~12 GB
checkpoint of a 0.88 B model on one H200). This engine keeps the file layout (the same `torch.save`
of the same state dicts, so `load_checkpoint` and resume are unchanged) and moves the serialisation
off the loop: `save` copies every tensor to host memory -- device-to-host copies on the GPU's stream,
one synchronisation at the end -- and queues the write. The uploader waits for `flush()` before it
hashes and uploads the files, so COMMITTED still comes after every byte is on storage.

DeepSpeed's own asynchronous writers (`checkpoint.writer.decoupled`) need its `async_io` op
(libaio, a JIT build); this is the same idea with nothing to compile.

Loading goes through this engine too: DeepSpeed's `load_checkpoint` reads the model states and every
ZeRO optimizer shard with `checkpoint_engine.load`, which here is `torch.load(weights_only=True)` with
the few DeepSpeed classes such a checkpoint holds (loading.py), never the default engine's
`weights_only=False`: a shard whose unpickling would run code is refused, not run.

What this does not reach, because DeepSpeed calls `torch.load(weights_only=False)` itself:

- the universal conversion after a resize (`ds_to_universal`, resume.py) and `load_universal`'s
  per-parameter files: the conversion reads the fetched shards only after each has loaded with
  `weights_only=True` there (so it unpickles nothing that a restricted load refused), and the
  per-parameter files are the conversion's own output, written on this node;
- DeepSpeed code paths this trainer does not use (MoE expert files, pipeline-parallel layers,
  `zero_to_fp32`, DeepSpeed's other checkpoint engines).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections import OrderedDict, defaultdict
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

from cpt_trainer.checkpoint.loading import safe_load

Key = tuple[tuple[int, ...], torch.dtype]


class SnapshotCheckpointEngine(TorchCheckpointEngine):
    def __init__(self, config_params: Any = None) -> None:
        super().__init__(config_params)
        self.name = "SnapshotCheckpointEngine"
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cpt-ckpt-write")
        self._pending: list[concurrent.futures.Future[None]] = []
        self._free: dict[Key, list[torch.Tensor]] = defaultdict(list)  # host buffers of earlier checkpoints
        self._in_use: list[tuple[Key, torch.Tensor]] = []
        self._lock = threading.Lock()
        self.pin = torch.cuda.is_available()

    # -- the stall: copy to host ----------------------------------------------------------------

    def _buffer(self, tensor: torch.Tensor) -> torch.Tensor:
        key = (tuple(tensor.shape), tensor.dtype)
        with self._lock:
            free = self._free[key]
            buffer = free.pop() if free else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pin)
            self._in_use.append((key, buffer))
        return buffer

    def _snapshot(self, value: Any, memo: dict[int, Any]) -> Any:
        if isinstance(value, torch.Tensor):
            if id(value) in memo:  # the same tensor twice (tied weights): one copy, as torch.save would
                return memo[id(value)]
            copy = self._buffer(value)
            copy.copy_(value.detach(), non_blocking=self.pin and value.is_cuda)
            memo[id(value)] = copy
            return copy
        if isinstance(value, OrderedDict):  # module state dicts: keep the type torch.load gives back
            return OrderedDict((k, self._snapshot(v, memo)) for k, v in value.items())
        if isinstance(value, dict):
            return {k: self._snapshot(v, memo) for k, v in value.items()}
        if isinstance(value, list):
            return [self._snapshot(v, memo) for v in value]
        if isinstance(value, tuple):
            return tuple(self._snapshot(v, memo) for v in value)
        return value

    def save(self, state_dict: Any, path: str) -> None:
        snapshot = self._snapshot(state_dict, {})
        if self.pin:
            torch.cuda.current_stream().synchronize()  # the copies are complete before the loop goes on
        self._pending.append(self._writer.submit(self._write, snapshot, path))

    # -- off the loop: serialise ----------------------------------------------------------------

    def _write(self, snapshot: Any, path: str) -> None:
        torch.save(snapshot, path, _use_new_zipfile_serialization=self.zipfile_serialization)

    def flush(self) -> None:
        """Wait for every queued write (raising the first error), then recycle the host buffers."""
        pending, self._pending = self._pending, []
        try:
            for future in pending:
                future.result()
        finally:
            with self._lock:
                for key, buffer in self._in_use:
                    self._free[key].append(buffer)
                self._in_use = []

    # -- loading: no code from the file runs -----------------------------------------------------

    def load(self, path: str, map_location: Any = None) -> Any:
        return safe_load(path, map_location=map_location)

    def commit(self, info: Any) -> bool:
        return True  # the files are complete after flush(); the uploader calls it before it reads them

    def cleanup(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)
