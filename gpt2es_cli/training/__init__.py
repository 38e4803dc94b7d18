"""Training: the loop (loop.py), run planning and checks (plan.py), AdamW and learning-rate
schedules (optim.py), data parallelism under torchrun (distributed.py), metrics and the loss
curve (metrics.py)."""

from gpt2es_cli.training.loop import (
    EvalReport,
    Recovery,
    Saved,
    StepReport,
    TrainStart,
    TrainSummary,
    train,
)
from gpt2es_cli.training.plan import (
    RunPlan,
    load_resume_checkpoint,
    plan_run,
    resume_config,
)

__all__ = [
    "EvalReport",
    "Recovery",
    "RunPlan",
    "Saved",
    "StepReport",
    "TrainStart",
    "TrainSummary",
    "load_resume_checkpoint",
    "plan_run",
    "resume_config",
    "train",
]
