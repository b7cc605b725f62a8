"""Fault injection for the test suite (off unless CPT_FAULT is set).

`CPT_FAULT` is a comma-separated list of `key=value`:

- `kill_rank=R,after_commit=S,marker=PATH`: rank R SIGKILLs its own process right after the
  checkpoint of step >= S is committed, once (PATH records that it happened) -- a worker lost
  mid-run, which Ray Train must recover from the last committed checkpoint;
- `raise_at_step=S`: every rank raises after finishing step S -- an interrupted run that a
  second `fit` resumes;
- `nan_at_step=S`: the loss of step S becomes NaN.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


class InjectedFault(RuntimeError):
    """Raised by `raise_at_step`."""


def _config() -> dict[str, str]:
    raw = os.environ.get("CPT_FAULT", "")
    return dict(item.split("=", 1) for item in raw.split(",") if "=" in item)


def after_step(step: int, rank: int, committed_step: int | None) -> None:
    config = _config()
    if not config:
        return
    if "raise_at_step" in config and step == int(config["raise_at_step"]):
        raise InjectedFault(f"injected fault after step {step}")
    if "kill_rank" in config and rank == int(config["kill_rank"]):
        threshold = int(config.get("after_commit", "0"))
        marker = Path(config.get("marker", "/tmp/cpt-fault-marker"))
        if committed_step is not None and committed_step >= threshold and not marker.exists():
            marker.write_text(f"killed rank {rank} after step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    config = _config()
    return "nan_at_step" in config and step == int(config["nan_at_step"])
