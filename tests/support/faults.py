"""Fault injection for the test suite, as trainer hooks (cpt_trainer.train.hooks).

In-process tests pass `Faults(...)` to the Trainer. Processes a test cannot reach directly (Ray
Train workers, a RayJob's `cpt train`) load them once at start-up with
`CPT_TRAINER_HOOKS=tests.support.faults:from_env` and read their settings from `CPT_FAULT`, a
comma-separated list of `key=value`:

- `kill_rank=R,after_commit=S,marker=PATH`: rank R SIGKILLs its own process right after the
  checkpoint of step >= S is committed, once (PATH records that it happened) -- a worker lost
  mid-run, which Ray Train must recover from the last committed checkpoint;
- `raise_at_step=S`: every rank raises after finishing step S -- an interrupted run;
- `nan_at_step=S`: the loss of step S becomes NaN;
- `pause_per_step=SECONDS`: every rank sleeps after each step -- a run long enough to watch (a tiny job on an
  idle machine is over before a progress line could show it).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cpt_trainer.train.hooks import TrainerHooks


class InjectedFault(RuntimeError):
    """Raised by `raise_at_step`."""


@dataclass
class Faults(TrainerHooks):
    raise_at_step: int | None = None
    nan_at_step: int | None = None
    kill_rank: int | None = None
    after_commit: int = 0
    marker: Path = Path("/tmp/cpt-fault-marker")
    pause_per_step: float = 0.0

    def on_loss(self, trainer: Any, step: int, loss: Any) -> Any:
        return loss * float("nan") if step == self.nan_at_step else loss

    def after_step(self, trainer: Any) -> None:
        if self.pause_per_step:
            time.sleep(self.pause_per_step)
        step = trainer.state.step
        if step == self.raise_at_step:
            raise InjectedFault(f"injected fault after step {step}")
        if self.kill_rank is not None and trainer.ctx.rank == self.kill_rank:
            committed = trainer.checkpointer.committed
            if committed is not None and committed.step >= self.after_commit and not self.marker.exists():
                self.marker.write_text(f"killed rank {trainer.ctx.rank} after step {step}\n")
                os.kill(os.getpid(), signal.SIGKILL)


def from_env() -> Faults:
    config = dict(item.split("=", 1) for item in os.environ.get("CPT_FAULT", "").split(",") if "=" in item)
    number = {
        k: int(v) for k, v in config.items() if k in ("raise_at_step", "nan_at_step", "kill_rank", "after_commit")
    }
    marker = Path(config["marker"]) if "marker" in config else Faults.marker
    pause = float(config.get("pause_per_step", 0.0))
    return Faults(**number, marker=marker, pause_per_step=pause)  # type: ignore[arg-type]


def fault_env(spec: str) -> dict[str, str]:
    """The environment that makes a trainer process load these hooks with `spec` (CPT_FAULT syntax)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"CPT_TRAINER_HOOKS": "tests.support.faults:from_env", "CPT_FAULT": spec, "PYTHONPATH": path}
