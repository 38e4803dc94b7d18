"""The loggers a run can have, by name: the one list of them.

Every run has the loggers in ALWAYS; --log-to adds any of those in OPTIONAL. An entry names the
class as "module:Class" (a leading dot: a module of this package), imported only when a run uses
it, so an optional logger's package is loaded only then. This module imports nothing, so the
settings can check --log-to's names against it.
"""

ALWAYS: dict[str, str] = {
    "jsonl": ".jsonl:MetricsFile",  # metrics.jsonl, one record per line
    "plot": ".plot:LossPlot",  # loss.png
}
"""Every run's loggers: name -> "module:Class"."""

OPTIONAL: dict[str, str] = {
    "tensorboard": ".tensorboard_log:TensorBoardLog",  # RUN/tensorboard event files
    "wandb": ".wandb_log:WandbLog",  # Weights & Biases (RUN/wandb offline)
    "csv": ".csv_log:CsvLog",  # RUN/metrics.csv
}
"""The loggers --log-to adds: name -> "module:Class"."""
