"""The training loop: a library function that reports through a callback and returns a summary.

`train(config)` plans the run (see plan.py), then steps: each optimizer step reads the next
`global_batch` windows (every process its own share), runs `accum_steps` forward/backward
passes under autocast (DDP gradient sync only on the last), clips, and steps AdamW at the
scheduled learning rate. Around it: evaluation on fixed validation windows with a sample,
metrics, checkpoints, rollback on a non-finite loss, and a clean stop on Ctrl-C or SIGTERM.

Events go to `callback` on the main process only; nothing here prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gpt2es_cli.checkpoint import Checkpoint, save_model
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.data.batches import TokenWindows, WindowSampler, fixed_windows
from gpt2es_cli.device import Precision, select_precision
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.generate import Generation, GenerationConfig
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.distributed import (
    DistContext,
    init_distributed,
    shutdown_distributed,
)
from gpt2es_cli.training.loss import cross_entropy
from gpt2es_cli.training.metrics import MetricsLog, plot_loss_curve
from gpt2es_cli.training.optim import build_optimizer, learning_rate
from gpt2es_cli.training.plan import RUN_FILES, RunPlan, plan_run

SMOOTHING = 0.9
"""Weight of the past in the smoothed (exponential moving average) training loss."""

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of one GPU, by a substring of its name, for MFU.
GPU_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


# --- what the loop reports ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrainStart:
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
    budget: str
    train_tokens: int
    start_step: int
    """0 for a new run; the checkpoint's step when resuming."""


@dataclass(frozen=True)
class StepReport:
    """Progress every `log_interval` steps."""

    step: int
    total_steps: int
    loss: float
    """Mean training loss over the steps since the last report."""
    smoothed_loss: float
    lr: float
    grad_norm: float
    tokens_seen: int
    epoch: float
    """Passes over train.bin so far."""
    tokens_per_second: float
    mfu: float | None
    """Model FLOPs utilisation (0..1) where the device's peak is known."""
    elapsed: float
    eta: float


@dataclass(frozen=True)
class EvalReport:
    step: int
    tokens_seen: int
    val_loss: float
    val_perplexity: float
    best: bool
    """This is the lowest validation loss so far (best.pth was written)."""
    sample: str | None
    """A continuation of `sample_prompt`, prompt included."""


@dataclass(frozen=True)
class Recovery:
    """A non-finite loss or gradient: the step was dropped and the last good state restored."""

    step: int
    restored_step: int
    lr_scale: float
    attempt: int
    max_attempts: int


@dataclass(frozen=True)
class Saved:
    path: Path
    step: int


@dataclass
class TrainSummary:
    """How a run ended."""

    run_dir: Path
    stop_reason: str
    """max_steps / max_tokens / epochs (budget reached), max_time, interrupted, or diverged."""
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


Callback = Callable[[object], None]


# --- the loop -------------------------------------------------------------------------------------


def compute_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of targets y (B, T) given inputs x (B, T)."""
    return cross_entropy(model(x), y)  # logits (B, T, V)


def train(
    config: TrainConfig,
    *,
    resume: Checkpoint | None = None,
    force: bool = False,
    callback: Callback | None = None,
) -> TrainSummary:
    """Train a model as `config` says (continuing `resume` if given); return how it ended.

    Under torchrun every process calls this; only the main one calls `callback` and writes files.
    """
    precision = select_precision(config.device, config.amp, config.dtype)
    dist = init_distributed(precision.device.type)
    try:
        if dist.enabled and precision.device.type == "cuda":
            precision = Precision(torch.device("cuda", dist.local_rank), precision.autocast_dtype)
        plan = plan_run(config, world_size=dist.world_size, resume=resume, force=force)
        dist.barrier()  # every process has checked the run before the main one writes anything
        trainer = _Trainer(plan, precision, dist, callback if dist.is_main else None)
        return trainer.run()
    finally:
        shutdown_distributed()


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


def _peak_flops(config: TrainConfig, device: torch.device) -> float | None:
    if config.peak_tflops:
        return config.peak_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak
    return None


class _Trainer:
    def __init__(self, plan: RunPlan, precision: Precision, dist: DistContext, callback: Callback | None):
        self.plan = plan
        self.config = config = plan.config
        self.precision = precision
        self.device = precision.device
        self.dist = dist
        self.callback = callback
        self.run_dir = plan.run_dir
        self.is_main = dist.is_main
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # Same initial weights in every process (DDP also broadcasts them from the main one).
        torch.manual_seed(config.seed)
        model = GPT2(plan.model_config)
        if plan.init_weights is not None:
            model.load_state_dict(plan.init_weights)
        if plan.resume is not None:
            model.load_state_dict(plan.resume.model_state)
        self.model = model.to(self.device).train()
        self.optimizer = build_optimizer(
            self.model, config.lr, config.weight_decay, (config.beta1, config.beta2)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision.needs_grad_scaler)
        # Dropout differs between processes (they see different windows); a fixed seed each.
        torch.manual_seed(config.seed + 1 + dist.rank)

        wrapped: torch.nn.Module = self.model
        if dist.enabled:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.ddp = wrapped if dist.enabled else None
        self.step_model = torch.compile(wrapped) if config.compile else wrapped

        dataset = plan.dataset
        self.train_windows = TokenWindows.open(dataset, "train", config.seq_len)
        self.sampler = WindowSampler(dataset.num_tokens("train"), config.seq_len, config.seed)
        self.val_windows = TokenWindows.open(dataset, "val", config.seq_len)
        self.val_starts = (
            fixed_windows(dataset.num_tokens("val"), config.seq_len, config.eval_batches * config.batch_size)
            if config.eval_interval
            else None
        )
        self.flops_per_token = self.model.flops_per_token(config.seq_len)
        self.peak_flops = _peak_flops(config, self.device)

        self.step = 0
        self.tokens_seen = 0
        self.lr_scale = 1.0
        self.smoothed: float | None = None
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.recoveries = 0
        self.recoveries_since_good = 0
        self.elapsed_before = 0.0
        records: list[dict[str, Any]] = []
        if plan.resume is not None:
            records = self._restore(plan.resume.training)
        self.start_step = self.step
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", records, write=False)
        self.good: dict[str, Any] = {}

    # --- state -----------------------------------------------------------------------------

    def _restore(self, training: dict[str, Any]) -> list[dict[str, Any]]:
        self.optimizer.load_state_dict(training["optimizer"])
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
        rng = training.get("rng") or []
        if len(rng) == self.dist.world_size:  # same process count: continue each stream exactly
            mine = rng[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            if self.device.type == "cuda" and mine.get("cuda") is not None:
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            torch.manual_seed(self.config.seed + 1 + self.dist.rank + 1000 * self.step)
        return list(training.get("metrics") or [])

    def _rng_state(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }

    def _training_state(self) -> dict[str, Any]:
        """Everything --resume needs, as plain data (weights_only-safe). Collective under DDP."""
        rng = self.dist.all_gather(self._rng_state())
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "total_steps": self.plan.total_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "lr_scale": self.lr_scale,
            "smoothed_loss": self.smoothed,
            "best_val_loss": self.best_val_loss,
            "val_loss": self.last_val_loss,
            "recoveries": self.recoveries,
            "elapsed": self.elapsed_before + self._elapsed(),
            "data": self.sampler.state_dict(),
            "rng": rng,
            "world_size": self.dist.world_size,
            "dataset": {
                "path": str(self.plan.dataset.path),
                "train_sha256": self.plan.dataset.meta["splits"]["train"]["sha256"],
            },
            "metrics": self.metrics.records,
        }

    def _extra(self) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "dataset": str(self.plan.dataset.path),
            "val_loss": self.last_val_loss,
        }

    def _save_last(self) -> None:
        training = self._training_state()  # every process joins the RNG gather
        if not self.is_main:
            return
        path = self.run_dir / "last.pth"
        save_model(path, self.model, self.plan.model_config, self.plan.tokenizer, training, self._extra())
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

    def _snapshot(self) -> None:
        """Remember this as the last good state (in memory), for rollback after a NaN."""
        self.good = {
            "model": _clone_to_cpu(self.model.state_dict()),
            "optimizer": _clone_to_cpu(self.optimizer.state_dict()),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
        }
        self.recoveries_since_good = 0

    def _rollback(self) -> None:
        self.model.load_state_dict(self.good["model"])
        self.optimizer.load_state_dict(self.good["optimizer"])
        self.step = self.good["step"]
        self.tokens_seen = self.good["tokens_seen"]

    # --- helpers ---------------------------------------------------------------------------

    def _emit(self, event: object) -> None:
        if self.callback is not None:
            self.callback(event)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _lr(self) -> float:
        c = self.config
        return self.lr_scale * learning_rate(
            self.step, lr=c.lr, min_lr=c.min_lr, total_steps=self.plan.total_steps,
            warmup_steps=c.warmup_steps, schedule=c.schedule, decay_fraction=c.decay_fraction,
        )

    def _prepare_run_dir(self) -> None:
        if not self.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.plan.continuing:  # --force: the old run's files go (nothing else in the directory)
            for name in RUN_FILES:
                (self.run_dir / name).unlink(missing_ok=True)
            for old in self.run_dir.glob("step-*.pth"):
                old.unlink()
        text = (
            "# gpt2es train settings, every default resolved. Reuse with:\n"
            f"#   gpt2es train --config {self.run_dir / 'config.yaml'} --out runs/NEW\n"
            + yaml.safe_dump(self.config.to_dict(), sort_keys=False, allow_unicode=True)
        )
        atomic_write(self.run_dir / "config.yaml", lambda f: f.write(text.encode("utf-8")))
        # metrics.jsonl starts as exactly what the checkpoint knew (a resumed run drops records
        # written after its last save).
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", self.metrics.records, write=True)

    # --- one optimizer step --------------------------------------------------------------------

    def _train_step(self, stop_requested: bool, time_up: bool) -> tuple[float, float, bool, bool]:
        """Forward/backward over this process's share of the next global batch.

        Returns (loss averaged over all processes, grad norm, stop asked anywhere, time up anywhere)
        without stepping the optimizer.
        """
        c, dist = self.config, self.dist
        starts = self.sampler.take(c.global_batch)
        per_process = c.global_batch // dist.world_size
        mine = starts[dist.rank * per_process : (dist.rank + 1) * per_process]
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(self.plan.accum_steps):
            x, y = self.train_windows.batch(mine[micro * c.batch_size : (micro + 1) * c.batch_size], self.device)
            last = micro == self.plan.accum_steps - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with self.precision.autocast():
                    loss = compute_loss(self.step_model, x, y)
                self.scaler.scale(loss / self.plan.accum_steps).backward()
            loss_sum += loss.detach().float()
        # One small all-reduce carries the loss and both stop flags, so every process decides alike.
        shared = torch.stack([
            loss_sum / self.plan.accum_steps,
            torch.tensor(float(stop_requested), device=self.device),
            torch.tensor(float(time_up), device=self.device),
        ])
        shared = dist.all_reduce_sum(shared).tolist()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return shared[0] / dist.world_size, float(grad_norm), shared[1] > 0, shared[2] > 0

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self) -> EvalReport:
        c, dist = self.config, self.dist
        self.model.eval()
        batches = [self.val_starts[i : i + c.batch_size] for i in range(0, len(self.val_starts), c.batch_size)]
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # summed loss, tokens
        for starts in batches[dist.rank :: dist.world_size]:
            x, y = self.val_windows.batch(starts, self.device)
            with self.precision.autocast():
                logits = self.model(x)  # (B, T, V)
            total[0] += cross_entropy(logits, y, reduction="sum")
            total[1] += y.numel()
        total = dist.all_reduce_sum(total)
        val_loss = float(total[0] / total[1])
        sample = self._sample() if self.is_main and c.sample_tokens else None
        self.model.train()
        self.last_val_loss = val_loss
        best = math.isfinite(val_loss) and (self.best_val_loss is None or val_loss < self.best_val_loss)
        if best:
            self.best_val_loss = val_loss
            if self.is_main:
                save_model(self.run_dir / "best.pth", self.model, self.plan.model_config, self.plan.tokenizer,
                           extra=self._extra())
        report = EvalReport(self.step, self.tokens_seen, val_loss, math.exp(min(val_loss, 700)), best, sample)
        self.metrics.add({
            "type": "eval", "step": self.step, "tokens": self.tokens_seen, "val_loss": val_loss,
            "val_perplexity": report.val_perplexity, "best": best, "sample": sample,
            "elapsed": self.elapsed_before + self._elapsed(),
        })
        if self.is_main:
            plot_loss_curve(self.metrics.records, self.run_dir / "loss.png", title=str(self.run_dir))
        return report

    def _sample(self) -> str:
        tok = self.plan.tokenizer
        prompt = tok.encode(self.config.sample_prompt)
        gen = Generation(
            self.model, prompt, GenerationConfig(max_new_tokens=self.config.sample_tokens, seed=self.config.seed),
            tok.eos_id, autocast=self.precision.autocast(),
        )
        for _ in gen:
            pass
        return self.config.sample_prompt + tok.decode(gen.samples[0]).rstrip("\ufffd")  # no cut-off character

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> TrainSummary:
        try:
            return self._run()
        finally:
            self.train_windows.close()
            self.val_windows.close()

    def _run(self) -> TrainSummary:
        c, plan = self.config, self.plan
        self.t0 = time.perf_counter()
        self._prepare_run_dir()
        self._emit(TrainStart(
            run_dir=self.run_dir, config=c, num_parameters=self.model.num_parameters(),
            device=str(self.device), precision=self.precision.name, world_size=self.dist.world_size,
            accum_steps=plan.accum_steps, tokens_per_step=plan.tokens_per_step, total_steps=plan.total_steps,
            budget=plan.budget, train_tokens=plan.dataset.num_tokens("train"), start_step=self.start_step,
        ))
        self._snapshot()
        stop_reason = plan.budget
        interval_losses: list[float] = []
        interval_tokens, interval_time = 0, 0.0
        last_eval_step = -1
        step_time_avg: float | None = None
        grad_norm = 0.0
        with _StopSignal() as stop:
            while self.step < plan.total_steps:
                t_step = time.perf_counter()
                time_up = c.max_time is not None and self._elapsed() >= c.max_time
                try:
                    loss, grad_norm, stop_asked, out_of_time = self._train_step(stop.requested, time_up)
                except torch.OutOfMemoryError:
                    raise ConfigError(self._too_big()) from None
                except RuntimeError as e:
                    if "can't allocate memory" in str(e) or "out of memory" in str(e):
                        raise ConfigError(self._too_big()) from None
                    raise
                finite = math.isfinite(loss) and (self.scaler.is_enabled() or math.isfinite(grad_norm))
                if not finite:
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.scaler.is_enabled():
                        self.scaler.update()  # lowers the loss scale
                    failed_step = self.step + 1
                    self._rollback()
                    self.recoveries += 1
                    self.recoveries_since_good += 1
                    if self.recoveries_since_good > c.nan_retries:
                        stop_reason = "diverged"
                        break
                    self.lr_scale *= 0.5
                    self.metrics.add({
                        "type": "recovery", "step": failed_step, "restored_step": self.step,
                        "lr_scale": self.lr_scale, "attempt": self.recoveries_since_good,
                    })
                    self._emit(Recovery(failed_step, self.step, self.lr_scale, self.recoveries_since_good,
                                        c.nan_retries))
                    interval_losses = []
                    if stop_asked or out_of_time:
                        stop_reason = "interrupted" if stop_asked else "max_time"
                        break
                    continue
                lr = self._lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.tokens_seen += plan.tokens_per_step
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t_step
                step_time_avg = dt if step_time_avg is None else 0.9 * step_time_avg + 0.1 * dt
                interval_losses.append(loss)
                interval_tokens += plan.tokens_per_step
                interval_time += dt
                self.smoothed = loss if self.smoothed is None else SMOOTHING * self.smoothed + (1 - SMOOTHING) * loss

                done = self.step >= plan.total_steps
                if self.step % c.log_interval == 0 or done or stop_asked or out_of_time:
                    tps = interval_tokens / interval_time if interval_time > 0 else 0.0
                    mfu = (
                        self.flops_per_token * tps / (self.peak_flops * self.dist.world_size)
                        if self.peak_flops else None
                    )
                    mean_loss = sum(interval_losses) / len(interval_losses)
                    elapsed = self.elapsed_before + self._elapsed()
                    eta = (plan.total_steps - self.step) * (step_time_avg or 0.0)
                    report = StepReport(
                        step=self.step, total_steps=plan.total_steps, loss=mean_loss,
                        smoothed_loss=self.smoothed, lr=lr, grad_norm=grad_norm, tokens_seen=self.tokens_seen,
                        epoch=self.tokens_seen / plan.dataset.num_tokens("train"), tokens_per_second=tps,
                        mfu=mfu, elapsed=elapsed, eta=eta,
                    )
                    self.metrics.add({
                        "type": "train", "step": self.step, "tokens": self.tokens_seen, "loss": mean_loss,
                        "smoothed_loss": self.smoothed, "lr": lr, "grad_norm": grad_norm,
                        "tokens_per_second": tps, "mfu": mfu, "elapsed": elapsed,
                    })
                    self._emit(report)
                    interval_losses, interval_tokens, interval_time = [], 0, 0.0
                if stop_asked or out_of_time:
                    stop_reason = "interrupted" if stop_asked else "max_time"
                    break
                if c.eval_interval and self.step % c.eval_interval == 0 and not done:
                    self._emit(self._evaluate())
                    last_eval_step = self.step
                if c.save_interval and self.step % c.save_interval == 0 and not done:
                    self._save_last()
                    self._snapshot()

        if c.eval_interval and last_eval_step != self.step and stop_reason not in ("interrupted", "diverged"):
            self._emit(self._evaluate())
        self._save_last()
        if self.is_main:
            plot_loss_curve(self.metrics.records, self.run_dir / "loss.png", title=str(self.run_dir))
        elapsed = self._elapsed()
        trained = self.tokens_seen - (self.plan.resume.training["tokens_seen"] if self.plan.resume else 0)
        best = self.run_dir / "best.pth"
        return TrainSummary(
            run_dir=self.run_dir, stop_reason=stop_reason, step=self.step, total_steps=plan.total_steps,
            tokens_seen=self.tokens_seen, elapsed=elapsed, tokens_per_second=max(trained, 0) / elapsed,
            final_loss=self.smoothed, val_loss=self.last_val_loss, best_val_loss=self.best_val_loss,
            last_checkpoint=self.run_dir / "last.pth",
            best_checkpoint=best if self.best_val_loss is not None and best.exists() else None,
            recoveries=self.recoveries, start_step=self.start_step,
        )

    def _too_big(self) -> str:
        c = self.config
        return (
            f"a batch of {c.batch_size} windows x {c.seq_len} tokens does not fit in {self.device.type} memory: "
            f"lower --batch-size (--global-batch {c.global_batch} is kept by accumulating gradients) or --seq-len"
        )
