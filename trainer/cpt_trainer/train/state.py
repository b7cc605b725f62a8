"""The loop's own state -- step, per-step losses, the metrics history -- and each rank's RNG state.

Both are `Stateful` parts of a checkpoint (see checkpointer.py): `TrainState` goes into
`trainer_state.json` (the same on every rank), `RNGState` into each rank's `rank_state_*.pt`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cpt_core.contract.clock import now


@dataclass
class TrainState:
    """Where the loop is and what it has seen."""

    step: int = 0
    losses: dict[int, float] = field(default_factory=dict)
    """Mean training loss of every step so far (the resume-exactness tests compare these)."""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """One row per step and per evaluation: report/metrics.jsonl and the loss curves."""
    started_at: str = field(default_factory=now)
    step_seconds: float | None = None
    """Smoothed seconds per step (not checkpointed: the ETA of this process)."""

    def record_step(self, loss: float, lr: float, seconds: float, tokens: int, stage: str = "main") -> None:
        """Account one finished optimizer step."""
        self.step += 1
        self.losses[self.step] = loss
        self.step_seconds = seconds if self.step_seconds is None else 0.8 * self.step_seconds + 0.2 * seconds
        # A step replayed after a resume replaces the rows it wrote before (metrics stay one row per step).
        self.metrics = [m for m in self.metrics if not (m["kind"] == "train" and m["step"] >= self.step)]
        self.metrics.append(
            {
                "kind": "train",
                "step": self.step,
                "stage": stage,
                "loss": loss,
                "lr": lr,
                "tokensPerSecond": tokens / max(seconds, 1e-9),
                "time": now(),
            }
        )

    def record_eval(self, row: dict[str, Any]) -> None:
        self.metrics = [m for m in self.metrics if not (m["kind"] == "eval" and m["step"] >= row["step"])]
        self.metrics.append({"kind": "eval", **row})

    def latest_train(self) -> dict[str, Any] | None:
        return next((m for m in reversed(self.metrics) if m["kind"] == "train"), None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "losses": {str(k): v for k, v in self.losses.items()},
            "metrics": self.metrics,
            "startedAt": self.started_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.losses = {int(k): float(v) for k, v in state.get("losses", {}).items()}
        self.metrics = list(state.get("metrics", []))
        self.started_at = state.get("startedAt", self.started_at)


class RNGState:
    """This rank's random number generators (dropout, sampling in evaluation).

    Saved as tensors and plain values only (numpy's Mersenne Twister keys as an int64 tensor, Python's as a
    list of ints), so that the file loads with `torch.load(weights_only=True)`: nothing in it is unpickled
    as an object (checkpoint/loading.py)."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                "pos": int(pos),
                "hasGauss": int(has_gauss),
                "cachedGaussian": float(cached_gaussian),
            },
            "python": {"version": int(version), "state": [int(v) for v in internal], "gauss": gauss},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        numpy, python = state["numpy"], state["python"]
        keys = np.asarray(numpy["keys"].numpy(), dtype=np.uint32)
        np_state = (str(numpy["name"]), keys, int(numpy["pos"]), int(numpy["hasGauss"]), float(numpy["cachedGaussian"]))
        py_state = (int(python["version"]), tuple(int(v) for v in python["state"]), python["gauss"])
        # Every part is read before any generator is set: a malformed state changes none of them.
        torch.set_rng_state(state["torch"])
        np.random.set_state(np_state)
        random.setstate(py_state)
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])
