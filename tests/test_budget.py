"""--max-time as a budget: the plan as a pure function of measured times, and runs on a fake clock.

No test here looks at the wall clock: `FakeClock` advances only when the loop does work (a
training forward pass, an evaluation, a save), by amounts that add up exactly in binary, so a
run's times and every decision made from them are the same on every machine and every rerun.
"""

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
from io import StringIO

import pytest
import torch
from conftest import make_dataset
from rich.console import Console

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training import StepReport, TrainStart, ValidationDone, load_resume_checkpoint, resume_config, train
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training import subscribers as subscribers_module
from gpt2es_cli.training.budget import EVAL_BATCHES, Cadence, events_left
from gpt2es_cli.training.events import PlanFitted, PlanWarning, Saved
from gpt2es_cli.training.schedule import Schedule, Segment, learning_rate
from gpt2es_cli.training.time_budget import (
    CALIBRATION_STEPS,
    EVAL_SHARE,
    MIN_EVALS,
    SKIP_STEPS,
    Costs,
    Reading,
    TimeBudget,
    batches_for,
    evals_for,
    fit_steps,
    seconds_left,
    tolerance,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the plan, from numbers -----------------------------------------------------------------------


def test_events_left_counts_the_periodic_ones_and_the_final_one():
    assert events_left(0, 100, 10) == 10  # 10, 20, ..., 90 and the end (100)
    assert events_left(0, 95, 10) == 10  # 10, ..., 90 and the end (95)
    assert events_left(30, 100, 10) == 7  # 40, ..., 90 and the end
    assert events_left(99, 100, 10) == 1 and events_left(0, 100, 0) == 0


def test_fit_steps_fills_the_time_with_steps_evaluations_and_saves():
    no_evals = Cadence(eval_interval=0, save_interval=0)
    assert fit_steps(0, 0.0, 100.0, Costs(step=1.0, eval=0.0, save=0.0), no_evals) == 100
    assert fit_steps(0, 0.0, 100.0, Costs(step=1.0, eval=0.0, save=4.0), no_evals) == 96  # the final save
    every_10 = Cadence(eval_interval=10, save_interval=0)
    costs = Costs(step=1.0, eval=5.0, save=0.0)
    fitted = fit_steps(0, 0.0, 100.0, costs, every_10)
    assert fitted == 65 and seconds_left(0, 65, costs, every_10) == 100.0  # 65 steps + 7 evaluations
    assert seconds_left(0, 66, costs, every_10) > 100.0
    # From the middle of a run: what is left of the time, from where it stands.
    assert fit_steps(40, 60.0, 100.0, Costs(step=0.5, eval=0.0, save=0.0), no_evals) == 120
    # Nothing fits: one more step, so the schedule can still end (at min_lr).
    assert fit_steps(7, 99.0, 100.0, Costs(step=5.0, eval=0.0, save=0.0), no_evals) == 8


def evaluations(cadence, total, replan=None):
    """The steps a run of `total` steps evaluates at (the loop evaluates at the end); `replan`:
    (step, new total) to re-plan at."""
    steps = []
    for step in range(1, total):
        if replan and step == replan[0]:
            total = replan[1]
        if step >= total:
            break
        if cadence.eval_due(step, total):
            steps.append(step)
            cadence = cadence.evaluated(step)
    return [*steps, total]


def test_the_default_evaluations_are_spread_over_the_plan():
    assert evaluations(Cadence(None, None), 400) == list(range(20, 401, 20))  # every 5%
    at_410 = evaluations(Cadence(None, None), 410)
    assert len(at_410) == 20 and {b - a for a, b in itertools.pairwise([0, *at_410])} <= {20, 21, 22}
    fitted = Cadence(None, None, evals_per_run=10, last_eval=7)  # over the steps after a time fit at step 7
    assert evaluations(fitted, 100) == [17, 27, 37, 46, 55, 64, 73, 82, 91, 100]
    assert [fitted.evals_left(s, 100) for s in (7, 99)] == [10, 1]
    assert evaluations(Cadence(30, None), 100) == [30, 60, 90, 100] and evaluations(Cadence(0, None), 100) == [100]
    # A re-plan to fewer steps spaces the rest evenly again: none dropped, repeated or bunched.
    shrunk = evaluations(Cadence(None, None), 400, replan=(150, 300))
    assert shrunk[:7] == [20, 40, 60, 80, 100, 120, 140] and len(shrunk) == 20
    assert min(b - a for a, b in itertools.pairwise(shrunk)) >= 10
    timed = Cadence(0, None)  # saves every SAVE_EVERY seconds, and one at the end
    assert seconds_left(0, 1000, Costs(step=1.0, eval=0.0, save=10.0), timed) == 1000 + 10 * (1000 // 600 + 1)


NO_EVALS = Cadence(eval_interval=0, save_interval=0)


def feed(budget, seconds_per_step, steps, start=0, total=10_000, elapsed=0.0):
    """Readings of `steps` steps at a fixed speed; the fits they produce, and the plan's total after them."""
    fits = []
    for i in range(start, start + steps):
        elapsed += seconds_per_step
        fit = budget.observe(i, Reading(elapsed), total, NO_EVALS)
        if fit is not None:
            fits.append(fit)
            total = fit.total_steps
    return fits, total, elapsed


def test_expensive_evaluations_are_spaced_out():
    assert evals_for(1000.0, 1.0) == 20  # cheap: every 5%
    assert evals_for(1000.0, 8.0) == 12  # about 10% of the time
    assert evals_for(1000.0, 30.0) == MIN_EVALS  # at least 10 while they take at most half of it
    assert evals_for(200.0, 18.0) == 2  # 10 would take 180 of the 200 s: a quarter's worth (and a warning)
    assert evals_for(200.0, 18.0, done=3) == 5


def test_batches_per_evaluation_fit_ten_evaluations_in_a_tenth_of_the_time():
    assert batches_for(240.0, 1.0, 1.0, 20) == 1  # 2.4 s an evaluation, 1 s of it beside the batches
    assert batches_for(240.0, 0.1, 0.4, 20) == 20  # cheap batches: as many as asked
    assert batches_for(3600.0, 1.0, 1.0, 20) == 20
    assert batches_for(600.0, 1.0, 1.0, 20) == 5
    assert batches_for(10.0, 5.0, 3.0, 20) == 1  # never none


def test_the_time_budget_measures_after_the_first_steps_and_fits():
    budget = TimeBudget(100.0, cap=None, start_elapsed=0.0, batch_ratio=0.025, save_estimate=0.0)
    # The first steps are slow (start-up, torch.compile): they are not measured.
    slow = [budget.observe(i, Reading(2.0 * (i + 1)), 10_000, NO_EVALS) for i in range(SKIP_STEPS - 1)]
    assert slow == [None] * (SKIP_STEPS - 1)
    fits, _, _ = feed(budget, 0.5, CALIBRATION_STEPS + 1, start=SKIP_STEPS - 1, elapsed=2.0 * (SKIP_STEPS - 1))
    assert len(fits) == 1 and fits[0].first and fits[0].costs.step == 0.5
    fit = fits[0]
    assert fit.total_steps == fit.step + int((100.0 - fit.elapsed) / 0.5)  # the time left, in steps
    assert abs(fit.projected - 100.0) <= 0.5


def test_a_slowdown_re_plans_and_the_end_stays_on_the_budget():
    budget = TimeBudget(200.0, cap=None, start_elapsed=0.0, batch_ratio=0.025, save_estimate=0.0)
    fits, total, elapsed = feed(budget, 0.5, 100)
    assert [f.first for f in fits] == [True] and total == pytest.approx(400, abs=2)
    step = 100
    while step < total:  # the machine gets twice as slow
        elapsed += 1.0
        fit = budget.observe(step, Reading(elapsed), total, NO_EVALS)
        if fit is not None:
            fits.append(fit)
            total = fit.total_steps
        step += 1
    assert len(fits) >= 2 and not fits[-1].first and total < 300
    assert abs(elapsed - 200.0) <= tolerance(200.0)


def test_a_step_budget_caps_the_time_fit():
    budget = TimeBudget(1000.0, cap=50, start_elapsed=0.0, batch_ratio=0.025, save_estimate=0.0)
    fits, _, _ = feed(budget, 0.5, 20)
    assert fits[0].total_steps == 50 and fits[0].time_steps > 1000


# --- the schedule ---------------------------------------------------------------------------------


def schedule(*segments, kind="cosine"):
    return Schedule(lr=1.0, min_lr=0.1, kind=kind, decay_fraction=0.2, segments=segments)


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_one_segment_is_the_plain_schedule_and_a_re_plan_joins_without_a_jump(kind):
    plain = schedule(Segment(0, 100, 10), kind=kind)
    assert [plain(s) for s in range(120)] == [
        learning_rate(s, lr=1.0, min_lr=0.1, total_steps=100, warmup_steps=10, schedule=kind) for s in range(120)
    ]
    for start, total in ((5, 60), (50, 60), (50, 200), (90, 150)):  # in the warmup, shorter, longer, near the end
        replanned = plain.replanned(start, total, 10)
        rates = [replanned(s) for s in range(total)]
        assert rates[:start] == [plain(s) for s in range(start)]  # the past is kept
        steps = [abs(b - a) for a, b in itertools.pairwise(rates)]
        squeeze = max(1.0, (100 - start) / (total - start))
        assert max(steps) <= 0.1 * squeeze + 1e-9, (start, total)  # no jump: the warmup's slope, squeezed
        peak = rates.index(max(rates))
        assert all(b <= a + 1e-12 for a, b in itertools.pairwise(rates[peak:]))  # after the peak, only down
        assert rates[-1] == pytest.approx(0.1)  # annealed at the new end


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd", "onecycle"])
def test_no_re_plan_takes_the_rate_above_lr(kind):
    from gpt2es_cli.training.schedule import default_warmup

    # A provisional one-epoch plan past its short warmup, re-joined by a longer plan still warming up.
    first = schedule(Segment(0, 50, default_warmup(50, kind)), kind=kind)
    for start, total in ((9, 220), (30, 400), (49, 60)):
        replanned = first.replanned(start, total, default_warmup(total, kind), rejoin=True)
        assert max(replanned(s) for s in range(total)) <= 1.0 + 1e-12, (start, total)


def test_extending_a_finished_run_re_warms_then_anneals_again():
    done = schedule(Segment(0, 100, 10))
    assert done(99) == pytest.approx(0.1)
    extended = done.replanned(100, 300, 10)
    rates = [extended(s) for s in range(100, 300)]
    assert rates[0] < 0.2 and max(rates) > 0.7  # from min_lr up to the curve of a 300-step plan
    assert extended(115) == pytest.approx(schedule(Segment(0, 300, 10))(115))  # joined it after the warmup
    assert rates[-1] == pytest.approx(0.1)


# --- runs on a fake clock -------------------------------------------------------------------------


class FakeClock:
    """Time that passes only by work: `step` seconds a training pass, `evaluation` an evaluation,
    `save` a save of last.pth (subscribe it to the run so it sees evaluations and saves)."""

    def __init__(self, step=0.25, evaluation=1.0, save=0.5, per_batch=0.0):
        self.now = 0.0
        self.step, self.evaluation, self.save, self.per_batch = step, evaluation, save, per_batch

    def __call__(self):
        return self.now

    def subscriber(self, event):
        if isinstance(event, ValidationDone):
            self.now += self.evaluation
        elif isinstance(event, Saved) and not event.best:
            self.now += self.save


@pytest.fixture
def clocked(monkeypatch):
    """Install a FakeClock into training passes; returns a function that swaps in a new one."""
    monkeypatch.delitem(subscribers_module.REGISTRY, "plot")  # no loss.png: saves seconds of matplotlib
    holder = {}
    real = loop_module.compute_loss

    def timed(model, x, y):
        holder["clock"].now += holder["clock"].step
        return real(model, x, y)

    monkeypatch.setattr(loop_module, "compute_loss", timed)
    real_windows = loop_module._Trainer._validation_windows

    def windows(self):  # an evaluation also costs per_batch seconds a validation batch
        starts = real_windows(self)
        holder["clock"].now += holder["clock"].per_batch * math.ceil(len(starts) / self.config.batch_size)
        return starts

    monkeypatch.setattr(loop_module._Trainer, "_validation_windows", windows)

    def install(clock):
        holder["clock"] = clock
        return clock

    return install


def timed_run(dataset, out, **kw) -> TrainConfig:
    settings = dict(
        data=str(dataset), out=str(out), preset="tiny", batch_size=4, log_interval=1, eval_batches=2,
        sample_tokens=0, device="cpu", lr=3e-3, max_time=60.0,
    )
    settings.update(kw)
    return TrainConfig(**settings)


def run(config, clock, resume=None, extra=()):
    events = []
    summary = train(config, resume=resume, clock=clock, subscribers=[clock.subscriber, events.append, *extra])
    return summary, events


def records(run_dir, kind=None):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["type"] == kind]


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def test_a_time_budgeted_run_ends_annealed_evaluated_and_on_time(train_dataset, tmp_path, clocked):
    clock = clocked(FakeClock())
    summary, events = run(timed_run(train_dataset, tmp_path / "run"), clock)
    start, plans, reports = of(events, TrainStart)[0], of(events, PlanFitted), of(events, StepReport)
    assert start.fit_time and start.warmup_steps is None
    assert plans[0].first and plans[0].step == SKIP_STEPS + CALIBRATION_STEPS - 1
    assert plans[0].warmup_steps == max(1, plans[0].total_steps // 20)
    assert summary.stop_reason == "max_time" and summary.step == summary.total_steps == plans[-1].total_steps
    assert abs(summary.run_elapsed - 60.0) <= tolerance(60.0)
    assert summary.run_elapsed <= 60.0 + 1.0  # a constant speed is hit closely: within a few steps
    assert reports[-1].lr == pytest.approx(3e-4)  # min_lr = lr / 10
    assert reports[-1].step == reports[-1].total_steps  # the bar ends at 100%
    assert len(of(events, ValidationDone)) >= MIN_EVALS
    for r in reports:  # the ETA is honest from the first report: elapsed + eta is the end
        assert abs(r.elapsed + r.eta - summary.run_elapsed) <= 0.1 * 60.0, r
    assert not of(events, PlanWarning)
    assert [r["type"] for r in records(tmp_path / "run", "plan")] == ["plan"] * len(plans)


def test_short_budgets_evaluate_often_on_fewer_batches_and_resume_keeps_them(train_dataset, tmp_path, clocked):
    # 20 batches would cost 2 s an evaluation: 10 of them a third of the 60 s. The first fit lowers
    # the batches so that 10 take about a tenth; the measured cost then affords more evaluations.
    fake = dict(step=0.25, evaluation=0.2, save=0.0, per_batch=0.1)
    config = timed_run(train_dataset, tmp_path / "whole", eval_batches=None)
    whole, events = run(config, clocked(FakeClock(**fake)))
    plans, evals = of(events, PlanFitted), of(events, ValidationDone)
    batches = plans[0].eval_batches
    assert 1 <= batches < EVAL_BATCHES and all(p.eval_batches == batches for p in plans)
    assert len(evals) >= MIN_EVALS
    spent = len(evals) * (fake["evaluation"] + fake["per_batch"] * batches)
    assert spent <= 1.6 * EVAL_SHARE * 60.0  # about a tenth of the budget
    assert abs(whole.run_elapsed - 60.0) <= tolerance(60.0)
    assert {r["eval_batches"] for r in records(tmp_path / "whole", "plan")} == {batches}

    stop_at = plans[-1].step + 5

    def ctrl_c(event):
        if isinstance(event, StepReport) and event.step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    run(config.updated({"out": str(cut)}), clocked(FakeClock(**fake)), extra=[ctrl_c])
    checkpoint = load_resume_checkpoint(cut)
    assert checkpoint.training.plan["eval_batches"] == batches
    resumed, _ = run(resume_config(checkpoint, {}), clocked(FakeClock(**fake)), resume=checkpoint)
    assert resumed.step == whole.step
    assert records(cut) == records(tmp_path / "whole")  # the same windows: the same validation losses


def test_given_eval_batches_are_kept_under_a_time_budget(train_dataset, tmp_path, clocked):
    config = timed_run(train_dataset, tmp_path / "run", eval_batches=20)
    _, events = run(config, clocked(FakeClock(step=0.25, evaluation=0.2, save=0.0, per_batch=0.1)))
    assert {p.eval_batches for p in of(events, PlanFitted)} == {20}


def test_onecycle_is_fitted_to_the_time_too(train_dataset, tmp_path, clocked):
    summary, events = run(timed_run(train_dataset, tmp_path / "run", schedule="onecycle"), clocked(FakeClock()))
    plans, reports = of(events, PlanFitted), of(events, StepReport)
    assert plans[0].warmup_steps == round(0.3 * plans[0].total_steps)  # its rising phase: 30%
    assert summary.stop_reason == "max_time" and abs(summary.run_elapsed - 60.0) <= tolerance(60.0)
    assert reports[-1].lr == pytest.approx(3e-4) and max(r.lr for r in reports) == pytest.approx(3e-3, rel=0.05)


def test_killed_and_resumed_reproduces_the_run_exactly(train_dataset, tmp_path, clocked):
    config = timed_run(train_dataset, tmp_path / "whole", dropout=0.1, batch_size=2, global_batch=4)
    whole, events = run(config, clocked(FakeClock(step=0.125)))
    plans = of(events, PlanFitted)
    assert len(plans) >= 2  # the first evaluation cost more than estimated: re-planned once at least
    stop_at = plans[-1].step + 5

    def ctrl_c(event):
        if isinstance(event, StepReport) and event.step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    stopped, _ = run(config.updated({"out": str(cut)}), clocked(FakeClock(step=0.125)), extra=[ctrl_c])
    assert stopped.stop_reason == "interrupted" and stopped.step == stop_at + 1
    checkpoint = load_resume_checkpoint(cut)
    resumed, resumed_events = run(resume_config(checkpoint, {}), clocked(FakeClock(step=0.125)), resume=checkpoint)
    assert of(resumed_events, TrainStart)[0].start_step == stop_at + 1 and not of(resumed_events, PlanFitted)
    assert resumed.step == whole.step and resumed.stop_reason == "max_time"
    assert records(cut) == records(tmp_path / "whole")  # every record: losses, rates, evaluations, times


def test_a_hard_kill_resumes_from_the_last_save_exactly(train_dataset, tmp_path, clocked):
    # An evaluation as cheap as estimated (no re-plan) and free saves: the plan saved after the
    # fit is the whole plan, and the time a save takes is not in the checkpoint it writes.
    fake = dict(step=0.25, evaluation=0.125, save=0.0)
    config = timed_run(train_dataset, tmp_path / "whole")
    whole, events = run(config, clocked(FakeClock(**fake)))
    assert len(of(events, PlanFitted)) == 1

    class Killed(Exception):
        pass

    def kill(event):
        if isinstance(event, StepReport) and event.step == 40:
            raise Killed

    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        run(config.updated({"out": str(cut)}), clocked(FakeClock(**fake)), extra=[kill])
    checkpoint = load_resume_checkpoint(cut)
    assert checkpoint.training.step == SKIP_STEPS + CALIBRATION_STEPS  # saved right after the fit
    resumed, _ = run(resume_config(checkpoint, {}), clocked(FakeClock(**fake)), resume=checkpoint)
    assert resumed.step == whole.step
    assert records(cut) == records(tmp_path / "whole")


def test_a_run_stopped_before_its_fit_fits_on_resume(train_dataset, tmp_path, clocked):
    def ctrl_c(event):
        if isinstance(event, StepReport) and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    run_dir = tmp_path / "run"
    stopped, events = run(timed_run(train_dataset, run_dir), clocked(FakeClock()), extra=[ctrl_c])
    assert stopped.stop_reason == "interrupted" and not of(events, PlanFitted)
    checkpoint = load_resume_checkpoint(run_dir)
    assert checkpoint.training.plan["provisional"] and checkpoint.training.plan["time_steps"] is None
    resumed, events = run(resume_config(checkpoint, {}), clocked(FakeClock()), resume=checkpoint)
    assert of(events, PlanFitted)[0].first and resumed.stop_reason == "max_time"
    assert abs(resumed.run_elapsed - 60.0) <= tolerance(60.0)
    assert records(run_dir, "train")[-1]["lr"] == pytest.approx(3e-4)


def test_resuming_with_more_time_extends_and_anneals_again(train_dataset, tmp_path, clocked):
    run_dir = tmp_path / "run"
    first, _ = run(timed_run(train_dataset, run_dir), clocked(FakeClock()))
    checkpoint = load_resume_checkpoint(run_dir)
    more, events = run(resume_config(checkpoint, {"max_time": 150.0}), clocked(FakeClock()), resume=checkpoint)
    plans = of(events, PlanFitted)
    assert plans and plans[0].first and plans[0].step > first.step
    assert more.stop_reason == "max_time" and more.total_steps > 2 * first.total_steps
    assert abs(more.run_elapsed - 150.0) <= tolerance(150.0)
    rates = [r["lr"] for r in records(run_dir, "train") if r["step"] > first.step]
    assert rates[0] == pytest.approx(3e-4) and max(rates) > 1e-3  # from min_lr, re-warmed
    assert rates[-1] == pytest.approx(3e-4)  # and annealed at the new end
    # The same budget again: nothing left to train.
    checkpoint = load_resume_checkpoint(run_dir)
    from gpt2es_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="already"):
        train(resume_config(checkpoint, {}), resume=checkpoint, clock=FakeClock())


def test_an_impossible_plan_is_one_warning_up_front(train_dataset, tmp_path, clocked):
    clock = clocked(FakeClock(step=2.0))  # 60 s at 2 s a step: about 25 steps
    summary, events = run(timed_run(train_dataset, tmp_path / "run"), clock)
    warnings = of(events, PlanWarning)
    assert len(warnings) == 1 and "\n" not in warnings[0].message
    assert "steps fit in --max-time 1m" in warnings[0].message and "raise --max-time to at least" in warnings[0].message
    assert events.index(warnings[0]) < events.index(of(events, StepReport)[SKIP_STEPS + CALIBRATION_STEPS])
    assert summary.stop_reason == "max_time" and of(events, StepReport)[-1].lr == pytest.approx(3e-4)

    _, events = run(timed_run(train_dataset, tmp_path / "slow-evals"), clocked(FakeClock(evaluation=10.0)))
    (warning,) = of(events, PlanWarning)  # said once the first evaluation was timed
    assert re.search(r"only \d evaluations? fit \(10 s each; 10 would take 1m40s", warning.message)
    assert "fewer --eval-batches" in warning.message
    assert events.index(warning) < events.index(of(events, ValidationDone)[1])

    long_warmup = tmp_path / "warm"
    _, events = run(timed_run(train_dataset, long_warmup, warmup_steps=500), clocked(FakeClock()))
    (warning,) = of(events, PlanWarning)
    assert "warmup of 500 steps" in warning.message and "lower --warmup-steps" in warning.message


def test_the_display_says_what_the_plan_is(train_dataset, tmp_path, clocked, monkeypatch):
    from gpt2es_cli.cli import train_display

    out, err = StringIO(), StringIO()
    monkeypatch.setattr(train_display, "console", Console(file=out, width=300))
    monkeypatch.setattr(sys.modules["gpt2es_cli.cli.app"], "err_console", Console(file=err, width=300))
    display = train_display.TrainDisplay(live=False)
    summary, _ = run(timed_run(train_dataset, tmp_path / "run", max_time=30.0), clocked(FakeClock(step=1.0)),
                     extra=[display])
    train_display._render_summary(summary)
    text = out.getvalue()
    assert "steps fitted to 0m 30s after the first ones" in text
    assert "plan: " in text and "s/step" in text
    assert f"step {summary.total_steps}/{summary.total_steps} (100.0%)" in text
    assert "used its --max-time" in text and "of --max-time 0m 30s" in text
    assert "warning:" in err.getvalue()  # 30 steps at most fit: said once, on stderr
    assert err.getvalue().count("warning:") == 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_every_process_of_a_ddp_run_follows_the_main_process_s_plan(tmp_path, tiny_tokenizer, spanish_texts):
    # Real time here (a fake clock cannot cross processes): the check is that the two processes
    # agree on every decision made from the clock, or their collectives would not line up.
    data = make_dataset(tmp_path / "data", tiny_tokenizer, spanish_texts)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gpt2es_cli", "train", "--data", str(data), "--out", str(tmp_path / "two"), "--preset", "tiny",
            "--batch-size", "2", "--eval-batches", "2", "--sample-tokens", "0", "--device", "cpu", "--max-time", "8s"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("plan: ") == 1 and "used its --max-time" in done.stdout
    lines = records(tmp_path / "two")
    assert [r["type"] for r in lines].count("plan") >= 1
    assert [r for r in lines if r["type"] == "train"][-1]["lr"] == pytest.approx(6e-5)  # annealed: lr / 10


def test_a_re_plan_after_the_warmup_does_not_warn_about_the_warmup():
    """Late in a run the warmup is long done: little time left is no reason to warn about it."""
    from gpt2es_cli.training.time_budget import Fit, plan_warning

    late = Fit(step=990, total_steps=1000, time_steps=1000, cadence=Cadence(None, None, evals_per_run=20),
               costs=Costs(step=0.2, eval=3.0, save=0.5), elapsed=239.0, projected=240.0, first=False)
    assert plan_warning(late, 240.0, warmup_steps=7, given_warmup=False) is None
    early = Fit(step=10, total_steps=1000, time_steps=1000, cadence=Cadence(None, None, evals_per_run=20),
                costs=Costs(step=0.2, eval=3.0, save=0.5), elapsed=5.0, projected=240.0, first=True)
    warning = plan_warning(early, 240.0, warmup_steps=2000, given_warmup=True)
    assert warning is not None and "the warmup of 2000 steps" in warning and "lower --warmup-steps" in warning
