"""The training loop: a library function that emits typed events and returns a summary.

`train(config)` plans the run (see plan.py), then steps: each optimizer step reads the next
`global_batch` windows (every process its own share), runs `accum_steps` forward/backward
passes under autocast (gradients synchronised only on the last), clips, and steps the
optimizer (AdamW, or Muon + AdamW: optim.py) at the scheduled learning rate. Around it: rollback
on a non-finite loss, progress reports, evaluation on fixed validation windows with a sample
(evaluation.py), checkpoints (saving.py), and a clean stop on Ctrl-C or SIGTERM.

How many steps, and the rate of each, is the step plan's business (budget.py): with --max-time
the loop hands every step's reading of the main process's clock (shared with every process in
the step's all-reduce) to a `TimeBudget` (time_budget.py), which fits the steps to the time and
re-fits them;
the plan goes into last.pth, so a resumed run continues it instead of measuring again. The
clock is `train`'s argument, so tests can pass a fake one.

With --lora-rank the model is the --init-from model with peft's LoRA adapters on it (lora.py):
the base frozen (held in --lora-base-dtype), only the adapters in the optimizer, and only they in
the checkpoints (with the record naming the base); everything else here runs unchanged.

How the work is spread over processes is parallel.py's business: the loop holds a `Parallel`
and does not know whether it runs alone or under DDP. What it reports are events (events.py)
for its subscribers, on the main process only: the run's loggers (subscribers/, e.g.
metrics.jsonl and loss.png), the Hub upload when --push-to-hub asks for it, and any passed to
`train`. Nothing here prints.

What the loop carries from step to step is its `Progress` and the metrics record of every event:
both go into last.pth as part of the `TrainingState` (resume rewrites metrics.jsonl from the
records; `inspect` reads them).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from gpt2es_cli.checkpoint import Checkpoint, Progress, TrainedOn, TrainingState
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.data.batches import TokenWindows, WindowSampler
from gpt2es_cli.device import Precision, configure_backends, dtype_name, select_precision
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.hub import check_push_target
from gpt2es_cli.lora import adapter_state, add_adapters, hold_frozen_in, load_adapter_state, trainable_parameters
from gpt2es_cli.loss import scored_count
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.budget import SAVE_EVERY
from gpt2es_cli.training.clipping import GradClip
from gpt2es_cli.training.evaluation import Evaluator
from gpt2es_cli.training.events import (
    Event,
    PlanFitted,
    PlanWarning,
    Recovery,
    Saved,
    StepReport,
    StopReason,
    TrainEnd,
    TrainStart,
    TrainSummary,
    ValidationDone,
)
from gpt2es_cli.training.metrics import IntervalMeter, peak_flops
from gpt2es_cli.training.optim import build_optimizer, set_learning_rate
from gpt2es_cli.training.parallel import Parallel, init_parallel, select_strategy
from gpt2es_cli.training.plan import RunPlan, plan_run
from gpt2es_cli.training.rollback import LastGood
from gpt2es_cli.training.saving import Checkpointer
from gpt2es_cli.training.subscribers import Subscriber, run_loggers
from gpt2es_cli.training.subscribers.hub_push import HubPush
from gpt2es_cli.training.time_budget import Reading, RunClock, TimeBudget, plan_warning

SMOOTHING = 0.9
"""Weight of the past in the smoothed (exponential moving average) training loss."""


def compute_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of targets y (B, T) given inputs x (B, T), fused with the
    output head (no logits are built); targets set to IGNORE_INDEX (a loss mask's) are skipped."""
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
    first to the run's loggers (metrics.jsonl, loss.png, those --log-to adds and, with
    --push-to-hub, the Hub upload), then to `subscribers` in order. With --push-to-hub the run
    is uploaded at the end, and the summary says where (a failed upload raises; the run stays).
    `clock` gives seconds; the run's time (and --max-time) counts from this call.
    """
    started = clock()
    precision = select_precision(config.device, config.amp, config.dtype)
    parallel = init_parallel(precision.device.type)
    pusher = None
    try:
        precision = replace(precision, device=parallel.local_device(precision.device))
        plan = plan_run(config, world_size=parallel.world_size, resume=resume, force=force)
        parallel = select_strategy(parallel, plan.config, precision)  # --parallel, resolved by the plan
        listeners: list[Subscriber] = []
        if parallel.is_main:
            if plan.config.push_to_hub is not None:
                check_push_target(plan.config.push_to_hub)  # a push that cannot happen: said before any work
                pusher = HubPush(plan.config.push_to_hub, plan.config.push_every_save,
                                 notify=lambda event: _send(listeners, event))
            listeners += [*run_loggers(plan.config.log_to), *([pusher] if pusher else []), *subscribers]
        parallel.barrier()  # every process has checked the run before the main one writes anything
        summary = _Trainer(plan, precision, parallel, listeners, clock, started).run()
        parallel.barrier()  # leave together: a process whose peer already tore down its group can abort at exit
    finally:
        parallel.shutdown()
    if pusher is not None and summary.last_checkpoint is not None:
        summary = replace(summary, hub_url=pusher.push(f"step {summary.step}"))
    return summary


def _send(subscribers: Sequence[Subscriber], event: Event) -> None:
    for subscriber in subscribers:
        subscriber(event)


class _StopSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step and save;
    a second Ctrl-C stops at once. A second SIGTERM does not: under Slurm every process gets one
    and torchrun forwards its own, and the save they both ask for must still happen."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
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
    """One invocation of a run: its model and optimizer, its progress, and the loop over steps."""

    def __init__(self, plan: RunPlan, precision: Precision, parallel: Parallel, subscribers: list[Subscriber],
                 clock: Callable[[], float] = time.perf_counter, started: float | None = None):
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
            plan.init_weights = None  # in the model now: not held twice for the whole run
        self.adapter = plan.adapter
        if self.adapter is not None:  # LoRA: the base frozen, the adapters (seeded alike everywhere) on it
            a = self.adapter
            model = add_adapters(model, rank=a.rank, alpha=a.alpha, dropout=a.dropout, targets=a.targets)
            if plan.resume is not None:
                load_adapter_state(model, plan.resume.model_state)
            hold_frozen_in(model, plan.base_dtype)
        elif plan.resume is not None and plan.resume.unread_shards is None:  # shards: read after wrapping
            model.load_state_dict(plan.resume.model_state)
        self.model = parallel.place(model, self.device).train()
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
        self.evaluator = Evaluator(config, dataset, plan.tokenizer, parallel, precision)
        self.checkpointer = Checkpointer(self.run_dir, plan.model_config, plan.tokenizer, config.keep_last,
                                         adapter=self.adapter, parallel=parallel)
        self.trainable = trainable_parameters(self.model)
        # Frozen weights take no weight gradient: 4 FLOPs per parameter and token instead of 6.
        frozen = sum(p.numel() for n, p in self.model.named_parameters() if not p.requires_grad and n != "wpe.weight")
        self.flops_per_token = self.model.flops_per_token(config.seq_len) - 2 * frozen
        self.peak_flops = peak_flops(config.peak_tflops, self.device)

        self.progress = Progress()
        self.metrics: list[dict[str, Any]] = []
        """The metrics record of every event so far (a resumed run starts with its checkpoint's)."""
        self.meter = IntervalMeter()
        if plan.resume is not None and plan.resume.training is not None:
            self._restore(plan.resume.training)
        self.start_step, self.start_tokens = self.progress.step, self.progress.tokens_seen
        self.last_good = LastGood()
        self.last_eval_step = -1

        self.time = RunClock(clock, clock() if started is None else started, before=self.progress.elapsed)
        self.last_save_elapsed = self.progress.elapsed
        # The step plan (budget.py): schedule and steps, fitted to --max-time by `timer` when it binds.
        self.step_plan = plan.step_plan
        self.save_now = False
        self.warned = False
        self.timer: TimeBudget | None = None
        if self.step_plan.fit_time:
            assert config.max_time is not None
            self.timer = TimeBudget.for_run(
                config.max_time, cap=self.step_plan.cap, start_elapsed=self.progress.elapsed,
                parameters=self.trainable if self.adapter is not None else self.model.num_parameters(),
                accum_steps=plan.accum_steps,
                tokens_per_step=plan.tokens_per_step, sample_tokens=config.sample_tokens,
                world_size=parallel.world_size, fit_eval_batches=not self.step_plan.eval_batches_fixed,
            )

    @property
    def step(self) -> int:
        """Optimizer steps done."""
        return self.progress.step

    # --- state -----------------------------------------------------------------------------

    def _restore(self, state: TrainingState) -> None:
        resume = self.plan.resume
        if resume is not None and resume.unread_shards is not None:  # each process reads its part
            self.parallel.load_shards(resume, self.model, self.optimizer)
        else:
            self.parallel.load_optimizer_state_dict(self.optimizer, state.optimizer or {})
        if state.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(state.scaler)
        self.progress = state.progress
        self.sampler.load_state_dict(state.data or {})
        self.clip.load_state_dict(state.clip)
        rank = self.parallel.rank
        if len(state.rng) == self.parallel.world_size:  # same process count: continue each stream exactly
            mine = state.rng[rank]
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            torch.manual_seed(self.config.seed + 1 + rank + 1000 * self.progress.step)
        self.metrics = list(state.metrics)
        if state.meter:
            self.meter.load_state_dict(state.meter)  # the log interval in progress

    def _rng_state(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _training_state(self) -> TrainingState:
        """Everything --resume needs, as plain data (weights_only-safe). Every process calls it."""
        rng = self.parallel.all_gather(self._rng_state())
        dataset = self.plan.dataset
        return TrainingState(
            **asdict(replace(self.progress, elapsed=self.time.total())),
            config=self.config.to_dict(),
            total_steps=self.step_plan.total_steps,
            plan=self.step_plan.state(),
            optimizer=self.parallel.optimizer_state_dict(self.optimizer),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            data=self.sampler.state_dict(),
            rng=rng,
            world_size=self.parallel.world_size,
            dataset=TrainedOn(str(dataset.path), dataset.meta["splits"]["train"]["sha256"]),
            metrics=self.metrics,
            meter=self.meter.state_dict(),
            clip=self.clip.state_dict(),
        )

    def _extra(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "step": self.progress.step,
            "tokens_seen": self.progress.tokens_seen,
            "dataset": str(self.plan.dataset.path),
            "val_loss": self.progress.val_loss,
        }

    # --- helpers ---------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        record = event.record()
        if record is not None:
            self.metrics.append(record)
        _send(self.subscribers, event)

    def _lr(self) -> float:
        return self.progress.lr_scale * self.step_plan.schedule(self.progress.step)

    def _every(self, interval: int | None) -> bool:
        return bool(interval) and self.progress.step % interval == 0

    def _eval_due(self) -> bool:
        """--eval-interval, else the next of the evaluations spread over the planned steps (none while
        the steps are not fitted to --max-time yet)."""
        if self.config.eval_interval is None and self.timer is not None and self.timer.fit is None:
            return False
        return self.step_plan.cadence.eval_due(self.progress.step, self.step_plan.total_steps)

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
            return self._finish(self._loop())
        except BaseException:
            self.checkpointer.restore()  # nothing was saved: the directory goes back to what it held
            raise
        finally:
            self.train_windows.close()
            self.evaluator.close()

    def _start(self) -> None:
        plan, steps = self.plan, self.step_plan
        if self.parallel.is_main:
            self.checkpointer.open(self.config, continuing=plan.continuing)
        self._emit(TrainStart(
            run_dir=self.run_dir, config=self.config, num_parameters=self.model.num_parameters(),
            device=str(self.device), precision=self.precision.name, world_size=self.parallel.world_size,
            accum_steps=plan.accum_steps, tokens_per_step=plan.tokens_per_step, total_steps=steps.total_steps,
            budget=steps.budget, train_tokens=plan.dataset.num_tokens("train"), start_step=self.start_step,
            history=tuple(self.metrics), start_tokens=self.start_tokens,
            warmup_steps=steps.warmup_steps if steps.warmup_fixed else None,
            max_time=self.config.max_time, fit_time=steps.fit_time, cap_steps=steps.cap,
            cap_budget=steps.cap_budget, batch_choice=plan.batch_choice, size_choice=plan.size_choice,
            adapter=self.adapter, trainable_parameters=self.trainable,
            base_dtype=dtype_name(plan.base_dtype) if self.adapter is not None else None,
        ))
        self.last_good.remember(self.model, self.optimizer, self.clip, self.progress)

    def _loop(self) -> StopReason:
        """Step until the budget is spent or something stops the run; return why it stopped."""
        c, progress = self.config, self.progress
        with _StopSignal() as stop:
            while progress.step < self.step_plan.total_steps or self._measuring():
                t_step = self.time.now()
                result = self._forward_backward(stop.requested)
                self._follow_plan(result.reading)  # may re-plan the steps from this one on
                out_of_time = self.timer is not None and self.timer.out_of_time(result.reading, c.eval_interval != 0)
                stop_reason = (StopReason.INTERRUPTED if result.stop_asked
                               else StopReason.OUT_OF_TIME if out_of_time else None)
                if not self._finite(result):
                    if not self._recover():
                        return StopReason.DIVERGED
                    if stop_reason:
                        return stop_reason
                    continue
                lr = self._optimizer_step()
                self.clip.update(result.grad_norm)
                self.meter.add(result.loss, self.plan.tokens_per_step, self.time.now() - t_step,
                               clipped=result.grad_norm > result.clip_limit)
                self.last_clip = result.clip_limit
                progress.smoothed_loss = result.loss if progress.smoothed_loss is None else (
                    SMOOTHING * progress.smoothed_loss + (1 - SMOOTHING) * result.loss
                )
                done = progress.step >= self.step_plan.total_steps and not self._measuring()
                if done and stop_reason is StopReason.OUT_OF_TIME:
                    stop_reason = None  # the plan's last step: the run ends as planned
                if self._every(c.log_interval) or done or stop_reason:
                    # An interrupted run's last report is shown only: the resumed run logs as if uninterrupted.
                    self._report(lr, result.grad_norm, logged=bool(done or self._every(c.log_interval)
                                                                   or stop_reason is not StopReason.INTERRUPTED))
                if stop_reason:
                    return stop_reason
                if done:
                    break
                if self._eval_due():
                    self._validate()
                    self.step_plan = self.step_plan.evaluated(progress.step)
                if self._save_due(result.reading):
                    self.last_save_elapsed = result.reading.elapsed
                    self._save_last(wait=False)
                    self.last_good.remember(self.model, self.optimizer, self.clip, progress)
        return StopReason.reached(self.step_plan.budget)

    def _measuring(self) -> bool:
        """--max-time alone, before its fit: the provisional steps do not end the run."""
        return self.timer is not None and self.timer.fit is None and self.step_plan.cap is None

    def _follow_plan(self, reading: Reading) -> None:
        """Hand the step's reading to the time budget; a (re)fitted plan applies from this step on."""
        self.save_now = False
        if self.timer is None:
            return
        step, steps = self.progress.step, self.step_plan
        fit = self.timer.observe(step, reading, steps.total_steps, steps.cadence, reading.elapsed - self.last_save_elapsed)
        if fit is None:
            return
        c = self.config
        self.step_plan = steps = steps.fitted(step, fit.total_steps, fit.time_steps, fit.cadence, c.warmup_steps)
        assert c.max_time is not None
        self._emit(PlanFitted(
            step=fit.step, total_steps=steps.total_steps, time_steps=fit.time_steps, budget=steps.budget,
            warmup_steps=steps.warmup_steps, step_time=fit.costs.step,
            evals=fit.cadence.evals_left(step, steps.total_steps) if c.eval_interval != 0 else 0,
            eval_batches=fit.cadence.eval_batches,
            eval_time=fit.costs.eval, save_time=fit.costs.save, elapsed=fit.elapsed, projected=fit.projected,
            max_time=c.max_time, first=fit.first,
        ))
        warning = None if self.warned else plan_warning(fit, c.max_time, steps.warmup_steps,
                                                        c.warmup_steps is not None)
        if warning:  # once, as soon as a fit (the first, or one with measured evaluations) shows it
            self.warned = True
            self._emit(PlanWarning(warning))
        if fit.first:
            self.save_now = True  # records the plan, and times a save for the next fits

    def _finish(self, stop_reason: StopReason) -> TrainSummary:
        progress = self.progress
        if self.config.eval_interval != 0 and self.last_eval_step != progress.step and stop_reason not in (
            StopReason.INTERRUPTED, StopReason.DIVERGED
        ):
            self._validate()
        # Never a good step since the last saved state (a bad setting from the start): nothing of this
        # invocation is kept, and the run directory goes back to what it held (after the last event).
        discard = stop_reason is StopReason.DIVERGED and not self.checkpointer.saved
        if not discard:
            self._save_last()
        elapsed = self.time.elapsed()
        trained = progress.tokens_seen - self.start_tokens
        last, best = self.run_dir / "last.pth", self.run_dir / "best.pth"
        summary = TrainSummary(
            run_dir=self.run_dir, stop_reason=stop_reason, step=progress.step, total_steps=self.step_plan.total_steps,
            tokens_seen=progress.tokens_seen, elapsed=elapsed, tokens_per_second=max(trained, 0) / elapsed,
            final_loss=progress.smoothed_loss, val_loss=progress.val_loss, best_val_loss=progress.best_val_loss,
            last_checkpoint=last if last.exists() else None,
            best_checkpoint=best if progress.best_val_loss is not None and best.exists() else None,
            recoveries=progress.recoveries, start_step=self.start_step, run_elapsed=self.time.total(),
            max_time=self.config.max_time,
        )
        self._emit(TrainEnd(summary))
        if discard:
            self.checkpointer.restore()
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
        windows = [self.train_windows.batch(mine[micro * c.batch_size : (micro + 1) * c.batch_size], self.device)
                   for micro in range(accum)]
        weights = self._micro_weights([y for _, y in windows])
        for micro, (x, y) in enumerate(windows):
            with parallel.gradient_sync(micro == accum - 1):
                with self.precision.autocast():
                    loss = compute_loss(self.step_model, x, y)
                self.scaler.scale(loss * weights[micro]).backward()
            loss_sum += loss.detach().float() * weights[micro]
        # One small all-reduce carries the loss, the stop flag and the main process's clock (the others
        # add zeros), so every process decides alike: stopping, the time budget's plan, timed saves.
        clock = (self.time.reading() if parallel.is_main else Reading(0.0)).values()
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        shared = torch.cat([
            loss_sum.to(dtype).reshape(1),
            torch.tensor([float(stop_requested), *clock], dtype=dtype, device=self.device),
        ])
        loss_total, stops, *clock = parallel.all_reduce_sum(shared).tolist()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        limit = self.clip.limit()
        grad_norm = parallel.clip_grad_norm(limit)
        return _StepResult(loss_total / parallel.world_size, grad_norm, stops > 0, Reading.from_values(clock), limit)

    def _micro_weights(self, targets: list[torch.Tensor]) -> list[float | torch.Tensor]:
        """What each micro-batch's mean loss is multiplied by, so that the step's gradient (summed over the
        micro-batches, averaged over the processes) is the gradient of the mean loss over every target the
        step scores. Without a loss mask every micro-batch scores as many targets: 1 / accum. With one:
        world_size x its scored targets / the scored targets of the whole step, every process's (one
        small all-reduce)."""
        if not self.train_windows.masked:
            return [1.0 / len(targets)] * len(targets)
        dtype = torch.float32 if self.device.type == "mps" else torch.float64  # MPS has no float64
        counts = torch.stack([scored_count(y) for y in targets]).to(dtype)  # (accum,)
        total = self.parallel.all_reduce_sum(counts.sum().reshape(1)).clamp_min(1)  # every process's
        return list((counts * self.parallel.world_size / total).float())

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
        self.progress.step += 1
        self.progress.tokens_seen += self.plan.tokens_per_step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return lr

    # --- recovery ---------------------------------------------------------------------------------

    def _recover(self) -> bool:
        """Drop the step, roll back to the last good state and halve the learning rate.

        Returns False when that has happened more than --nan-retries times since the last
        good state (the run has diverged; the model stays rolled back)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the loss scale
        progress = self.progress
        failed_step = progress.step + 1
        self.last_good.restore(self.model, self.optimizer, self.clip, progress)
        progress.recoveries += 1
        if self.last_good.rollbacks > self.config.nan_retries:
            return False
        progress.lr_scale *= 0.5
        self._emit(Recovery(failed_step, progress.step, progress.lr_scale, self.last_good.rollbacks,
                            self.config.nan_retries))
        self.meter.drop_losses()
        return True

    # --- reporting --------------------------------------------------------------------------------

    def _report(self, lr: float, grad_norm: float, logged: bool = True) -> None:
        meter, total, progress = self.meter, self.step_plan.total_steps, self.progress
        tps = meter.tokens_per_second
        mfu = self.flops_per_token * tps / (self.peak_flops * self.parallel.world_size) if self.peak_flops else None
        elapsed = self.time.total()
        self._emit(StepReport(
            step=progress.step, tokens_seen=progress.tokens_seen, loss=meter.mean_loss,
            smoothed_loss=progress.smoothed_loss, lr=lr, grad_norm=grad_norm,
            grad_clip=self.last_clip if math.isfinite(self.last_clip) else None,
            clipped=meter.clipped, tokens_per_second=tps, mfu=mfu, elapsed=elapsed,
            total_steps=total, epoch=progress.tokens_seen / self.plan.dataset.num_tokens("train"),
            eta=meter.eta(total - progress.step) if self.timer is None else self.timer.eta(
                progress.step, total, self.step_plan.cadence, elapsed, elapsed - self.last_save_elapsed
            ),
            logged=logged,
        ))
        if logged:
            meter.reset()

    # --- evaluation -------------------------------------------------------------------------------

    def _validate(self) -> None:
        """Evaluate, report it, and save best.pth when this is the lowest validation loss (all timed)."""
        started = self.time.now()
        report = self._evaluate()
        self.last_eval_step = self.progress.step
        self._emit(report)
        if report.best:
            self._save_best()
        self.time.eval_seconds += self.time.now() - started
        self.time.evals += 1

    def _evaluate(self) -> ValidationDone:
        progress = self.progress
        self.model.eval()
        with self.parallel.evaluating():
            val_loss = self.evaluator.loss(self._validation_windows())
            sample = self.evaluator.sample(self.model) if self.parallel.is_main and self.config.sample_tokens else None
        self.model.train()
        progress.val_loss = val_loss
        best = math.isfinite(val_loss) and (progress.best_val_loss is None or val_loss < progress.best_val_loss)
        if best:
            progress.best_val_loss = val_loss
        return ValidationDone(
            step=progress.step, tokens_seen=progress.tokens_seen, val_loss=val_loss,
            val_perplexity=math.exp(min(val_loss, 700)), best=best, sample=sample, elapsed=self.time.total(),
        )

    def _validation_windows(self) -> np.ndarray:
        """The validation windows' starts: the same ones every evaluation, as many batches as the plan says."""
        return self.evaluator.starts(self.step_plan.cadence.eval_batches)

    # --- saving -----------------------------------------------------------------------------------

    def _weights(self, full: bool = False) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the model's weights, or with LoRA the adapters' alone. Every
        process calls it (a sharded model: each process's part, or gathered whole when `full`)."""
        weights = self.parallel.model_state_dict(full=full)
        return adapter_state(weights) if self.adapter is not None else weights

    def _save_best(self) -> None:
        weights = self._weights(full=True)  # every process joins (a sharded model gathers)
        path = self.run_dir / "best.pth"
        if self.parallel.is_main:
            path = self.checkpointer.write_best(weights, self._extra())
        self._emit(Saved(path, self.progress.step, best=True))

    def _save_last(self, wait: bool = True) -> None:
        started = self.time.now()
        try:
            weights = self._weights()  # every process joins these, the RNG gather and the write
            training = self._training_state()
            path = self.checkpointer.write_last(weights, training, self._extra(), wait=wait)  # sharded: in the background
            if self.parallel.is_main:
                self._emit(Saved(path, self.progress.step))
        finally:
            self.time.save_seconds += self.time.now() - started
            self.time.saves += 1
        self.checkpointer.committed()
