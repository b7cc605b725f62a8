"""Loading a checkpoint's .pt files without running code from them.

`torch.load(weights_only=False)` unpickles: a file can name any callable and unpickling calls it, so
whoever can write a checkpoint prefix would run code in every pod that resumes from it. Every .pt file
of a checkpoint is loaded with `weights_only=True`: tensors, containers and plain Python values, plus
exactly the classes DeepSpeed puts into the ZeRO-2 and ZeRO-3 checkpoints of this trainer (`ALLOWED`,
found by saving real ones -- fp32, bf16, fp16, LoRA, CPU offload -- and listing what weights_only
refuses). Those are plain records: the restricted unpickler builds them from their fields (`__new__`
or their constructor, then their `__dict__`), and none of them runs code on the way. A file that
needs anything else raises `UnsafeCheckpointFile`, naming the file and what it asked for.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

#: Qualified names of the non-torch classes a checkpoint of this trainer holds, and why.
ALLOWED = {
    # ZeRO-1/2 optimizer states: `param_slice_mappings` (a dataclass of two ints per parameter)
    "deepspeed.utils.tensor_fragment.fragment_address": ("deepspeed.utils.tensor_fragment", "fragment_address"),
    # ZeRO optimizer states: `zero_stage` (an int enum)
    "deepspeed.runtime.zero.config.ZeroStageEnum": ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    # ZeRO optimizer states: `loss_scaler` (static, or dynamic with fp16: a few numbers each)
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": (
        "deepspeed.runtime.fp16.loss_scaler",
        "DynamicLossScaler",
    ),
}


class UnsafeCheckpointFile(pickle.UnpicklingError):
    """A .pt file that would need more than tensors and plain values to load; it was not unpickled."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path.name} {why}")
        self.path, self.why = path, why


def allowed_classes() -> list[Any]:
    import importlib

    return [getattr(importlib.import_module(module), name) for module, name in ALLOWED.values()]


def safe_load(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with the classes of `ALLOWED`; `UnsafeCheckpointFile` when the
    file needs anything else. `mmap`: map the tensors instead of reading them (a check of the pickle)."""
    import torch

    path = Path(path)
    with torch.serialization.safe_globals(allowed_classes()):
        try:
            return torch.load(
                path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointFile(path, _refusal(path, exc)) from None


def first_line(error: BaseException) -> str:
    """An error as one line: its message's first line, or its class name."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:500]


def load_problem(path: Path, error: BaseException) -> str:
    """Why `path` did not load, in one line that names it."""
    if isinstance(error, UnsafeCheckpointFile):
        return str(error)
    return f"{path.name} does not load ({type(error).__name__}: {first_line(error)})"


def _refusal(path: Path, error: Exception) -> str:
    """What the file asked for, in one line: the globals it names beyond torch's and ours."""
    import torch

    try:
        wanted = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) if g not in ALLOWED]
    except Exception:
        wanted = []
    if wanted:
        return (
            f"does not load as tensors and plain values: it names {', '.join(sorted(wanted))}, which a checkpoint "
            "of this trainer never holds (refused without unpickling it: an older format, or not written by "
            "this trainer)"
        )
    return f"does not load as tensors and plain values ({first_line(error)}); refused without unpickling it"
