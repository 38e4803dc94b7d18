"""How many steps a run takes: the step budgets, and the step plan that records every decision.

Budgets. `--max-steps`, `--max-tokens` and `--epochs` give a number of steps up front (the
smallest wins; one epoch when no budget at all is given). `--max-time` gives seconds, which the
run turns into steps by measuring itself (time_budget.py); a step budget then caps the fit, and
the one that binds first wins. Evaluations and saves follow the plan unless set (`Cadence`):
20 evaluations spread over the planned steps (with --max-time 10 to 20, as their measured cost
allows), last.pth every SAVE_EVERY seconds.

The plan. A `StepPlan` holds the decisions: the steps, the budget that sets them, the
learning-rate `Schedule` along them (schedule.py; a re-plan re-shapes it without a jump) and the
`Cadence`. It travels in last.pth as a `PlanRecord`, so a resumed run continues the plan instead
of measuring again, and steps exactly as the run would have without the stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from gpt2es_cli.checkpoint import TrainingState
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.settings import Named
from gpt2es_cli.training.schedule import Schedule, Segment, default_warmup

EVALS_PER_RUN = 20
"""Default evaluations per run, spread evenly over the planned steps (every 5%), the last at the end."""
EVAL_BATCHES = 20
"""Validation batches per evaluation when --eval-batches is not given (with --max-time and automatic
evaluations, the first time fit may lower it: time_budget.batches_for)."""
SAVE_EVERY = 600.0
"""Default seconds between two saves of last.pth."""


class Budget(Named):
    """The setting that decides how many steps a run takes."""

    MAX_STEPS = "max_steps"
    MAX_TOKENS = "max_tokens"
    EPOCHS = "epochs"
    MAX_TIME = "max_time"


# --- what the step plan is before the first step ----------------------------------------------------


def step_budgets(config: TrainConfig, train_tokens: int, tokens_per_step: int) -> dict[Budget, int]:
    """Steps each step budget allows: --max-steps, --max-tokens, --epochs (one epoch when no budget,
    not even --max-time, is given)."""
    budgets = {}
    if config.max_steps is not None:
        budgets[Budget.MAX_STEPS] = config.max_steps
    if config.max_tokens is not None:
        budgets[Budget.MAX_TOKENS] = math.ceil(config.max_tokens / tokens_per_step)
    if config.epochs is not None or (not budgets and config.max_time is None):
        budgets[Budget.EPOCHS] = math.ceil((config.epochs or 1.0) * train_tokens / tokens_per_step)
    return {name: max(1, steps) for name, steps in budgets.items()}


@dataclass(frozen=True)
class Cadence:
    """When a run evaluates and saves: the settings (None: the defaults that follow the plan), and
    where its automatic evaluations stand.

    Automatic evaluations: `evals_per_run` of them over the planned steps after the first time fit
    (or step 0), the last one at the end. Each next one is due once the steps from the previous one
    to the end, shared among the evaluations left, have passed: a re-plan spaces the rest evenly
    again, and none is dropped, repeated or bunched."""

    eval_interval: int | None
    save_interval: int | None
    evals_per_run: int = EVALS_PER_RUN
    last_eval: int = 0
    """The step of the last automatic evaluation (or where they started)."""
    evals_done: int = 0
    eval_batches: int = EVAL_BATCHES
    """Validation batches per evaluation (the same windows every time)."""

    def eval_due(self, step: int, total_steps: int) -> bool:
        """Whether to evaluate after `step` steps (the end's evaluation is the loop's)."""
        if self.eval_interval is not None:
            return bool(self.eval_interval) and step % self.eval_interval == 0
        left = self.evals_per_run - self.evals_done
        return left > 0 and step >= self.last_eval + math.ceil((total_steps - self.last_eval) / left)

    def evaluated(self, step: int) -> Cadence:
        """This cadence after an evaluation at `step`."""
        if self.eval_interval is not None:
            return self
        return replace(self, last_eval=step, evals_done=self.evals_done + 1)

    def evals_left(self, step: int, total_steps: int) -> int:
        """Evaluations from `step` to the end of a plan of `total_steps`, the final one included."""
        if self.eval_interval is not None:
            return events_left(step, total_steps, self.eval_interval)
        return max(1, min(self.evals_per_run - self.evals_done, total_steps - step))



def events_left(step: int, total_steps: int, every: int) -> int:
    """Evaluations (or saves) still to come after `step` steps: one every `every` steps before the
    last step, and one at the end; none when `every` is 0."""
    if not every:
        return 0
    return max(0, (total_steps - 1) // every - step // every) + 1


@dataclass(frozen=True)
class StepPlan:
    """What the run has decided about its steps; its `state()` travels in last.pth."""

    schedule: Schedule
    total_steps: int
    """The steps the run goes to: the schedule's, except while a resumed run measures itself before
    its time fit (it keeps its old rate and may step past its old end)."""
    budget: Budget
    """The budget that sets the steps now."""
    cap: int | None
    """The steps the step budgets allow (None: --max-time alone)."""
    cap_budget: Budget | None
    max_time: float | None
    time_steps: int | None
    """The steps fitted to max_time (None until fitted)."""
    fit_time: bool
    """This invocation fits the steps to max_time after its first steps."""
    warmup_fixed: bool
    """The warmup is decided: given, or fitted (otherwise provisional until the time fit)."""
    cadence: Cadence
    provisional: bool = False
    """The schedule is a placeholder until the first time fit (which then plans from scratch)."""
    eval_batches_fixed: bool = True
    """The batches per evaluation are decided (given, recorded, or not fitted): the first time fit
    may lower them otherwise."""

    @property
    def warmup_steps(self) -> int:
        return self.schedule.warmup_steps

    def fitted(self, step: int, total_steps: int, time_steps: int, cadence: Cadence,
               warmup_steps: int | None) -> StepPlan:
        """This plan after a time fit of `time_steps` (capped to `total_steps`), from `step` on, evaluating
        as `cadence` says (warmup: --warmup-steps, the one decided, or 5% of the steps)."""
        warmup = warmup_steps if warmup_steps is not None else (
            self.warmup_steps if self.warmup_fixed else default_warmup(total_steps, self.schedule.kind)
        )
        budget = Budget.MAX_TIME if self.cap is None or time_steps < self.cap else self.cap_budget or Budget.MAX_TIME
        schedule = self.schedule.replanned(step, total_steps, warmup, rejoin=self.provisional)
        return replace(
            self, schedule=schedule, total_steps=total_steps, budget=budget, time_steps=time_steps,
            warmup_fixed=True, cadence=cadence, provisional=False, eval_batches_fixed=True,
        )

    def evaluated(self, step: int) -> StepPlan:
        return replace(self, cadence=self.cadence.evaluated(step))

    def state(self) -> dict[str, Any]:
        """What last.pth records (a PlanRecord, as plain data)."""
        c = self.cadence
        return PlanRecord(
            segments=self.schedule.segments,
            warmup_steps=self.warmup_steps if self.warmup_fixed else None,
            max_time=self.max_time if self.time_steps is not None else None,
            time_steps=self.time_steps,
            provisional=self.provisional,
            evals_per_run=c.evals_per_run, last_eval=c.last_eval, evals_done=c.evals_done, eval_batches=c.eval_batches,
        ).to_dict()


@dataclass(frozen=True)
class PlanRecord:
    """A step plan as last.pth records it; `read` is the one reader, of every checkpoint's."""

    segments: tuple[Segment, ...] | None = None
    """The schedule (None: a checkpoint from before plans were recorded)."""
    warmup_steps: int | None = None
    """The decided warmup (None: still to follow the time fit)."""
    max_time: float | None = None
    """The --max-time the steps were fitted to."""
    time_steps: int | None = None
    """The steps fitted to max_time (None until fitted)."""
    provisional: bool = False
    """The schedule was a placeholder until the first time fit."""
    evals_per_run: int | None = None
    last_eval: int | None = None
    evals_done: int | None = None
    eval_batches: int | None = None
    """The automatic evaluations' state (Cadence); None where not recorded."""

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["segments"] = [{k: int(v) for k, v in vars(s).items()} for s in self.segments or ()]
        return data

    @classmethod
    def read(cls, state: TrainingState) -> PlanRecord:
        """The plan a checkpoint's training state recorded (every field None when it has none)."""
        data = state.plan or {}
        segments = data.get("segments")
        return cls(
            segments=tuple(Segment(**{k: bool(v) if k == "stretch" else int(v) for k, v in s.items()})
                           for s in segments) if segments else None,
            warmup_steps=_int_or_none(data.get("warmup_steps")),
            max_time=data.get("max_time"),
            time_steps=_int_or_none(data.get("time_steps")),
            provisional=bool(data.get("provisional")),
            evals_per_run=_int_or_none(data.get("evals_per_run")),
            last_eval=_int_or_none(data.get("last_eval")),
            evals_done=_int_or_none(data.get("evals_done")),
            eval_batches=_int_or_none(data.get("eval_batches")),
        )


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None


def plan_steps(config: TrainConfig, budgets: dict[Budget, int], train_tokens: int, tokens_per_step: int,
               training: TrainingState | None = None) -> StepPlan:
    """The step plan of a run about to start, or to resume from `training` (a checkpoint's).

    A resumed run keeps its recorded plan (so it steps as if it had never stopped) unless the budget
    changed: a new step budget re-plans from the current step; a new --max-time is fitted again.
    """
    cap_budget = min(budgets, key=budgets.__getitem__) if budgets else None
    cap = budgets[cap_budget] if cap_budget else None
    recorded = PlanRecord.read(training) if training is not None else PlanRecord()
    warmup = config.warmup_steps if config.warmup_steps is not None else recorded.warmup_steps
    time_steps = None
    fit_time = config.max_time is not None
    if fit_time and recorded.time_steps and recorded.max_time == config.max_time:
        time_steps, fit_time = recorded.time_steps, False  # the same time budget: its fitted steps
    if time_steps is not None and (cap is None or time_steps <= cap):
        total, budget = time_steps, Budget.MAX_TIME
    elif cap is not None:
        total, budget = cap, (Budget.MAX_TIME if fit_time else cap_budget)
    else:  # --max-time alone, not fitted yet: one epoch (from here) until then
        total = (training.step if training else 0) + max(1, math.ceil(train_tokens / tokens_per_step))
        budget = Budget.MAX_TIME
    if training is None:
        segments: tuple[Segment, ...] = (
            Segment(0, total, warmup if warmup is not None else default_warmup(total, config.schedule)),
        )
    else:  # a checkpoint from before plans were recorded: one segment, as it was planned
        segments = recorded.segments or (
            Segment(0, training.total_steps or total, warmup if warmup is not None else 0),
        )
    schedule = Schedule.of(config, segments)
    if training is not None and not fit_time:  # a changed step budget re-plans from here (a time fit comes later)
        schedule = schedule.replanned(training.step, total, warmup if warmup is not None else schedule.warmup_steps)
    evals = [r for r in (training.metrics if training else []) if r.get("type") == "eval"]
    cadence = Cadence(
        config.eval_interval, config.save_interval,
        evals_per_run=recorded.evals_per_run or EVALS_PER_RUN,
        last_eval=recorded.last_eval if recorded.last_eval is not None else (evals[-1]["step"] if evals else 0),
        evals_done=recorded.evals_done if recorded.evals_done is not None else len(evals),
        eval_batches=int(config.eval_batches or recorded.eval_batches or EVAL_BATCHES),
    )
    # Fitted only in a new run evaluating on its own schedule: a resumed run keeps its windows, so its
    # validation losses stay comparable (and best.pth means the same).
    batches_fixed = config.eval_batches is not None or config.eval_interval is not None or training is not None
    return StepPlan(
        schedule=schedule, total_steps=total, budget=budget, cap=cap, cap_budget=cap_budget, max_time=config.max_time,
        time_steps=time_steps, fit_time=fit_time, warmup_fixed=warmup is not None or not fit_time, cadence=cadence,
        provisional=fit_time and (training is None or recorded.provisional),
        eval_batches_fixed=batches_fixed or not fit_time,
    )
