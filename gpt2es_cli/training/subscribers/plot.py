"""loss.png: training loss (raw and smoothed) and validation loss against tokens seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.training.events import Event, TrainEnd, TrainStart, ValidationDone


class LossPlot:
    """Redraws run_dir/loss.png from the run's records after each validation and at the end."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.title = ""
        self.records: list[dict[str, Any]] = []
        self.scale = "linear"

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self.path = event.run_dir / "loss.png"
            self.title = str(event.run_dir)
            self.records = list(event.history)
            self.scale = event.config.plot_scale
            return
        record = event.record()
        if record is not None:
            self.records.append(record)
        if isinstance(event, (ValidationDone, TrainEnd)) and self.path is not None:
            plot_loss_curve(self.records, self.path, title=self.title, scale=self.scale)


def short_count(x: float) -> str:
    """400000 -> '400k', 1200000 -> '1.2M', 3e9 -> '3G' (axis ticks)."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def plot_loss_curve(records: list[dict[str, Any]], path: Path, title: str = "", scale: str = "linear") -> None:
    """Train loss (raw and smoothed) and val loss against tokens seen, written atomically. `scale`:
    linear, or log (both axes: loss curves are near power laws in tokens, straight lines there)."""
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
    from matplotlib.ticker import FuncFormatter

    if scale == "log":
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter

        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:.3g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:.3g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: short_count(x)))  # 400k, 1.2M, not 400000
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
