"""--log-to csv: RUN/metrics.csv, one row per train or eval record, for spreadsheets and pandas.

Like metrics.jsonl it is rewritten to the run's history at the start (a resumed run drops what
was written after its checkpoint) and appended to after; columns are fixed (COLUMNS), a field a
record does not have is empty.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.training.events import Event, TrainStart

COLUMNS = ("type", "step", "tokens", "loss", "smoothed_loss", "lr", "grad_norm", "grad_clip", "clipped",
           "tokens_per_second", "mfu", "val_loss", "val_perplexity", "elapsed")
KINDS = ("train", "eval")


class CsvLog:
    """RUN/metrics.csv, rewritten to the run's history at the start, then appended to."""

    @staticmethod
    def where(run_dir: Path) -> str:
        return str(run_dir / "metrics.csv")

    def __init__(self) -> None:
        self.path: Path | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self.path = event.run_dir / "metrics.csv"
            text = _rows([r for r in event.history if r.get("type") in KINDS], header=True)
            atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
            return
        record = event.record()
        if record is not None and record.get("type") in KINDS and self.path is not None:
            with open(self.path, "a", encoding="utf-8", newline="") as f:
                f.write(_rows([record]))


def _rows(records: list[dict[str, Any]], header: bool = False) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    return out.getvalue()
