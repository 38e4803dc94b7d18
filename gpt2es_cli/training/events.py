"""What the training loop reports: typed events, each of which gives its own metrics record.

The loop emits, in order: `TrainStart`; then `StepReport` every `log_interval` steps,
`ValidationDone` every `eval_interval` steps, `Recovery` after a non-finite loss, `Saved`
after each checkpoint (last.pth, or best.pth after a new lowest validation loss), `PlanFitted`
when the steps are fitted to --max-time (after the first steps) or re-fitted, `PlanWarning`
when that plan cannot work; and
`TrainEnd` with the summary when the run ends (a budget, --max-time, Ctrl-C or divergence; an
exception ends it without one). With --push-to-hub --push-every-save, `UploadFailed` when an
upload after a save fails. Subscribers (training/subscribers/, the CLI's display) take them.

An event that belongs in metrics.jsonl has a `kind` (the record's "type") and `record()` gives
its line: every field under its record name (`RECORD_NAMES`) except those in `unrecorded`,
non-finite floats as null (JSON has no NaN). So a field is declared once, on its event.

The record history travels in the checkpoint (resume restores it, `inspect` reads it), so the
loop keeps it as part of its training state, not any subscriber: subscribers are sinks that
may or may not be there. `TrainStart.history` hands them what the run already holds, so a
metrics file can start as exactly what the checkpoint knew.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.settings import Named
from gpt2es_cli.training.budget import Budget

if TYPE_CHECKING:
    from gpt2es_cli.checkpoint import AdapterRecord
    from gpt2es_cli.training.memory import BatchChoice
    from gpt2es_cli.training.sizing import SizeChoice

RECORD_NAMES = {"tokens_seen": "tokens"}
"""Fields whose metrics-record key differs from the field name."""


def _plain(value: Any) -> Any:
    """A field's value as a record holds it: an enum as its value, a non-finite float as None."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StopReason(Named):
    """Why a run stopped: its budget was reached, or something ended it first."""

    MAX_STEPS = "max_steps"
    MAX_TOKENS = "max_tokens"
    EPOCHS = "epochs"
    MAX_TIME = "max_time"
    OUT_OF_TIME = "out_of_time"
    """Past --max-time before the planned end (the steps slowed down)."""
    INTERRUPTED = "interrupted"
    """Ctrl-C or SIGTERM."""
    DIVERGED = "diverged"
    """The loss stayed non-finite after --nan-retries rollbacks."""

    @classmethod
    def reached(cls, budget: Budget) -> StopReason:
        """The run ended as `budget` planned."""
        return cls(budget.value)

    @property
    def resumable(self) -> bool:
        """The run stopped short of its plan, so --resume continues it."""
        return self in (StopReason.INTERRUPTED, StopReason.OUT_OF_TIME, StopReason.DIVERGED)


class Event:
    """Something the loop reports. `kind` is None for events that are not metrics records."""

    kind: str | None = None
    unrecorded: tuple[str, ...] = ()

    def record(self) -> dict[str, Any] | None:
        """This event's metrics.jsonl record (plain, JSON-ready data), or None."""
        if self.kind is None:
            return None
        record: dict[str, Any] = {"type": self.kind}
        for f in fields(self):  # type: ignore[arg-type]  # every event is a dataclass
            if f.name not in self.unrecorded:
                record[RECORD_NAMES.get(f.name, f.name)] = _plain(getattr(self, f.name))
        return record


@dataclass(frozen=True)
class TrainStart(Event):
    """The run is planned and about to step."""

    run_dir: Path
    config: TrainConfig
    num_parameters: int
    device: str
    precision: str
    world_size: int
    accum_steps: int
    tokens_per_step: int
    total_steps: int
    budget: Budget
    train_tokens: int
    start_step: int
    """0 for a new run; the checkpoint's step when resuming."""
    history: tuple[dict[str, Any], ...] = ()
    """The metrics records the run already holds (a resumed checkpoint's; empty when new)."""
    start_tokens: int = 0
    """Tokens seen at start_step."""
    warmup_steps: int | None = None
    """None: 5% of the steps fitted to --max-time, decided with them."""
    max_time: float | None = None
    fit_time: bool = False
    """The steps are fitted to max_time after the first steps (then `PlanFitted`); total_steps is an
    upper bound until then."""
    cap_steps: int | None = None
    """The steps the step budgets (--max-steps, --max-tokens, --epochs) allow; None: --max-time alone."""
    cap_budget: Budget | None = None
    batch_choice: BatchChoice | None = None
    """What --batch-size auto chose and why (None: the batch size was given)."""
    size_choice: SizeChoice | None = None
    """What --preset auto chose and why (None: the model was given)."""
    adapter: AdapterRecord | None = None
    """With --lora-rank: the LoRA adapter trained on the frozen --init-from model (which trains with AdamW)."""
    trainable_parameters: int | None = None
    """The parameters that train (all of them, but for LoRA: the adapters')."""
    base_dtype: str | None = None
    """With --lora-rank: the dtype the frozen weight matrices are held in."""


@dataclass(frozen=True)
class StepReport(Event):
    """Progress every `log_interval` steps (and where the run stops)."""

    kind = "train"
    unrecorded = ("total_steps", "epoch", "eta", "logged")

    step: int
    tokens_seen: int
    loss: float
    """Mean training loss over the steps since the last report."""
    smoothed_loss: float
    lr: float
    grad_norm: float
    """The last step's global gradient norm, before clipping."""
    tokens_per_second: float
    mfu: float | None
    """Model FLOPs utilisation (0..1) where the device's peak is known."""
    elapsed: float
    """Seconds of training in the whole run (every invocation)."""
    total_steps: int
    """The planned steps (fitted to --max-time where it binds)."""
    epoch: float
    """Passes over train.bin so far."""
    eta: float
    """Seconds until the planned end: with --max-time, from the measured step, evaluation and save
    times; else at the recent step time."""
    grad_clip: float | None = None
    """The last step's clipping limit (None: no clipping)."""
    clipped: int = 0
    """Steps since the last report whose norm was above their limit (and so were clipped)."""
    logged: bool = True
    """False for the report of a step where Ctrl-C stopped the run off the log interval: shown, not
    recorded, so the metrics of a resumed run are the uninterrupted run's."""

    def record(self) -> dict[str, Any] | None:
        return super().record() if self.logged else None


@dataclass(frozen=True)
class ValidationDone(Event):
    """The loss on the fixed validation windows (and a sample), every `eval_interval` steps."""

    kind = "eval"

    step: int
    tokens_seen: int
    val_loss: float
    val_perplexity: float
    best: bool
    """This is the lowest validation loss so far (best.pth is written next)."""
    sample: str | None
    """A continuation of `sample_prompt`, prompt included."""
    elapsed: float


@dataclass(frozen=True)
class Recovery(Event):
    """A non-finite loss or gradient: the step was dropped and the last good state restored."""

    kind = "recovery"
    unrecorded = ("max_attempts",)

    step: int
    restored_step: int
    lr_scale: float
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class PlanFitted(Event):
    """The steps were fitted to --max-time from the measured times (first after the first steps,
    again when the projected end drifts from the budget); the schedule ends at total_steps."""

    kind = "plan"

    step: int
    """The first optimizer step (0-based) planned this way."""
    total_steps: int
    time_steps: int
    """The steps that fit in max_time (total_steps is smaller when a step budget binds first)."""
    budget: Budget
    warmup_steps: int
    evals: int
    """Evaluations planned from here (the final one included)."""
    eval_batches: int
    """Validation batches per evaluation."""
    step_time: float
    eval_time: float
    save_time: float
    elapsed: float
    """Seconds of training when it was fitted."""
    projected: float
    """Seconds of training at the planned end."""
    max_time: float
    first: bool
    """The first fit of this invocation, not a re-plan."""


@dataclass(frozen=True)
class PlanWarning(Event):
    """The fitted plan cannot work (too few steps fit, or the warmup does not): what to change."""

    message: str


@dataclass(frozen=True)
class Saved(Event):
    """A checkpoint was written."""

    path: Path
    step: int
    best: bool = False
    """best.pth (weights only, lowest validation loss) rather than last.pth."""


@dataclass(frozen=True)
class UploadFailed(Event):
    """--push-every-save: uploading a save to the Hub failed; the run goes on."""

    step: int
    message: str


@dataclass
class TrainSummary:
    """How a run ended."""

    run_dir: Path
    stop_reason: StopReason
    step: int
    total_steps: int
    tokens_seen: int
    elapsed: float
    """Seconds of training in this invocation."""
    tokens_per_second: float
    """Average over this invocation."""
    final_loss: float | None
    """Smoothed training loss at the end."""
    val_loss: float | None
    """The last validation loss."""
    best_val_loss: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    recoveries: int
    """How many times a non-finite loss rolled the model back."""
    start_step: int
    run_elapsed: float | None = None
    """Seconds of training in the whole run (every invocation)."""
    max_time: float | None = None
    hub_url: str | None = None
    """Where --push-to-hub uploaded the run at the end (None: not pushed)."""


@dataclass(frozen=True)
class TrainEnd(Event):
    """The run ended (last.pth is written); the same summary `train` returns."""

    summary: TrainSummary
