"""The run report in `<checkpoint.uri>/report/`: metrics.jsonl, loss curves (PNG), summary.json."""

from __future__ import annotations

import io
import json
from typing import Any

from cpt_core.storage import Location, Storage


def loss_plot(metrics: list[dict[str, Any]]) -> bytes:
    """A PNG with the training loss and the domain/general holdout losses over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if m.get("kind") == "train"]
    evals = [m for m in metrics if m.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot([m["step"] for m in train], [m["loss"] for m in train], label="training loss", color="#999999", lw=1)
    for key, label, color in (
        ("domainLoss", "domain holdout", "#1f77b4"),
        ("generalLoss", "general holdout", "#d62728"),
    ):
        points = [(m["step"], m[key]) for m in evals if m.get(key) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label, color=color)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Continued pre-training: domain gain vs general forgetting")
    ax.grid(alpha=0.3)
    ax.legend()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_report(storage: Storage, target: Location, metrics: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    storage.write_text(target.join("metrics.jsonl"), "".join(json.dumps(m) + "\n" for m in metrics))
    storage.write_bytes(target.join("loss.png"), loss_plot(metrics))
    storage.write_text(target.join("summary.json"), json.dumps(summary, indent=2))
    return str(target)
