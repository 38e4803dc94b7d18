"""Training: the loop (loop.py) and the events it emits (events.py), run planning and checks
(plan.py), the optimizers (AdamW, Muon + AdamW) and schedules (optim.py), the time budget (budget.py),
the memory model and --batch-size auto (memory.py), data parallelism under torchrun
(parallel.py), throughput and MFU (metrics.py), and the loggers that subscribe to the events
(subscribers/: metrics.jsonl, loss.png)."""

from gpt2es_cli.training.events import (
    Event,
    Recovery,
    Saved,
    StepReport,
    TrainEnd,
    TrainStart,
    TrainSummary,
    ValidationDone,
)
from gpt2es_cli.training.loop import train
from gpt2es_cli.training.parallel import is_main_process
from gpt2es_cli.training.plan import (
    RunPlan,
    load_resume_checkpoint,
    plan_run,
    resume_config,
)
from gpt2es_cli.training.subscribers import Subscriber

__all__ = [
    "Event",
    "Recovery",
    "RunPlan",
    "Saved",
    "StepReport",
    "Subscriber",
    "TrainEnd",
    "TrainStart",
    "TrainSummary",
    "ValidationDone",
    "is_main_process",
    "load_resume_checkpoint",
    "plan_run",
    "resume_config",
    "train",
]
