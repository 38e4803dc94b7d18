"""Whatever records or shows the loop's events subscribes to them: a callable taking each event.

The loop builds one of each logger in the registry (registry.py) for every run, on the main
process only, before any subscriber passed to `train` (such as the CLI's console display).
Adding a logger (TensorBoard, W&B) is one module in this package, with a class whose instances
take events and whose `where(run_dir)` says where its output goes, and one line in the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from gpt2es_cli.training.events import Event
from gpt2es_cli.training.subscribers.registry import ALWAYS, OPTIONAL

Subscriber = Callable[[Event], None]
"""Takes each event, in order; exceptions it raises stop the run."""

REGISTRY = ALWAYS
"""Every run's loggers: name -> "module:Class"."""


def logger_class(name: str) -> type:
    """The class of the logger registered as `name`."""
    module, _, cls = {**REGISTRY, **OPTIONAL}[name].partition(":")
    return getattr(importlib.import_module(module, __name__), cls)


def run_loggers(extra: str = "") -> list[Subscriber]:
    """One instance of every registered logger, in registration order, then those `extra` names
    (--log-to: comma-separated)."""
    return [logger_class(name)() for name in [*REGISTRY, *(n for n in extra.split(",") if n)]]


def logger_outputs(extra: str, run_dir: Path) -> dict[str, str]:
    """Where each --log-to logger of a run in `run_dir` writes: name -> its output, in words."""
    return {name: logger_class(name).where(run_dir) for name in extra.split(",") if name}
