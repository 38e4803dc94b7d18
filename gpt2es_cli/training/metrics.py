"""The run's metrics: one JSON record per line in metrics.jsonl, and the loss-curve PNG."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gpt2es_cli.fileio import atomic_write


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends records to metrics.jsonl and keeps them (they travel in checkpoints too, so a
    resumed run rewrites the file to exactly what its checkpoint knew)."""

    def __init__(self, path: Path, records: list[dict[str, Any]] | None = None, write: bool = True):
        self.path = path
        self.records: list[dict[str, Any]] = list(records or [])
        self.write = write
        if write:
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)
            atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    def add(self, record: dict[str, Any]) -> None:
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self.records.append(record)
        if self.write:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train loss (raw and smoothed) and val loss against tokens seen, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train" and r.get("loss") is not None]
    val = [r for r in records if r.get("type") == "eval" and r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        tokens = [r["tokens"] for r in train]
        ax.plot(tokens, [r["loss"] for r in train], color="tab:blue", alpha=0.3, linewidth=1, label="train")
        ax.plot(tokens, [r["smoothed_loss"] for r in train], color="tab:blue", linewidth=1.5, label="train (smoothed)")
    if val:
        ax.plot(
            [r["tokens"] for r in val], [r["val_loss"] for r in val],
            color="tab:orange", marker="o", markersize=3, linewidth=1.5, label="val",
        )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
