"""The run report in `<checkpoint.uri>/report/`: metrics.jsonl, loss curves (PNG), summary.json."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from typing import Any

from cpt_core.contract import layout
from cpt_core.storage import Location, Storage

log = logging.getLogger(__name__)


def loss_plot(metrics: list[dict[str, Any]], stages: Sequence[tuple[str, int]] = ()) -> bytes:
    """Training loss and holdout losses over steps (left), probe F1 and instruction following (right),
    with a dashed line at each stage start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if m.get("kind") == "train"]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    scores = [
        (key, label, color, [(m["step"], m[key][field]) for m in evals if m.get(key)])
        for key, field, label, color in (
            ("probes", "f1", "probe F1", "#2ca02c"),
            ("instructionFollowing", "promptAccuracy", "instruction following", "#9467bd"),
        )
    ]
    scores = [s for s in scores if s[3]]
    fig, axes = plt.subplots(1, 2 if scores else 1, figsize=(12 if scores else 8, 4.5), dpi=100, squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="training loss", color="#999999", lw=1)
    for key, label, color in (
        ("domainLoss", "domain holdout", "#1f77b4"),
        ("generalLoss", "general holdout", "#d62728"),
        ("instructionLoss", "chat holdout", "#ff7f0e"),
    ):
        points = [(m["step"], m[key]) for m in evals if m.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Continued pre-training: domain gain vs general forgetting")
    if scores:
        right = axes[0][1]
        for _, label, color, points in scores:
            right.plot(*zip(*points, strict=True), marker="o", label=label, color=color)
        right.set_xlabel("step")
        right.set_ylabel("score")
        right.set_ylim(-0.02, 1.02)
        right.set_title("Knowledge and instruction following")
    for axis in axes[0]:
        for name, start in stages:
            axis.axvline(start, color="#444444", ls="--", lw=0.8)
            axis.annotate(name, (start, 1.0), xycoords=("data", "axes fraction"), fontsize=8, va="top", rotation=90)
        axis.grid(alpha=0.3)
        axis.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(
    storage: Storage,
    target: Location,
    metrics: list[dict[str, Any]],
    summary: dict[str, Any],
    stages: Sequence[tuple[str, int]] = (),
) -> str:
    storage.write_text(target.join("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in metrics))
    storage.write_bytes(target.join("loss.png"), loss_plot(metrics, stages))
    storage.write_text(target.join("summary.json"), json.dumps(summary, indent=2))
    return str(target)


def run_report(
    storage: Storage,
    run: Location,
    state: str,
    metrics: list[dict[str, Any]],
    summary: dict[str, Any],
    stages: Sequence[tuple[str, int]] = (),
) -> str:
    """A run's report/ with its metrics so far; how the run ended (`state`) goes into summary.json."""
    return write_report(storage, run.join(layout.REPORT), metrics, {"state": state, **summary}, stages)
