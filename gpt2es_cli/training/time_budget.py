"""Fitting a run's steps to --max-time: the run measures itself and plans the steps that end on time.

`TimeBudget` takes one `Reading` per step (the main process's clock and the seconds it spent
evaluating and saving, which `RunClock` keeps), skips the first steps of the invocation
(start-up, allocator warm-up, torch.compile), measures the next few and fits the number of steps
whose training, evaluations and final save end at the budget (`fit_steps`). Then it keeps
projecting the end and re-fits when the projection drifts from the budget by more than
`margin`. The time is the run's, summed over its invocations (as steps are). With automatic
evaluations the first fit also decides how many there are (10 to 20, as their measured cost
allows) and, in a new run, on how many validation batches (fewer when 10 of 20 batches would
take more than a tenth of the budget).

Nothing here reads the system clock or uses torch. Given the same readings it makes the same
decisions: tests drive it with a fake clock, and every process of a DDP run, given the main
process's readings, decides alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from gpt2es_cli.settings import duration_text
from gpt2es_cli.training.budget import EVALS_PER_RUN, SAVE_EVERY, Cadence, events_left

SKIP_STEPS = 3
"""Steps of each invocation that are not measured: start-up, warm-up and torch.compile run in them."""
CALIBRATION_STEPS = 7
"""Steps measured before the first fit (fewer when they take CALIBRATION_SHARE of the time left)."""
CALIBRATION_SHARE = 0.05
WINDOW_SHARE = 0.05
"""After the first fit, steps are timed over the last 5% of the planned ones (at least CALIBRATION_STEPS),
and a re-plan for speed waits as long after the previous fit."""
MIN_EVALS = 10
EVAL_SHARE = 0.10
"""With --max-time, evaluations are spaced out (down to MIN_EVALS) to take about this share of it."""
MIN_STEPS = 50
"""Fewer steps than this are not a schedule: the plan warns."""

# What a TimeBudget assumes of evaluations and saves until it has timed one.
SAVE_BYTES_PER_SECOND = 200e6
"""Write speed of a checkpoint."""
SAVED_COPIES = 3
"""A save writes the float32 weights and, in last.pth, AdamW's two moments of the same size."""
SAVE_SECONDS = 0.1
"""What a save costs beside its bytes."""
TRAINING_PASS_COST = 3
"""A training pass (forward and backward) costs about three forward passes."""
EVAL_SECONDS = 0.3
"""What an evaluation costs beside its batches and its sample: best.pth's metadata, the plot."""
SAMPLE_TOKEN_SECONDS = 1e-3
"""Each token of the sample shown at an evaluation, beside its compute."""
SAMPLE_TOKEN_PASSES = 16
"""A sampled token costs about as much as this many tokens of a batched forward pass."""


def tolerance(max_time: float) -> float:
    """How far from --max-time a run may end: 2% or 10 seconds, whichever is larger."""
    return max(0.02 * max_time, 10.0)


def margin(max_time: float) -> float:
    """A projected end further than this from the budget re-fits the plan (half the tolerance)."""
    return tolerance(max_time) / 2


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

    def values(self) -> list[float]:
        """Its numbers in a fixed order, to send to every process (see from_values)."""
        return [self.elapsed, self.eval_seconds, float(self.evals), self.save_seconds, float(self.saves)]

    @classmethod
    def from_values(cls, values: list[float]) -> Reading:
        elapsed, eval_seconds, evals, save_seconds, saves = values
        return cls(elapsed, eval_seconds, int(evals), save_seconds, int(saves))


class RunClock:
    """The run's time on the main process: seconds of training in this invocation and in the whole
    run (earlier invocations included), and those this invocation spent evaluating and saving."""

    def __init__(self, clock: Callable[[], float], started: float, before: float):
        self.now = clock
        self.started = started
        self.before = before
        """Seconds of training of the earlier invocations."""
        self.eval_seconds, self.evals, self.save_seconds, self.saves = 0.0, 0, 0.0, 0

    def elapsed(self) -> float:
        """Seconds of training in this invocation."""
        return self.now() - self.started

    def total(self) -> float:
        """Seconds of training in the whole run."""
        return self.before + self.elapsed()

    def reading(self) -> Reading:
        return Reading(self.total(), self.eval_seconds, self.evals, self.save_seconds, self.saves)


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

    @classmethod
    def for_run(cls, max_time: float, *, cap: int | None, start_elapsed: float, parameters: int, accum_steps: int,
                tokens_per_step: int, sample_tokens: int, world_size: int, fit_eval_batches: bool) -> TimeBudget:
        """The time budget of a run of a model of `parameters` whose step is `accum_steps` training
        passes over `tokens_per_step` tokens, each evaluation showing a sample of `sample_tokens`:
        until they are timed, evaluations and saves are estimated from those."""
        weights = 4 * parameters / SAVE_BYTES_PER_SECOND  # seconds to write the float32 weights
        return cls(
            max_time, cap=cap, start_elapsed=start_elapsed,
            batch_ratio=1 / (TRAINING_PASS_COST * accum_steps),
            save_estimate=SAVE_SECONDS + SAVED_COPIES * weights,
            eval_overhead=EVAL_SECONDS + weights + SAMPLE_TOKEN_SECONDS * sample_tokens,  # best.pth, plot, sample
            sample_ratio=SAMPLE_TOKEN_PASSES * sample_tokens / (TRAINING_PASS_COST * tokens_per_step),
            world_size=world_size, fit_eval_batches=fit_eval_batches,
        )

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
    spent = ""  # what the evaluations take of the time left, when that is the trouble
    if fit.time_steps < MIN_STEPS and fit.time_steps == fit.total_steps:
        evals = fit.cadence.evals_left(fit.step, fit.time_steps) if evaluates else 0
        share = evals * costs.eval / left if left > 0 else math.inf
        plural = "s" if evals != 1 else ""
        spent = "" if share < 0.25 else (f", {evals} evaluation{plural} of {costs.eval:.2g} s take "
                                         + (f"{share:.0%} of it" if share <= 1 else "longer than all of it"))
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
        if not spent:  # else the fix above already says so
            fixes.append("make evaluations cheaper (fewer --eval-batches)")
    warmup_left = max(0, warmup_steps - fit.step)  # a re-plan after the warmup has none left to warn about
    warmup_time = warmup_left * costs.step + (costs.eval if evaluates else 0.0)
    if warmup_left and (warmup_steps >= fit.total_steps or warmup_time > left):
        problems.append(f"the warmup of {warmup_steps} steps plus one evaluation take about "
                        f"{duration_text(warmup_time)}, more than the {duration_text(left)} left")
        raise_to = max(raise_to, fit.elapsed + 2 * warmup_time)
        if given_warmup:
            fixes.insert(0, "lower --warmup-steps")
    if not problems:
        return None
    fixes = list(dict.fromkeys([f"raise --max-time to at least {duration_text(raise_to)}", *fixes]))
    return "; ".join(problems) + ": " + ", or ".join(fixes)
