"""metrics.jsonl: one JSON record per line, as each event gives it (`Event.record`)."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.training.events import Event, TrainStart


class MetricsFile:
    """Writes the run's metrics records to run_dir/metrics.jsonl.

    At the start the file is rewritten to the run's history (a resumed run drops any records
    written after its checkpoint), then each record is appended as it comes.
    """

    def __init__(self) -> None:
        self.path: Path | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self.path = event.run_dir / "metrics.jsonl"
            text = "".join(_line(r) for r in event.history)
            atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
            return
        record = event.record()
        if record is not None and self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(_line(record))


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"
