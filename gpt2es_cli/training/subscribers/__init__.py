"""Whatever records or shows the loop's events subscribes to them: a callable taking each event.

The loop builds one of each logger registered here for every run, on the main process only,
before any subscriber passed to `train` (such as the CLI's console display). Adding a logger
(TensorBoard, W&B) is one module in this package, with a class whose instances take events,
and one line in `REGISTRY`. Entries name the class as "module:Class", imported when a run
starts, so an optional logger's package is loaded only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from gpt2es_cli.training.events import Event

Subscriber = Callable[[Event], None]
"""Takes each event, in order; exceptions it raises stop the run."""

REGISTRY: dict[str, str] = {
    "jsonl": ".jsonl:MetricsFile",  # metrics.jsonl, one record per line
    "plot": ".plot:LossPlot",  # loss.png
}
"""Every run's loggers: name -> "module:Class" (a leading dot: a module of this package)."""
OPTIONAL: dict[str, str] = {
    "tensorboard": ".tensorboard_log:TensorBoardLog",  # RUN/tensorboard event files
    "wandb": ".wandb_log:WandbLog",  # Weights & Biases (RUN/wandb offline)
    "csv": ".csv_log:CsvLog",  # RUN/metrics.csv
}
"""The loggers --log-to adds: name -> "module:Class"."""


def create(name: str) -> Subscriber:
    """A new instance of the logger registered as `name`."""
    module, _, cls = {**REGISTRY, **OPTIONAL}[name].partition(":")
    return getattr(importlib.import_module(module, __name__), cls)()


def run_loggers(extra: str = "") -> list[Subscriber]:
    """One instance of every registered logger, in registration order, then those `extra` names
    (--log-to: comma-separated)."""
    return [create(name) for name in [*REGISTRY, *(n for n in extra.split(",") if n)]]
