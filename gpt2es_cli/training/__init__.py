"""Training: the loop (loop.py) and the events it emits (events.py), run planning and checks
(plan.py), the step budgets and the time budget (budget.py), the learning-rate schedule
(schedule.py), the optimizers (optim.py), gradient clipping (clipping.py), rollback after a
non-finite loss (rollback.py), evaluation while training (evaluation.py), the run's files
(saving.py, rundir.py), the memory model and --batch-size auto (memory.py), --preset auto
(sizing.py), data parallelism under torchrun (parallel.py), throughput and MFU (metrics.py), and
what subscribes to the events (subscribers/: metrics.jsonl, loss.png, TensorBoard, W&B, CSV, the
Hub upload)."""

from gpt2es_cli.training.events import (
    Event,
    Recovery,
    Saved,
    StepReport,
    TrainEnd,
    TrainStart,
    TrainSummary,
    UploadFailed,
    ValidationDone,
)
from gpt2es_cli.training.loop import train
from gpt2es_cli.training.parallel import is_main_process
from gpt2es_cli.training.plan import (
    AutoResume,
    RunFinished,
    RunPlan,
    find_resume,
    load_resume_checkpoint,
    plan_run,
    resumable_checkpoints,
    resume_config,
)
from gpt2es_cli.training.subscribers import Subscriber

__all__ = [
    "AutoResume",
    "Event",
    "Recovery",
    "RunFinished",
    "RunPlan",
    "Saved",
    "StepReport",
    "Subscriber",
    "TrainEnd",
    "TrainStart",
    "TrainSummary",
    "UploadFailed",
    "ValidationDone",
    "find_resume",
    "is_main_process",
    "load_resume_checkpoint",
    "plan_run",
    "resumable_checkpoints",
    "resume_config",
    "train",
]
