"""The training loop: a library function that emits typed events and returns a summary.

`train(config)` plans the run (see plan.py), then steps: each optimizer step reads the next
`global_batch` windows (every process its own share), runs `accum_steps` forward/backward
passes under autocast (gradients synchronised only on the last), clips, and steps the
optimizer (AdamW, or Muon + AdamW: optim.py) at the scheduled learning rate. Around it: rollback on a non-finite loss, progress reports,
evaluation on fixed validation windows with a sample, checkpoints, and a clean stop on
Ctrl-C or SIGTERM.

How many steps, and the rate of each, is the step plan's business (budget.py): with --max-time
the loop hands every step's reading of the main process's clock (shared with every process in
the step's all-reduce) to a `TimeBudget`, which fits the steps to the time and re-fits them;
the plan goes into last.pth, so a resumed run continues it instead of measuring again. The
clock is `train`'s argument, so tests can pass a fake one.

How the work is spread over processes is parallel.py's business: the loop holds a `Parallel`
and does not know whether it runs alone or under DDP. What it reports are events (events.py)
for its subscribers, on the main process only: the run's loggers (subscribers/, e.g.
metrics.jsonl and loss.png) and any passed to `train`. Nothing here prints.

The metrics records of every event are kept here, as part of the training state: they go
into last.pth under "metrics" (resume rewrites metrics.jsonl from them; `inspect` reads them).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from gpt2es_cli.checkpoint import Checkpoint, save_checkpoint
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.data.batches import TokenWindows, WindowSampler, fixed_windows
from gpt2es_cli.device import Precision, configure_backends, select_precision
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.generate import GenerationConfig, generate
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.budget import (
    SAVE_BYTES_PER_SECOND,
    SAVE_EVERY,
    Reading,
    TimeBudget,
    plan_warning,
)
from gpt2es_cli.training.clipping import GradClip
from gpt2es_cli.training.events import (
    Event,
    PlanFitted,
    PlanWarning,
    Recovery,
    Saved,
    StepReport,
    TrainEnd,
    TrainStart,
    TrainSummary,
    ValidationDone,
)
from gpt2es_cli.training.metrics import IntervalMeter, peak_flops
from gpt2es_cli.training.optim import build_optimizer, set_learning_rate
from gpt2es_cli.training.parallel import Parallel, init_parallel
from gpt2es_cli.training.plan import RunPlan, plan_run
from gpt2es_cli.training.rundir import RunDirectory
from gpt2es_cli.training.subscribers import Subscriber, run_loggers

SMOOTHING = 0.9
"""Weight of the past in the smoothed (exponential moving average) training loss."""


def compute_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of targets y (B, T) given inputs x (B, T), fused with the
    output head (no logits are built)."""
    return model(x, targets=y)


def train(
    config: TrainConfig,
    *,
    resume: Checkpoint | None = None,
    force: bool = False,
    subscribers: Sequence[Subscriber] = (),
    clock: Callable[[], float] = time.perf_counter,
) -> TrainSummary:
    """Train a model as `config` says (continuing `resume` if given); return how it ended.

    Under torchrun every process calls this; only the main one writes files and sends events,
    first to the run's loggers (metrics.jsonl, loss.png), then to `subscribers` in order.
    `clock` gives seconds; the run's time (and --max-time) counts from this call.
    """
    started = clock()
    precision = select_precision(config.device, config.amp, config.dtype)
    parallel = init_parallel(precision.device.type)
    try:
        precision = replace(precision, device=parallel.local_device(precision.device))
        plan = plan_run(config, world_size=parallel.world_size, resume=resume, force=force)
        parallel.barrier()  # every process has checked the run before the main one writes anything
        listeners = [*run_loggers(plan.config.log_to), *subscribers] if parallel.is_main else []
        trainer = _Trainer(plan, precision, parallel, listeners, clock, started)
        summary = trainer.run()
        parallel.barrier()  # leave together: a process whose peer already tore down its group can abort at exit
        return summary
    finally:
        parallel.shutdown()


class _StopSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step and save;
    a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _clone_to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _clone_to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_to_cpu(v) for v in value)
    return value


@dataclass(frozen=True)
class _StepResult:
    """One step's forward/backward, agreed on by every process (before the optimizer steps)."""

    loss: float
    """Mean over the micro-batches and processes."""
    grad_norm: float
    stop_asked: bool
    """Ctrl-C or SIGTERM in some process."""
    reading: Reading
    """The main process's clock during this step."""
    clip_limit: float = math.inf
    """The gradient-norm limit this step was clipped at."""


class _Trainer:
    def __init__(self, plan: RunPlan, precision: Precision, parallel: Parallel, subscribers: list[Subscriber],
                 clock: Callable[[], float] = time.perf_counter, started: float | None = None):
        self.clock = clock
        self.t0 = clock() if started is None else started
        self.plan = plan
        self.config = config = plan.config
        self.precision = precision
        self.device = precision.device
        self.parallel = parallel
        self.subscribers = subscribers
        self.run_dir = plan.run_dir
        configure_backends(self.device)

        # Same initial weights in every process; the full weights load before wrapping.
        torch.manual_seed(config.seed)
        model = GPT2(plan.model_config)
        if plan.init_weights is not None:
            model.load_state_dict(plan.init_weights)
        if plan.resume is not None:
            model.load_state_dict(plan.resume.model_state)
        self.model = model.to(self.device).train()
        self.model.activation_checkpointing = config.activation_checkpointing  # training passes only
        self.clip = GradClip(config.grad_clip)
        self.last_clip = math.inf
        # Dropout differs between processes (they see different windows); a fixed seed each.
        torch.manual_seed(config.seed + 1 + parallel.rank)
        self.step_model = parallel.wrap(self.model, compile=config.compile)
        self.optimizer = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision.needs_grad_scaler)

        dataset = plan.dataset
        self.train_windows = TokenWindows.open(dataset, "train", config.seq_len)
        self.sampler = WindowSampler(dataset.num_tokens("train"), config.seq_len, config.seed)
        self.val_windows = TokenWindows.open(dataset, "val", config.seq_len)
        self._val_starts: tuple[int, np.ndarray] | None = None
        self.flops_per_token = self.model.flops_per_token(config.seq_len)
        self.peak_flops = peak_flops(config.peak_tflops, self.device)

        self.step = 0
        self.tokens_seen = 0
        self.lr_scale = 1.0
        self.smoothed: float | None = None
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.recoveries = 0
        self.recoveries_since_good = 0
        self.elapsed_before = 0.0
        self.history: list[dict[str, Any]] = []
        """The metrics record of every event so far (a resumed run starts with its checkpoint's)."""
        if plan.resume is not None:
            self._restore(plan.resume.training)
        self.start_step = self.step
        self.good: dict[str, Any] = {}
        self.meter = IntervalMeter()
        if plan.resume is not None and plan.resume.training.get("meter"):
            self.meter.load_state_dict(plan.resume.training["meter"])  # the log interval in progress
        self.last_eval_step = -1

        # The step plan (budget.py): schedule and steps, fitted to --max-time by `timer` when it binds.
        self.steps = plan.steps
        self.eval_seconds, self.evals, self.save_seconds, self.saves = 0.0, 0, 0.0, 0  # this invocation's
        self.last_save_elapsed = self.elapsed_before
        self.saved = False
        """last.pth was written in this invocation."""
        self._run_dir: RunDirectory | None = None
        """The main process's hold on the run directory (what a failed start puts back)."""
        self.save_now = False
        self.warned = False
        self.timer: TimeBudget | None = None
        if self.steps.fit_time:
            assert config.max_time is not None
            weights = 4 * self.model.num_parameters() / SAVE_BYTES_PER_SECOND
            self.timer = TimeBudget(
                config.max_time, cap=self.steps.cap, start_elapsed=self.elapsed_before,
                batch_ratio=1 / (3 * plan.accum_steps),  # a forward-only pass vs a step's forward+backward passes
                save_estimate=0.1 + 3 * weights,  # weights + AdamW's two moments
                # best.pth and the plot; the sample's tokens each cost ~16x their share of a batched forward pass
                eval_overhead=0.3 + weights + 1e-3 * config.sample_tokens,
                sample_ratio=16 * config.sample_tokens / (3 * plan.tokens_per_step),
                world_size=parallel.world_size, fit_eval_batches=not self.steps.eval_batches_fixed,
            )

    # --- state -----------------------------------------------------------------------------

    def _restore(self, training: dict[str, Any]) -> None:
        self.parallel.load_optimizer_state_dict(self.optimizer, training["optimizer"])
        if training.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(training["scaler"])
        self.step = int(training["step"])
        self.tokens_seen = int(training["tokens_seen"])
        self.lr_scale = float(training.get("lr_scale", 1.0))
        self.smoothed = training.get("smoothed_loss")
        self.best_val_loss = training.get("best_val_loss")
        self.last_val_loss = training.get("val_loss")
        self.recoveries = int(training.get("recoveries", 0))
        self.elapsed_before = float(training.get("elapsed", 0.0))
        self.sampler.load_state_dict(training["data"])
        self.clip.load_state_dict(training.get("clip"))
        rng = training.get("rng") or []
        rank = self.parallel.rank
        if len(rng) == self.parallel.world_size:  # same process count: continue each stream exactly
            mine = rng[rank]
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            torch.manual_seed(self.config.seed + 1 + rank + 1000 * self.step)
        self.history = list(training.get("metrics") or [])

    def _rng_state(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _training_state(self) -> dict[str, Any]:
        """Everything --resume needs, as plain data (weights_only-safe). Every process calls it."""
        rng = self.parallel.all_gather(self._rng_state())
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "total_steps": self.steps.total_steps,
            "plan": self.steps.state(),
            "optimizer": self.parallel.optimizer_state_dict(self.optimizer),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "lr_scale": self.lr_scale,
            "smoothed_loss": self.smoothed,
            "best_val_loss": self.best_val_loss,
            "val_loss": self.last_val_loss,
            "recoveries": self.recoveries,
            "elapsed": self._total_elapsed(),
            "data": self.sampler.state_dict(),
            "rng": rng,
            "world_size": self.parallel.world_size,
            "dataset": {
                "path": str(self.plan.dataset.path),
                "train_sha256": self.plan.dataset.meta["splits"]["train"]["sha256"],
            },
            "metrics": self.history,
            "meter": self.meter.state_dict(),
            "clip": self.clip.state_dict(),
        }

    def _extra(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "dataset": str(self.plan.dataset.path),
            "val_loss": self.last_val_loss,
        }

    def _snapshot(self) -> None:
        """Remember this as the last good state (in memory), for rollback after a NaN."""
        self.good = {
            "model": _clone_to_cpu(self.model.state_dict()),
            "optimizer": _clone_to_cpu(self.optimizer.state_dict()),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "clip": self.clip.state_dict(),
        }
        self.recoveries_since_good = 0

    def _rollback(self) -> None:
        self.model.load_state_dict(self.good["model"])
        # A copy: on CPU load_state_dict adopts the tensors it is given, and later steps would
        # change the snapshot a second rollback needs.
        self.optimizer.load_state_dict(_clone_to_cpu(self.good["optimizer"]))
        self.step = self.good["step"]
        self.tokens_seen = self.good["tokens_seen"]
        self.clip.load_state_dict(self.good["clip"])

    # --- helpers ---------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        record = event.record()
        if record is not None:
            self.history.append(record)
        for subscriber in self.subscribers:
            subscriber(event)

    def _elapsed(self) -> float:
        """Seconds of training in this invocation."""
        return self.clock() - self.t0

    def _total_elapsed(self) -> float:
        """Seconds of training in the whole run."""
        return self.elapsed_before + self._elapsed()

    def _lr(self) -> float:
        return self.lr_scale * self.steps.schedule(self.step)

    def _every(self, interval: int | None) -> bool:
        return bool(interval) and self.step % interval == 0

    def _eval_due(self) -> bool:
        """--eval-interval, else the next of the evaluations spread over the planned steps (none while
        the steps are not fitted to --max-time yet)."""
        if self.config.eval_interval is None and self.timer is not None and self.timer.fit is None:
            return False
        return self.steps.cadence.eval_due(self.step, self.steps.total_steps)

    def _save_due(self, reading: Reading) -> bool:
        """--save-interval steps, or SAVE_EVERY seconds without one; right after the first time fit
        (which times a save and records the plan)."""
        interval = self.config.save_interval
        if interval is None:
            return self.save_now or reading.elapsed - self.last_save_elapsed >= SAVE_EVERY
        return (self.save_now and interval != 0) or self._every(interval)

    def _too_big(self) -> str:
        c = self.config
        return (
            f"a batch of {c.batch_size} windows x {c.seq_len} tokens does not fit in {self.device.type} memory: "
            f"lower --batch-size (--global-batch {c.global_batch} is kept by accumulating gradients) or --seq-len"
        )

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> TrainSummary:
        try:
            self._start()
            stop_reason = self._steps()
            return self._finish(stop_reason)
        except BaseException:
            if self._run_dir is not None:
                self._run_dir.restore()  # nothing was saved: the directory goes back to what it held
            raise
        finally:
            self.train_windows.close()
            self.val_windows.close()

    def _start(self) -> None:
        if self.parallel.is_main:
            self._prepare_run_dir()
        plan = self.plan
        self._emit(TrainStart(
            run_dir=self.run_dir, config=self.config, num_parameters=self.model.num_parameters(),
            device=str(self.device), precision=self.precision.name, world_size=self.parallel.world_size,
            accum_steps=plan.accum_steps, tokens_per_step=plan.tokens_per_step, total_steps=self.steps.total_steps,
            budget=self.steps.budget, train_tokens=plan.dataset.num_tokens("train"), start_step=self.start_step,
            history=tuple(self.history), start_tokens=self.tokens_seen,
            warmup_steps=self.steps.warmup_steps if self.steps.warmup_fixed else None,
            max_time=self.config.max_time, fit_time=self.steps.fit_time, cap_steps=self.steps.cap,
            cap_budget=self.steps.cap_budget, batch_choice=plan.batch_choice, size_choice=plan.size_choice,
        ))
        self._snapshot()

    def _prepare_run_dir(self) -> None:
        self._run_dir = RunDirectory.open(self.run_dir, continuing=self.plan.continuing)
        text = (
            "# gpt2es train settings, every default resolved. Reuse with:\n"
            f"#   gpt2es train --config {self.run_dir / 'config.yaml'} --out runs/NEW\n"
            + yaml.safe_dump(self.config.to_dict(), sort_keys=False, allow_unicode=True)
        )
        atomic_write(self.run_dir / "config.yaml", lambda f: f.write(text.encode("utf-8")))

    def _steps(self) -> str:
        """Step until the budget is spent or something stops the run; return why it stopped."""
        c = self.config
        with _StopSignal() as stop:
            while self.step < self.steps.total_steps or self._measuring():
                t_step = self.clock()
                result = self._forward_backward(stop.requested)
                self._follow_plan(result.reading)  # may re-plan the steps from this one on
                out_of_time = self.timer is not None and self.timer.out_of_time(result.reading, c.eval_interval != 0)
                stop_reason = "interrupted" if result.stop_asked else "out_of_time" if out_of_time else None
                if not self._finite(result):
                    if not self._recover(result):
                        return "diverged"
                    if stop_reason:
                        return stop_reason
                    continue
                lr = self._optimizer_step()
                self.clip.update(result.grad_norm)
                self.meter.add(result.loss, self.plan.tokens_per_step, self.clock() - t_step,
                               clipped=result.grad_norm > result.clip_limit)
                self.last_clip = result.clip_limit
                self.smoothed = (
                    result.loss if self.smoothed is None else SMOOTHING * self.smoothed + (1 - SMOOTHING) * result.loss
                )
                done = self.step >= self.steps.total_steps and not self._measuring()
                if done and stop_reason == "out_of_time":
                    stop_reason = None  # the plan's last step: the run ends as planned
                if self._every(c.log_interval) or done or stop_reason:
                    # An interrupted run's last report is shown only: the resumed run logs as if uninterrupted.
                    self._report(lr, result.grad_norm, logged=bool(done or self._every(c.log_interval)
                                                                   or stop_reason != "interrupted"))
                if stop_reason:
                    return stop_reason
                if done:
                    break
                if self._eval_due():
                    self._validate()
                    self.steps = self.steps.evaluated(self.step)
                if self._save_due(result.reading):
                    self.last_save_elapsed = result.reading.elapsed
                    self._save_last()
                    self._snapshot()
        return self.steps.budget

    def _measuring(self) -> bool:
        """--max-time alone, before its fit: the provisional steps do not end the run."""
        return self.timer is not None and self.timer.fit is None and self.steps.cap is None

    def _follow_plan(self, reading: Reading) -> None:
        """Hand the step's reading to the time budget; a (re)fitted plan applies from this step on."""
        self.save_now = False
        if self.timer is None:
            return
        fit = self.timer.observe(
            self.step, reading, self.steps.total_steps, self.steps.cadence, reading.elapsed - self.last_save_elapsed
        )
        if fit is None:
            return
        c = self.config
        self.steps = self.steps.fitted(fit, self.step, c.warmup_steps)
        assert c.max_time is not None
        self._emit(PlanFitted(
            step=fit.step, total_steps=self.steps.total_steps, time_steps=fit.time_steps, budget=self.steps.budget,
            warmup_steps=self.steps.warmup_steps, step_time=fit.costs.step,
            evals=fit.cadence.evals_left(self.step, self.steps.total_steps) if c.eval_interval != 0 else 0,
            eval_batches=fit.cadence.eval_batches,
            eval_time=fit.costs.eval, save_time=fit.costs.save, elapsed=fit.elapsed, projected=fit.projected,
            max_time=c.max_time, first=fit.first,
        ))
        warning = None if self.warned else plan_warning(fit, c.max_time, self.steps.warmup_steps,
                                                        c.warmup_steps is not None)
        if warning:  # once, as soon as a fit (the first, or one with measured evaluations) shows it
            self.warned = True
            self._emit(PlanWarning(warning))
        if fit.first:
            self.save_now = True  # records the plan, and times a save for the next fits

    def _finish(self, stop_reason: str) -> TrainSummary:
        if self.config.eval_interval != 0 and self.last_eval_step != self.step and stop_reason not in (
            "interrupted", "diverged"
        ):
            self._validate()
        # Never a good step since the last saved state (a bad setting from the start): nothing of this
        # invocation is kept, and the run directory goes back to what it held (after the last event).
        discard = stop_reason == "diverged" and not self.saved
        if not discard:
            self._save_last()
        elapsed = self._elapsed()
        trained = self.tokens_seen - (self.plan.resume.training["tokens_seen"] if self.plan.resume else 0)
        best = self.run_dir / "best.pth"
        summary = TrainSummary(
            run_dir=self.run_dir, stop_reason=stop_reason, step=self.step, total_steps=self.steps.total_steps,
            tokens_seen=self.tokens_seen, elapsed=elapsed, tokens_per_second=max(trained, 0) / elapsed,
            final_loss=self.smoothed, val_loss=self.last_val_loss, best_val_loss=self.best_val_loss,
            last_checkpoint=self.run_dir / "last.pth" if (self.run_dir / "last.pth").exists() else None,
            best_checkpoint=best if self.best_val_loss is not None and best.exists() else None,
            recoveries=self.recoveries, start_step=self.start_step, run_elapsed=self._total_elapsed(),
            max_time=self.config.max_time,
        )
        self._emit(TrainEnd(summary))
        if discard and self._run_dir is not None:
            self._run_dir.restore()
        return summary

    # --- train step -------------------------------------------------------------------------------

    def _forward_backward(self, stop_requested: bool) -> _StepResult:
        """Forward/backward over this process's share of the next global batch, gradients
        unscaled and clipped, the optimizer not yet stepped; out of memory is a ConfigError."""
        try:
            return self._accumulate(stop_requested)
        except torch.OutOfMemoryError:
            raise ConfigError(self._too_big()) from None
        except RuntimeError as e:
            if "can't allocate memory" in str(e) or "out of memory" in str(e):
                raise ConfigError(self._too_big()) from None
            raise

    def _accumulate(self, stop_requested: bool) -> _StepResult:
        c, parallel, accum = self.config, self.parallel, self.plan.accum_steps
        starts = self.sampler.take(c.global_batch)
        per_process = c.global_batch // parallel.world_size
        mine = starts[parallel.rank * per_process : (parallel.rank + 1) * per_process]
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.train_windows.batch(mine[micro * c.batch_size : (micro + 1) * c.batch_size], self.device)
            with parallel.gradient_sync(micro == accum - 1):
                with self.precision.autocast():
                    loss = compute_loss(self.step_model, x, y)
                self.scaler.scale(loss / accum).backward()
            loss_sum += loss.detach().float()
        # One small all-reduce carries the loss, the stop flag and the main process's clock (the others
        # add zeros), so every process decides alike: stopping, the time budget's plan, timed saves.
        clock = [self._elapsed(), self.eval_seconds, self.evals, self.save_seconds, self.saves]
        mine = [float(stop_requested), *(map(float, clock) if parallel.is_main else [0.0] * len(clock))]
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        shared = torch.cat([
            (loss_sum / accum).to(dtype).reshape(1), torch.tensor(mine, dtype=dtype, device=self.device)
        ])
        shared = parallel.all_reduce_sum(shared).tolist()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        limit = self.clip.limit()
        grad_norm = parallel.clip_grad_norm(limit)
        reading = Reading(self.elapsed_before + shared[2], shared[3], int(shared[4]), shared[5], int(shared[6]))
        return _StepResult(shared[0] / parallel.world_size, grad_norm, shared[1] > 0, reading, limit)

    def _finite(self, result: _StepResult) -> bool:
        # Under fp16 loss scaling an infinite gradient is the scaler's business (it skips the step).
        return math.isfinite(result.loss) and (self.scaler.is_enabled() or math.isfinite(result.grad_norm))

    def _optimizer_step(self) -> float:
        """Step the optimizer at the scheduled learning rate; return that rate."""
        lr = self._lr()
        set_learning_rate(self.optimizer, lr)  # every group follows the schedule (Muon's at --muon-lr / --lr)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.plan.tokens_per_step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return lr

    # --- recovery ---------------------------------------------------------------------------------

    def _recover(self, result: _StepResult) -> bool:
        """Drop the step, roll back to the last good state and halve the learning rate.

        Returns False when that has happened more than --nan-retries times since the last
        good state (the run has diverged; the model stays rolled back)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the loss scale
        failed_step = self.step + 1
        self._rollback()
        self.recoveries += 1
        self.recoveries_since_good += 1
        if self.recoveries_since_good > self.config.nan_retries:
            return False
        self.lr_scale *= 0.5
        self._emit(Recovery(failed_step, self.step, self.lr_scale, self.recoveries_since_good,
                            self.config.nan_retries))
        self.meter.drop_losses()
        return True

    # --- reporting --------------------------------------------------------------------------------

    def _report(self, lr: float, grad_norm: float, logged: bool = True) -> None:
        meter, total = self.meter, self.steps.total_steps
        tps = meter.tokens_per_second
        mfu = self.flops_per_token * tps / (self.peak_flops * self.parallel.world_size) if self.peak_flops else None
        self._emit(StepReport(
            step=self.step, tokens_seen=self.tokens_seen, loss=meter.mean_loss, smoothed_loss=self.smoothed,
            lr=lr, grad_norm=grad_norm, grad_clip=self.last_clip if math.isfinite(self.last_clip) else None,
            clipped=meter.clipped, tokens_per_second=tps, mfu=mfu, elapsed=self._total_elapsed(),
            total_steps=total, epoch=self.tokens_seen / self.plan.dataset.num_tokens("train"),
            eta=meter.eta(total - self.step) if self.timer is None else self.timer.eta(
                self.step, total, self.steps.cadence, self._total_elapsed(), self._total_elapsed() - self.last_save_elapsed
            ),
            logged=logged,
        ))
        if logged:
            meter.reset()

    # --- evaluation -------------------------------------------------------------------------------

    def _validate(self) -> None:
        """Evaluate, report it, and save best.pth when this is the lowest validation loss (all timed)."""
        started = self.clock()
        report = self._evaluate()
        self.last_eval_step = self.step
        self._emit(report)
        if report.best:
            self._save_best()
        self.eval_seconds += self.clock() - started
        self.evals += 1

    @torch.no_grad()
    def _evaluate(self) -> ValidationDone:
        c, parallel = self.config, self.parallel
        self.model.eval()
        starts = self._validation_windows()
        batches = [starts[i : i + c.batch_size] for i in range(0, len(starts), c.batch_size)]
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # summed loss, tokens
        for starts in batches[parallel.rank :: parallel.world_size]:
            x, y = self.val_windows.batch(starts, self.device)
            with self.precision.autocast():
                total[0] += parallel.eval_loss(x, y)
            total[1] += y.numel()
        total = parallel.all_reduce_sum(total)
        val_loss = float(total[0] / total[1])
        sample = self._sample() if parallel.is_main and c.sample_tokens else None
        self.model.train()
        self.last_val_loss = val_loss
        best = math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if best:
            self.best_val_loss = val_loss
        return ValidationDone(
            step=self.step, tokens_seen=self.tokens_seen, val_loss=val_loss,
            val_perplexity=math.exp(min(val_loss, 700)), best=best, sample=sample, elapsed=self._total_elapsed(),
        )

    def _validation_windows(self) -> np.ndarray:
        """The validation windows' starts: the same ones every evaluation, as many batches as the plan says."""
        count = self.steps.cadence.eval_batches * self.config.batch_size
        if self._val_starts is None or self._val_starts[0] != count:
            self._val_starts = (count, fixed_windows(self.plan.dataset.num_tokens("val"), self.config.seq_len, count))
        return self._val_starts[1]

    def _sample(self) -> str:
        c, tok = self.config, self.plan.tokenizer
        settings = GenerationConfig(max_new_tokens=c.sample_tokens, seed=c.seed)
        new = generate(self.model, tok.encode(c.sample_prompt), settings, tok.eos_id, autocast=self.precision.autocast())
        return c.sample_prompt + tok.decode(new[0]).rstrip("\ufffd")  # no cut-off character

    # --- saving -----------------------------------------------------------------------------------

    def _write(self, path: Path, weights: dict[str, torch.Tensor], training: dict[str, Any] | None) -> None:
        tokenizer = self.plan.tokenizer
        save_checkpoint(path, Checkpoint(
            model_config=self.plan.model_config, model_state=weights, tokenizer_json=tokenizer.to_json(),
            training=training, extra=self._extra(),
        ))

    def _save_best(self) -> None:
        weights = self.parallel.model_state_dict()  # every process joins (a sharded model gathers)
        path = self.run_dir / "best.pth"
        if self.parallel.is_main:
            self._write(path, weights, training=None)
        self._emit(Saved(path, self.step, best=True))

    def _save_last(self) -> None:
        started = self.clock()
        try:
            self._write_last()
        finally:
            self.save_seconds += self.clock() - started
            self.saves += 1
        if not self.saved and self._run_dir is not None:
            self._run_dir.commit()  # this run's state is on disk: what it replaced can go
        self.saved = True

    def _write_last(self) -> None:
        weights = self.parallel.model_state_dict()  # every process joins these and the RNG gather
        training = self._training_state()
        if not self.parallel.is_main:
            return
        path = self.run_dir / "last.pth"
        self._write(path, weights, training)
        if self.config.keep_last:
            numbered = self.run_dir / f"step-{self.step:07d}.pth"
            numbered.unlink(missing_ok=True)
            try:
                os.link(path, numbered)  # last.pth is replaced by rename later, so the link stays
            except OSError:
                shutil.copyfile(path, numbered)
            for old in sorted(self.run_dir.glob("step-*.pth"))[: -self.config.keep_last]:
                old.unlink(missing_ok=True)
        self._emit(Saved(path, self.step))
