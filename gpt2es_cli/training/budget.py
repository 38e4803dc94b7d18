"""How many steps a run takes and how its learning rate falls along them, fitted to --max-time.

Budgets. `--max-steps`, `--max-tokens` and `--epochs` give a number of steps up front (the
smallest wins; one epoch when no budget at all is given). `--max-time` gives seconds, and how
many steps that is depends on this machine, so the run measures itself: `TimeBudget` takes
one `Reading` per step (the main process's clock and the seconds it spent evaluating and
saving), skips the first steps of the invocation (start-up, allocator warm-up, torch.compile),
measures the next few and fits the number of steps whose training, evaluations and final save
end at the budget (`fit_steps`). Then it keeps projecting the end and re-fits when the
projection drifts from the budget by more than `margin`. A step budget caps the fit: the one
that binds first wins. The time is the run's, summed over its invocations (as steps are).
Evaluations and saves follow the plan unless set (`Cadence`): 20 evaluations spread over the
planned steps (with --max-time 10 to 20, as their measured cost allows, each on fewer validation
batches when 10 of 20 batches would take more than a tenth of the budget), last.pth every
SAVE_EVERY seconds.

Schedule. The learning rate follows a `Schedule` of segments: the first, from step 0, is
planned for a number of steps and a warmup (optim.learning_rate draws the curve); each later
one starts at the step it was re-planned at, and never makes the rate jump. While the plan is
still running, a re-plan stretches (or squeezes) what is left of the curve to end at the new
total: the rate goes on from where it is, with the same shape (the rest of the warmup, the
stable part of wsd, the decay), annealed to min_lr on the new last step. When the old plan
had already ended (a finished run resumed with a larger budget), or when it was only a
placeholder (before the first time fit), the segment joins, linearly over a warmup's length,
the curve of a run planned for the new total from the start: a finished run re-warms from
min_lr to that curve and decays again.

Nothing here reads a clock or uses torch. Given the same readings it makes the same
decisions: tests drive it with a fake clock; every process of a DDP run, given the main
process's readings, decides alike; and a resumed run continues the plan recorded in its
checkpoint (`StepPlan.state`) instead of measuring again, so it steps exactly as the run
would have without the stop.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, replace
from typing import Any

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training.optim import default_warmup, learning_rate

SKIP_STEPS = 3
"""Steps of each invocation that are not measured: start-up, warm-up and torch.compile run in them."""
CALIBRATION_STEPS = 7
"""Steps measured before the first fit (fewer when they take CALIBRATION_SHARE of the time left)."""
CALIBRATION_SHARE = 0.05
WINDOW_SHARE = 0.05
"""After the first fit, steps are timed over the last 5% of the planned ones (at least CALIBRATION_STEPS),
and a re-plan for speed waits as long after the previous fit."""
EVALS_PER_RUN = 20
"""Default evaluations per run, spread evenly over the planned steps (every 5%), the last at the end."""
MIN_EVALS = 10
EVAL_SHARE = 0.10
"""With --max-time, evaluations are spaced out (down to MIN_EVALS) to take about this share of it."""
EVAL_BATCHES = 20
"""Validation batches per evaluation when --eval-batches is not given; with --max-time (and automatic
evaluations) the first fit lowers it, down to 1, so that MIN_EVALS evaluations take about EVAL_SHARE."""
SAVE_EVERY = 600.0
"""Default seconds between two saves of last.pth."""
MIN_STEPS = 50
"""Fewer steps than this are not a schedule: the plan warns."""
SAVE_BYTES_PER_SECOND = 200e6
"""For estimating a save before one was timed."""


def tolerance(max_time: float) -> float:
    """How far from --max-time a run may end: 2% or 10 seconds, whichever is larger."""
    return max(0.02 * max_time, 10.0)


def margin(max_time: float) -> float:
    """A projected end further than this from the budget re-fits the plan (half the tolerance)."""
    return tolerance(max_time) / 2


def duration_text(seconds: float) -> str:
    """Seconds as --max-time takes them: 45s, 4m, 3m30s, 1h30m."""
    seconds = max(1, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if m:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    return f"{s}s"


# --- the schedule --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """From optimizer step `start` (0-based) on, the rate ends at min_lr on step `total_steps` - 1:
    the previous segment's curve stretched to it (`stretch`), or the curve planned for
    `total_steps` with `warmup_steps` from step 0, joined from the previous rate over `join` steps."""

    start: int
    total_steps: int
    warmup_steps: int
    """The warmup (for a stretched segment: where its stretched warmup ends)."""
    join: int = 0
    stretch: bool = False


@dataclass(frozen=True)
class Schedule:
    """The learning rate of every step: warmup then `kind` to min_lr, re-planned piecewise."""

    lr: float
    min_lr: float
    kind: str
    decay_fraction: float
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        anchors: list[float] = []  # the rate at the step before each segment, which the segment joins
        for i, segment in enumerate(self.segments):
            anchors.append(0.0 if i == 0 else self._rate(segment.start - 1, i - 1, anchors))
        object.__setattr__(self, "_anchors", anchors)
        object.__setattr__(self, "_starts", [s.start for s in self.segments])

    @property
    def total_steps(self) -> int:
        return self.segments[-1].total_steps

    @property
    def warmup_steps(self) -> int:
        return self.segments[-1].warmup_steps

    def _base(self, segment: Segment, step: float) -> float:
        return learning_rate(
            step, lr=self.lr, min_lr=self.min_lr, total_steps=segment.total_steps,
            warmup_steps=segment.warmup_steps, schedule=self.kind, decay_fraction=self.decay_fraction,
        )

    def _rate(self, step: float, i: int, anchors: list[float]) -> float:
        segment = self.segments[i]
        if i > 0 and segment.stretch:  # the previous curve, from start - 1 to its end, over start - 1 to ours
            before = self.segments[i - 1].total_steps - segment.start
            virtual = segment.start - 1 + (step - segment.start + 1) * before / (segment.total_steps - segment.start)
            return self._rate(virtual, i - 1, anchors)
        base = self._base(segment, step)
        left = 1 - (step - segment.start + 1) / (segment.join + 1)  # share of the gap still to close
        if i == 0 or segment.join <= 0 or left <= 0:
            return base
        # never above the peak: a join from a higher rate onto a curve still rising would overshoot it
        return min(self.lr, base + (anchors[i] - self._base(segment, segment.start - 1)) * left)

    def __call__(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based)."""
        i = max(0, bisect.bisect_right(self._starts, step) - 1)  # type: ignore[attr-defined]
        return self._rate(step, i, self._anchors)  # type: ignore[attr-defined]

    def replanned(self, start: int, total_steps: int, warmup_steps: int, rejoin: bool = False) -> Schedule:
        """The schedule planned again from step `start` to end at `total_steps`: what is left of the
        current curve stretched to it, or (`rejoin`, or the current plan has ended, or only the warmup
        changes) the curve planned for `total_steps` with `warmup_steps`, joined over the warmup."""
        last = self.segments[-1]
        if (total_steps, warmup_steps) == (last.total_steps, last.warmup_steps):
            return self
        kept = tuple(s for s in self.segments if s.start < start)
        if not kept:
            return replace(self, segments=(Segment(0, total_steps, warmup_steps),))
        previous = kept[-1]
        if rejoin or start >= previous.total_steps or total_steps == previous.total_steps:
            join = max(0, min(max(warmup_steps, 1), total_steps - 1 - start))
            return replace(self, segments=(*kept, Segment(start, total_steps, warmup_steps, join)))
        warmup = previous.warmup_steps
        if start < warmup:  # the rest of the warmup stretches too
            warmup = start + math.ceil((warmup - start) * (total_steps - start) / (previous.total_steps - start))
        return replace(self, segments=(*kept, Segment(start, total_steps, warmup, stretch=True)))

    def state(self) -> list[dict[str, int]]:
        return [{k: int(v) for k, v in vars(s).items()} for s in self.segments]

    @classmethod
    def of(cls, config: TrainConfig, segments: list[dict[str, Any]] | tuple[Segment, ...]) -> Schedule:
        """The schedule `config` asks for (rate, floor, kind) over these segments (min_lr resolved)."""
        parts = tuple(s if isinstance(s, Segment) else Segment(**{
            k: bool(v) if k == "stretch" else int(v) for k, v in s.items()
        }) for s in segments)
        return cls(lr=config.peak_lr, min_lr=config.floor_lr, kind=config.schedule, decay_fraction=config.decay_fraction,
                   segments=parts)


# --- what the step plan is before the first step ----------------------------------------------------


def step_budgets(config: TrainConfig, train_tokens: int, tokens_per_step: int) -> dict[str, int]:
    """Steps each step budget allows: --max-steps, --max-tokens, --epochs (one epoch when no budget,
    not even --max-time, is given)."""
    budgets = {}
    if config.max_steps is not None:
        budgets["max_steps"] = config.max_steps
    if config.max_tokens is not None:
        budgets["max_tokens"] = math.ceil(config.max_tokens / tokens_per_step)
    if config.epochs is not None or (not budgets and config.max_time is None):
        budgets["epochs"] = math.ceil((config.epochs or 1.0) * train_tokens / tokens_per_step)
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

    def state(self) -> dict[str, int]:
        return {"evals_per_run": self.evals_per_run, "last_eval": self.last_eval, "evals_done": self.evals_done,
                "eval_batches": self.eval_batches}


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
    budget: str
    """The budget that sets the steps now: max_steps, max_tokens, epochs or max_time."""
    cap: int | None
    """The steps the step budgets allow (None: --max-time alone)."""
    cap_budget: str | None
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

    def fitted(self, fit: Fit, step: int, warmup_steps: int | None) -> StepPlan:
        """This plan after a time fit (re-planned from `step`; warmup: given, kept, or 5% of the fit)."""
        warmup = warmup_steps if warmup_steps is not None else (
            self.warmup_steps if self.warmup_fixed else default_warmup(fit.total_steps, self.schedule.kind)
        )
        budget = "max_time" if self.cap is None or fit.time_steps < self.cap else self.cap_budget or "max_time"
        schedule = self.schedule.replanned(step, fit.total_steps, warmup, rejoin=self.provisional)
        return replace(
            self, schedule=schedule, total_steps=fit.total_steps, budget=budget, time_steps=fit.time_steps,
            warmup_fixed=True, cadence=fit.cadence, provisional=False, eval_batches_fixed=True,
        )

    def evaluated(self, step: int) -> StepPlan:
        return replace(self, cadence=self.cadence.evaluated(step))

    def state(self) -> dict[str, Any]:
        """What last.pth records."""
        return {
            "segments": self.schedule.state(),
            "warmup_steps": self.warmup_steps if self.warmup_fixed else None,
            "max_time": self.max_time if self.time_steps is not None else None,
            "time_steps": self.time_steps,
            "provisional": self.provisional,
            **self.cadence.state(),
        }


def plan_steps(config: TrainConfig, budgets: dict[str, int], train_tokens: int, tokens_per_step: int,
               training: dict[str, Any] | None = None) -> StepPlan:
    """The step plan of a run about to start, or to resume from `training` (a checkpoint's).

    A resumed run keeps its recorded plan (so it steps as if it had never stopped) unless the budget
    changed: a new step budget re-plans from the current step; a new --max-time is fitted again.
    """
    cap_budget = min(budgets, key=budgets.__getitem__) if budgets else None
    cap = budgets[cap_budget] if cap_budget else None
    recorded = (training or {}).get("plan") or {}
    warmup = config.warmup_steps if config.warmup_steps is not None else recorded.get("warmup_steps")
    time_steps = None
    fit_time = config.max_time is not None
    if fit_time and recorded.get("time_steps") and recorded.get("max_time") == config.max_time:
        time_steps, fit_time = int(recorded["time_steps"]), False  # the same time budget: its fitted steps
    if time_steps is not None and (cap is None or time_steps <= cap):
        total, budget = time_steps, "max_time"
    elif cap is not None:
        total, budget = cap, ("max_time" if fit_time else cap_budget)
    else:  # --max-time alone, not fitted yet: one epoch (from here) until then
        total = (int(training["step"]) if training else 0) + max(1, math.ceil(train_tokens / tokens_per_step))
        budget = "max_time"
    if training is None:
        segments: Any = [Segment(0, total, warmup if warmup is not None else default_warmup(total, config.schedule))]
    else:  # a checkpoint from before plans were recorded: one segment, as it was planned
        segments = recorded.get("segments") or [
            Segment(0, int(training.get("total_steps") or total), warmup if warmup is not None else 0)
        ]
    schedule = Schedule.of(config, segments)
    if training is not None and not fit_time:  # a changed step budget re-plans from here (a time fit comes later)
        schedule = schedule.replanned(int(training["step"]), total, warmup if warmup is not None else schedule.warmup_steps)
    evals = [r for r in (training or {}).get("metrics") or [] if r.get("type") == "eval"]
    recorded_batches = recorded.get("eval_batches")
    cadence = Cadence(
        config.eval_interval, config.save_interval,
        evals_per_run=int(recorded.get("evals_per_run") or EVALS_PER_RUN),
        last_eval=int(recorded.get("last_eval", evals[-1]["step"] if evals else 0)),
        evals_done=int(recorded.get("evals_done", len(evals))),
        eval_batches=int(config.eval_batches or recorded_batches or EVAL_BATCHES),
    )
    # Fitted only in a new run evaluating on its own schedule: a resumed run keeps its windows, so its
    # validation losses stay comparable (and best.pth means the same).
    batches_fixed = config.eval_batches is not None or config.eval_interval is not None or training is not None
    return StepPlan(
        schedule=schedule, total_steps=total, budget=budget, cap=cap, cap_budget=cap_budget, max_time=config.max_time,
        time_steps=time_steps, fit_time=fit_time, warmup_fixed=warmup is not None or not fit_time, cadence=cadence,
        provisional=fit_time and (training is None or bool(recorded.get("provisional"))),
        eval_batches_fixed=batches_fixed or not fit_time,
    )


# --- fitting steps to time -------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """The main process's clock at one step, which every process gets."""

    elapsed: float
    """Seconds of training in the whole run (every invocation) so far."""
    eval_seconds: float = 0.0
    """Seconds spent evaluating (with the sample, the plot and best.pth) in this invocation."""
    evals: int = 0
    save_seconds: float = 0.0
    """Seconds spent writing last.pth in this invocation."""
    saves: int = 0


@dataclass(frozen=True)
class Costs:
    """Measured seconds: one optimizer step, one evaluation, one save of last.pth."""

    step: float
    eval: float
    save: float


def seconds_left(step: int, total_steps: int, costs: Costs, cadence: Cadence, since_save: float = 0.0) -> float:
    """Seconds from `step` to the end of a run of `total_steps`: its steps, evaluations and saves,
    the final ones included (`since_save`: seconds since last.pth was written, for timed saves)."""
    work = (total_steps - step) * costs.step + cadence.evals_left(step, total_steps) * costs.eval
    if cadence.save_interval is None:
        saves = int((since_save + work) // SAVE_EVERY) + 1
    else:
        saves = events_left(step, total_steps, cadence.save_interval) if cadence.save_interval else 1
    return work + saves * costs.save


def fit_steps(step: int, elapsed: float, deadline: float, costs: Costs, cadence: Cadence,
              since_save: float = 0.0) -> int:
    """The most steps (at least one more than `step`) whose remainder, evaluations and saves
    included, ends by `deadline` (seconds of training)."""
    def ends_in_time(total: int) -> bool:
        return elapsed + seconds_left(step, total, costs, cadence, since_save) <= deadline

    lo = step + 1
    if not ends_in_time(lo):
        return lo
    hi = step + int(max(0.0, deadline - elapsed) / max(costs.step, 1e-9)) + 2  # the steps alone overrun
    while hi - lo > 1:  # the largest total that ends in time (the end grows with the total)
        mid = (lo + hi) // 2
        if ends_in_time(mid):
            lo = mid
        else:
            hi = mid
    return lo


def evals_for(time_left: float, eval_seconds: float, done: int = 0) -> int:
    """Evaluations per run (`done` of them already): one every 5%, fewer when they would take more than
    about EVAL_SHARE of the time left, but MIN_EVALS while those take at most half of it; when even
    that is too much (the plan warns), as many as a quarter of the time allows, at least the last."""
    if eval_seconds <= 0:
        return EVALS_PER_RUN
    affordable = int(EVAL_SHARE * time_left // eval_seconds)
    if done + affordable >= MIN_EVALS:
        return min(EVALS_PER_RUN, done + affordable)
    if (MIN_EVALS - done) * eval_seconds <= 0.5 * time_left:
        return MIN_EVALS
    return done + max(1, int(0.25 * time_left // eval_seconds))


def batches_for(time_left: float, batch_seconds: float, overhead: float, most: int) -> int:
    """Validation batches per evaluation (1 to `most`) so that MIN_EVALS evaluations, each `overhead`
    seconds (the sample, best.pth, the plot) plus `batch_seconds` a batch, take about EVAL_SHARE of the
    time left: short budgets evaluate often on fewer windows rather than rarely on many."""
    per_eval = EVAL_SHARE * time_left / MIN_EVALS - overhead
    return max(1, min(most, math.floor(per_eval / max(batch_seconds, 1e-9) + 1e-9)))


@dataclass(frozen=True)
class Fit:
    """A plan fitted to the time budget."""

    step: int
    """The first step planned this way."""
    total_steps: int
    """The run's steps: the time fit, or the step budget when it binds first."""
    time_steps: int
    """The steps that fit in the time."""
    cadence: Cadence
    """The evaluations from here (spread over the fitted steps)."""
    costs: Costs
    elapsed: float
    """Seconds of training when it was fitted."""
    projected: float
    """Seconds of training at the planned end."""
    first: bool
    """The first fit of this invocation (after the measured steps), not a re-plan."""


class TimeBudget:
    """Fits a run's steps to --max-time from its readings, and re-fits when the end drifts.

    One per invocation that fits (a new run with --max-time, or a resume with a new one). Feed it
    every step's reading with `observe`; it returns a `Fit` when the plan is (re)made.
    """

    def __init__(self, max_time: float, *, cap: int | None, start_elapsed: float, batch_ratio: float,
                 save_estimate: float, eval_overhead: float = 0.0, sample_ratio: float = 0.0,
                 world_size: int = 1, fit_eval_batches: bool = False):
        self.max_time = max_time
        self.cap = cap
        self.start_elapsed = start_elapsed
        self.batch_ratio = batch_ratio
        """A validation batch's cost in steps (its forward pass / a step's forward and backward passes)."""
        self.eval_overhead = eval_overhead
        """Seconds an evaluation spends beside its batches (best.pth, the plot), until one was timed."""
        self.sample_ratio = sample_ratio
        """The sample's cost in steps."""
        self.world_size = world_size
        self.fit_eval_batches = fit_eval_batches
        """The first fit chooses the batches per evaluation (see batches_for)."""
        self.save_estimate = save_estimate
        self.cycles = 0
        """Steps attempted in this invocation (a step redone after a NaN counts again)."""
        self.readings: list[Reading] = []
        """The measured steps' readings (from the end of the skipped ones), the last window's worth."""
        self.last: Reading | None = None
        self.fit: Fit | None = None
        self.fit_cycle = 0
        self.timed = (0, 0)
        """Evaluations and saves timed (0, 1, or 2 for more) at the last fit."""
        self.first_eval: float | None = None
        """The first evaluation's seconds (one-off costs: imports, the first plot, warm-up)."""
        self.first_save: float | None = None

    def window(self) -> int:
        """Steps the step time is measured over: all measured ones until the first fit, then the
        last WINDOW_SHARE of the planned steps."""
        if self.fit is None:
            return max(1, len(self.readings) - 1)
        return max(CALIBRATION_STEPS, math.ceil(WINDOW_SHARE * self.fit.total_steps))

    def eval_estimate(self, step: float, batches: int) -> float:
        """Seconds of an evaluation of `batches` batches (shared among the processes), before one was timed."""
        return step * (self.batch_ratio * math.ceil(batches / self.world_size) + self.sample_ratio) + self.eval_overhead

    def costs(self, batches: int) -> Costs:
        """Step, evaluation (of `batches` batches) and save seconds as measured (estimated where not
        timed yet)."""
        now = self.last
        assert now is not None and len(self.readings) >= 2
        n = min(len(self.readings) - 1, self.window())
        start = self.readings[-1 - n]
        spent = (now.elapsed - start.elapsed) - (now.eval_seconds - start.eval_seconds) - (
            now.save_seconds - start.save_seconds
        )
        step = max(spent / n, 1e-9)
        return Costs(
            step=step,
            eval=_mean(now.eval_seconds, now.evals, self.first_eval, self.eval_estimate(step, batches)),
            save=_mean(now.save_seconds, now.saves, self.first_save, self.save_estimate),
        )

    def observe(self, step: int, reading: Reading, total_steps: int, cadence: Cadence,
                since_save: float = 0.0) -> Fit | None:
        """Take the reading of the step computing optimizer step `step` (0-based) in a plan of
        `total_steps` evaluated as `cadence` says (`since_save`: seconds since last.pth was
        written); return a Fit when the plan should change from this step on."""
        self.cycles += 1
        previous, self.last = self.last, reading
        if reading.evals == 1 and self.first_eval is None:
            self.first_eval = reading.eval_seconds - (previous.eval_seconds if previous else 0.0)
        if reading.saves == 1 and self.first_save is None:
            self.first_save = reading.save_seconds - (previous.save_seconds if previous else 0.0)
        if not self.readings:
            used = reading.elapsed - self.start_elapsed
            if self.cycles >= SKIP_STEPS or used >= CALIBRATION_SHARE * (self.max_time - self.start_elapsed):
                self.readings.append(reading)  # measuring starts here
            return None
        self.readings.append(reading)
        del self.readings[: -self.window() - 1]
        if self.fit is None:
            measured = len(self.readings) - 1
            spent = self.costs(cadence.eval_batches).step * measured
            if measured < CALIBRATION_STEPS and spent < CALIBRATION_SHARE * (self.max_time - reading.elapsed):
                return None
            return self._fit(step, reading, cadence, since_save)
        newly_timed = _timed(reading) != self.timed  # an estimate became a measurement, or a better one
        if not newly_timed and self.cycles - self.fit_cycle < self.window():
            return None
        if abs(self.projected_end(step, total_steps, cadence, since_save) - self.max_time) <= margin(self.max_time):
            return None
        fit = self._fit(step, reading, cadence, since_save)
        return fit if fit.total_steps != total_steps or fit.cadence != cadence else None

    def _fit(self, step: int, reading: Reading, cadence: Cadence, since_save: float) -> Fit:
        first = self.fit is None
        if first and self.fit_eval_batches and cadence.eval_interval is None:
            step_seconds = self.costs(cadence.eval_batches).step
            batches = batches_for(self.max_time - reading.elapsed, step_seconds * self.batch_ratio / self.world_size,
                                  self.eval_overhead + step_seconds * self.sample_ratio, cadence.eval_batches)
            cadence = replace(cadence, eval_batches=batches)
        costs = self.costs(cadence.eval_batches)
        if cadence.eval_interval is None and (first or _timed(reading)[0] != self.timed[0]):
            # how many evaluations the time affords: decided at the first fit, again once one was timed;
            # from the first fit on, they are spread over the fitted steps
            done = 0 if first else cadence.evals_done
            evals = evals_for(self.max_time - reading.elapsed, costs.eval, done)
            cadence = replace(cadence, evals_per_run=evals, **({"last_eval": step, "evals_done": 0} if first else {}))
        time_steps = fit_steps(step, reading.elapsed, self.max_time, costs, cadence, since_save)
        total = min(time_steps, self.cap) if self.cap is not None else time_steps
        self.fit = Fit(
            step=step, total_steps=total, time_steps=time_steps, cadence=cadence, costs=costs, elapsed=reading.elapsed,
            projected=reading.elapsed + seconds_left(step, total, costs, cadence, since_save), first=first,
        )
        self.fit_cycle = self.cycles
        self.timed = _timed(reading)
        return self.fit

    def projected_end(self, step: int, total_steps: int, cadence: Cadence, since_save: float = 0.0) -> float:
        """Seconds of training at the end of a plan of `total_steps`, at the speed measured."""
        assert self.last is not None
        if self.fit is None:
            return max(self.max_time, self.last.elapsed)
        return self.last.elapsed + seconds_left(step, total_steps, self.costs(cadence.eval_batches), cadence, since_save)

    def eta(self, step: int, total_steps: int, cadence: Cadence, elapsed: float, since_save: float = 0.0) -> float:
        """Seconds until the run ends (before the fit: until the budget)."""
        if self.fit is None or self.last is None:
            return max(0.0, self.max_time - elapsed)
        return seconds_left(step, total_steps, self.costs(cadence.eval_batches), cadence, since_save)

    def out_of_time(self, reading: Reading, evaluates: bool) -> bool:
        """Stopping now (final evaluation and save) would already end past the budget's tolerance:
        the plan could not keep up (steps slowed down suddenly), so the run stops where it is."""
        final = 0.0
        if self.fit is not None:
            costs = self.costs(self.fit.cadence.eval_batches)
            final = costs.save + (costs.eval if evaluates else 0.0)
        return reading.elapsed + final > self.max_time + margin(self.max_time)


def _timed(reading: Reading) -> tuple[int, int]:
    return min(reading.evals, 2), min(reading.saves, 2)


def _mean(seconds: float, count: int, first: float | None, estimate: float) -> float:
    """Seconds of one evaluation (or save): the mean of those after the first (which carries one-off
    costs) once there are some, else the first, else the estimate."""
    if count >= 2 and first is not None:
        return (seconds - first) / (count - 1)
    return seconds / count if count else estimate


def plan_warning(fit: Fit, max_time: float, warmup_steps: int, given_warmup: bool) -> str | None:
    """One line saying what to change when the fitted plan cannot work, else None: fewer than
    MIN_STEPS steps fit, or the warmup and one evaluation take longer than the time left."""
    costs, left = fit.costs, max_time - fit.elapsed
    evaluates = fit.cadence.eval_interval != 0
    problems, fixes, raise_to = [], [], 0.0
    if fit.time_steps < MIN_STEPS and fit.time_steps == fit.total_steps:
        evals = fit.cadence.evals_left(fit.step, fit.time_steps) if evaluates else 0
        share = evals * costs.eval / max(left, 1e-9)
        spent = f", {evals} evaluations of {costs.eval:.2g} s take {share:.0%} of it" if share >= 0.25 else ""
        problems.append(f"only {fit.time_steps} steps fit in --max-time {duration_text(max_time)} "
                        f"({costs.step:.2g} s a step{spent}), too few for a learning-rate schedule")
        need = (MIN_STEPS - fit.step) * costs.step + (evals * costs.eval) + costs.save
        raise_to = max(raise_to, fit.elapsed + need)
        fixes.append("make steps faster (a smaller --preset, --batch-size or --seq-len)")
        if spent:
            fixes.append("make evaluations cheaper (fewer --eval-batches) or rarer (--eval-interval)")
    automatic = fit.cadence.eval_interval is None
    if automatic and fit.cadence.evals_per_run < MIN_EVALS:
        n = fit.cadence.evals_per_run
        problems.append(f"only {n} evaluation{'s' if n != 1 else ''} fit ({costs.eval:.2g} s each; {MIN_EVALS} would "
                        f"take {duration_text(MIN_EVALS * costs.eval)} of the {duration_text(left)} left)")
        raise_to = max(raise_to, fit.elapsed + 2 * MIN_EVALS * costs.eval)
        fixes.append("make evaluations cheaper (fewer --eval-batches)")
    warmup_time = max(0, warmup_steps - fit.step) * costs.step + (costs.eval if evaluates else 0.0)
    if warmup_steps >= fit.total_steps or warmup_time > left:
        problems.append(f"the warmup of {warmup_steps} steps plus one evaluation take about "
                        f"{duration_text(warmup_time)}, more than the {duration_text(left)} left")
        raise_to = max(raise_to, fit.elapsed + 2 * warmup_time)
        if given_warmup:
            fixes.insert(0, "lower --warmup-steps")
    if not problems:
        return None
    fixes = list(dict.fromkeys([f"raise --max-time to at least {duration_text(raise_to)}", *fixes]))
    return "; ".join(problems) + ": " + ", or ".join(fixes)
