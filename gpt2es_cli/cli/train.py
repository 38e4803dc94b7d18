"""`gpt2es train`: parse options, call the training loop, render its progress."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from gpt2es_cli.cli.app import command, console, err_console, fail, warn
from gpt2es_cli.config import SCHEDULES, TrainConfig, load_config_file
from gpt2es_cli.training import (
    EvalReport,
    Recovery,
    Saved,
    StepReport,
    TrainStart,
    TrainSummary,
    load_resume_checkpoint,
    resume_config,
    train,
)

DATA, MODEL, BUDGET, OPTIM, DEVICE, WATCH = (
    "Data and run", "Model", "Budget", "Optimizer", "Device and precision", "Evaluation, logs, checkpoints",
)
EVAL_ROWS_SHOWN = 8


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _step_line(r: StepReport) -> str:
    parts = [
        f"step {r.step:>{len(str(r.total_steps))}}/{r.total_steps} ({100 * r.step / r.total_steps:.1f}%)",
        f"loss {r.loss:.4f}",
        f"avg {r.smoothed_loss:.4f}",
        f"lr {r.lr:.2e}",
        f"grad {r.grad_norm:.3f}",
        f"{r.tokens_per_second:,.0f} tok/s",
    ]
    if r.mfu is not None:
        parts.append(f"mfu {100 * r.mfu:.1f}%")
    parts += [f"epoch {r.epoch:.2f}", f"{_duration(r.elapsed)} elapsed", f"eta {_duration(r.eta)}"]
    return " | ".join(parts)


class TrainDisplay:
    """Renders the loop's events: a live panel on a terminal, plain lines otherwise."""

    def __init__(self, live: bool):
        self.live: Live | None = Live(console=console, refresh_per_second=4, transient=False) if live else None
        self.evals: list[EvalReport] = []
        self.last: StepReport | None = None
        self.start: TrainStart | None = None

    def __enter__(self) -> TrainDisplay:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.update(self._render(final=True), refresh=True)
            self.live.__exit__(*exc)

    def _print(self, *args: Any, **kwargs: Any) -> None:
        (self.live.console if self.live is not None else console).print(*args, **kwargs)

    def __call__(self, event: object) -> None:
        if isinstance(event, TrainStart):
            self.start = event
            self._print(self._header(event), soft_wrap=True)
        elif isinstance(event, StepReport):
            self.last = event
            if self.live is None:
                console.print(_step_line(event), soft_wrap=True)
        elif isinstance(event, EvalReport):
            self.evals.append(event)
            mark = " (best)" if event.best else ""
            line = f"eval step {event.step} | val loss {event.val_loss:.4f} | ppl {event.val_perplexity:.2f}{mark}"
            if self.live is None:
                console.print(line, soft_wrap=True)
            if event.sample is not None:
                self._print(f"[dim]sample:[/] {escape(event.sample)}", soft_wrap=True)
        elif isinstance(event, Saved):
            self._print(f"[dim]saved {escape(str(event.path))} (step {event.step})[/]", soft_wrap=True)
        elif isinstance(event, Recovery):
            warn(
                f"loss was not finite at step {event.step}: rolled back to step {event.restored_step}, "
                f"learning rate x{event.lr_scale:g} (attempt {event.attempt} of {event.max_attempts})"
            )
        if self.live is not None:
            self.live.update(self._render())

    def _header(self, s: TrainStart) -> str:
        c = s.config
        what = f"resuming at step {s.start_step}" if s.start_step else "new run"
        init = f", from {c.init_from}" if c.init_from else ""
        procs = f" x {s.world_size} processes" if s.world_size > 1 else ""
        return (
            f"[bold]gpt2es train[/] -> {escape(str(s.run_dir))} ({what}{escape(init)})\n"
            f"model {s.num_parameters / 1e6:.2f}M parameters | data {escape(c.data)} ({_count(s.train_tokens)} tokens) | "
            f"{s.device}{procs}, {s.precision}{', compiled' if c.compile else ''}\n"
            f"batch {c.global_batch} x {c.seq_len} = {s.tokens_per_step:,} tokens/step "
            f"({c.batch_size} per pass, {s.accum_steps} accumulation step(s)) | {s.total_steps} steps ({s.budget}) | "
            f"lr {c.lr:g} {c.schedule}, warmup {c.warmup_steps}"
        )

    def _eval_table(self, rows: list[EvalReport], hidden: int) -> Table:
        table = Table(title="validation", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("step", "tokens", "val loss", "perplexity", ""):
            table.add_column(col, justify="right" if col else "left")
        if hidden:
            table.add_row("…", f"{hidden} earlier", "", "", "")
        for e in rows:
            table.add_row(str(e.step), _count(e.tokens_seen), f"{e.val_loss:.4f}", f"{e.val_perplexity:.2f}",
                          "[green]best[/]" if e.best else "")
        return table

    def _render(self, final: bool = False) -> RenderableType:
        parts: list[RenderableType] = []
        if self.evals:
            rows = self.evals if final else self.evals[-EVAL_ROWS_SHOWN:]
            parts.append(self._eval_table(rows, len(self.evals) - len(rows)))
        r = self.last
        if r is not None:
            parts.append(ProgressBar(total=r.total_steps, completed=r.step, width=60))
            stats = Table.grid(padding=(0, 2))
            stats.add_row(
                f"step [bold]{r.step}[/]/{r.total_steps}", f"loss [bold]{r.loss:.4f}[/]",
                f"avg {r.smoothed_loss:.4f}", f"lr {r.lr:.2e}", f"grad {r.grad_norm:.3f}",
            )
            speed = [f"{r.tokens_per_second:,.0f} tok/s"] + ([f"mfu {100 * r.mfu:.1f}%"] if r.mfu is not None else [])
            stats.add_row(*speed, f"epoch {r.epoch:.2f}", f"elapsed {_duration(r.elapsed)}", f"eta {_duration(r.eta)}")
            parts.append(stats)
        return Group(*parts)


def _render_summary(s: TrainSummary) -> None:
    reasons = {
        "max_steps": "reached --max-steps",
        "max_tokens": "reached --max-tokens",
        "epochs": "reached the epoch budget",
        "max_time": "reached --max-time",
        "interrupted": "interrupted",
        "diverged": "stopped: the loss kept diverging",
    }
    rows = [
        ("stopped", reasons.get(s.stop_reason, s.stop_reason)),
        ("steps", f"{s.step}/{s.total_steps}" + (f" (resumed at {s.start_step})" if s.start_step else "")),
        ("tokens", f"{s.tokens_seen:,}"),
        ("time", f"{_duration(s.elapsed)} ({s.tokens_per_second:,.0f} tok/s)"),
    ]
    if s.final_loss is not None:
        rows.append(("train loss", f"{s.final_loss:.4f} (smoothed)"))
    if s.val_loss is not None:
        rows.append(("val loss", f"{s.val_loss:.4f} (best {s.best_val_loss:.4f})"))
    if s.recoveries:
        rows.append(("recoveries", str(s.recoveries)))
    rows.append(("checkpoint", str(s.last_checkpoint)))
    if s.best_checkpoint is not None:
        rows.append(("best", str(s.best_checkpoint)))
    rows.append(("metrics", f"{s.run_dir / 'metrics.jsonl'}, {s.run_dir / 'loss.png'}"))
    for label, value in rows:  # plain lines: paths must never be cut to the terminal width
        console.print(f"[bold]{label:<11}[/]{escape(value)}", soft_wrap=True)
    if s.stop_reason in ("interrupted", "max_time", "diverged"):
        err_console.print(f"resume with: gpt2es train --resume {escape(str(s.run_dir))}", soft_wrap=True)
    else:
        sample_from = s.best_checkpoint or s.last_checkpoint
        console.print(f"sample with: gpt2es sample {escape(str(sample_from))}", soft_wrap=True)


@command("train")
def train_command(
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Prepared dataset directory (from `gpt2es prepare`).", show_default="data/demo", rich_help_panel=DATA)] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Run directory for checkpoints and metrics.", show_default="runs/<dataset name>", rich_help_panel=DATA)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML or YAML file of settings (the names of these options); options given here win.", rich_help_panel=DATA)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue a run: its directory (last.pth) or a checkpoint file.", rich_help_panel=DATA)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run already in --out.", rich_help_panel=DATA)] = False,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per training window.", show_default="the model's context", rich_help_panel=DATA)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Windows per forward pass in each process.", show_default="8", rich_help_panel=DATA)] = None,
    global_batch: Annotated[Optional[int], typer.Option("--global-batch", help="Windows per optimizer step over all processes; gradient accumulation makes up the difference.", show_default="--batch-size x processes", rich_help_panel=DATA)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the initial weights, data order and dropout.", show_default="1337", rich_help_panel=DATA)] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Model preset: tiny, small, gpt2, gpt2-medium, gpt2-large, gpt2-xl.", show_default="small", rich_help_panel=MODEL)] = None,
    n_layer: Annotated[Optional[int], typer.Option("--n-layer", help="Override the preset's number of blocks.", rich_help_panel=MODEL)] = None,
    n_head: Annotated[Optional[int], typer.Option("--n-head", help="Override the preset's attention heads.", rich_help_panel=MODEL)] = None,
    n_embd: Annotated[Optional[int], typer.Option("--n-embd", help="Override the preset's width.", rich_help_panel=MODEL)] = None,
    n_positions: Annotated[Optional[int], typer.Option("--n-positions", help="Override the preset's context length.", rich_help_panel=MODEL)] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", help="Override the dropout (also with --init-from).", rich_help_panel=MODEL)] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start from a checkpoint, run directory or Hugging Face GPT-2 directory (fine-tuning).", rich_help_panel=MODEL)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.", rich_help_panel=BUDGET)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Stop after this many training tokens.", rich_help_panel=BUDGET)] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Stop after this many passes over the data.", show_default="1 when no other step budget is given", rich_help_panel=BUDGET)] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="Stop after this long in this invocation, e.g. 90s, 30m, 2h (the schedule still follows the step budget).", rich_help_panel=BUDGET)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default="6e-4", rich_help_panel=OPTIM)] = None,
    min_lr: Annotated[Optional[float], typer.Option("--min-lr", help="Floor the schedule decays to.", show_default="lr / 10", rich_help_panel=OPTIM)] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help=f"Learning-rate schedule after a linear warmup: {', '.join(SCHEDULES)} (wsd: warmup-stable-decay).", show_default="cosine", rich_help_panel=OPTIM)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", help="Linear warmup steps.", show_default="5% of the steps, at most 1000", rich_help_panel=OPTIM)] = None,
    decay_fraction: Annotated[Optional[float], typer.Option("--decay-fraction", help="wsd: the final fraction of steps that decays.", show_default="0.2", rich_help_panel=OPTIM)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay on matrices only.", show_default="0.1", rich_help_panel=OPTIM)] = None,
    beta1: Annotated[Optional[float], typer.Option("--beta1", help="AdamW beta1.", show_default="0.9", rich_help_panel=OPTIM)] = None,
    beta2: Annotated[Optional[float], typer.Option("--beta2", help="AdamW beta2.", show_default="0.95", rich_help_panel=OPTIM)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm to this; 0 disables.", show_default="1.0", rich_help_panel=OPTIM)] = None,
    nan_retries: Annotated[Optional[int], typer.Option("--nan-retries", help="Rollbacks allowed after a non-finite loss before stopping.", show_default="3", rich_help_panel=OPTIM)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", show_default="auto", rich_help_panel=DEVICE)] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision: bf16 where supported (CPU, Ampere+), else fp16 with loss scaling.", show_default="off", rich_help_panel=DEVICE)] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Force the compute dtype: float32, bfloat16 or float16.", rich_help_panel=DEVICE)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model (slow to start, faster steps).", show_default="off", rich_help_panel=DEVICE)] = None,
    peak_tflops: Annotated[Optional[float], typer.Option("--peak-tflops", help="Peak TFLOP/s of one device, for MFU.", show_default="known GPUs only", rich_help_panel=DEVICE)] = None,
    log_interval: Annotated[Optional[int], typer.Option("--log-interval", help="Report progress every N steps.", show_default="10", rich_help_panel=WATCH)] = None,
    eval_interval: Annotated[Optional[int], typer.Option("--eval-interval", help="Validation loss and a sample every N steps and at the end; 0 disables.", show_default="200", rich_help_panel=WATCH)] = None,
    eval_batches: Annotated[Optional[int], typer.Option("--eval-batches", help="Fixed validation batches per evaluation.", show_default="20", rich_help_panel=WATCH)] = None,
    sample_prompt: Annotated[Optional[str], typer.Option("--sample-prompt", help="Prompt of the sample at each evaluation.", show_default="Había una vez", rich_help_panel=WATCH)] = None,
    sample_tokens: Annotated[Optional[int], typer.Option("--sample-tokens", help="New tokens in that sample; 0 disables.", show_default="40", rich_help_panel=WATCH)] = None,
    save_interval: Annotated[Optional[int], typer.Option("--save-interval", help="Write last.pth every N steps (and at the end).", show_default="500", rich_help_panel=WATCH)] = None,
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", help="Also keep the newest N numbered checkpoints step-NNNNNNN.pth.", show_default="0", rich_help_panel=WATCH)] = None,
) -> None:
    """Train a GPT-2 model on a prepared dataset into a run directory.

    Writes config.yaml, metrics.jsonl, loss.png, last.pth and best.pth (lowest validation loss).
    Ctrl-C saves last.pth and stops; --resume RUN_DIR continues exactly where it stopped.
    For several GPUs or machines, launch it with torchrun.
    """
    given = dict(locals())
    explicit = {
        k: v for k, v in given.items()
        if v is not None and k not in ("config_file", "resume", "force")
    }
    file_settings = load_config_file(config_file) if config_file is not None else {}
    checkpoint = None
    if resume is not None:
        checkpoint = load_resume_checkpoint(resume)
        config = resume_config(checkpoint, {**file_settings, **explicit})
    else:
        config = TrainConfig.from_dict(file_settings, source=str(config_file)).updated(explicit, source="options")

    main_process = int(os.environ.get("RANK", "0")) == 0
    display = TrainDisplay(live=console.is_terminal) if main_process else None
    if display is None:  # other torchrun processes: train quietly
        train(config, resume=checkpoint, force=force)
        return
    with display:
        summary = train(config, resume=checkpoint, force=force, callback=display)
    _render_summary(summary)
    if summary.stop_reason == "diverged":
        raise fail(
            f"the loss was not finite again after {config.nan_retries} rollbacks; the last good state is in "
            f"{summary.last_checkpoint}: resume it with a lower --lr, a lower --grad-clip, or --dtype float32"
        )
    if summary.stop_reason == "interrupted":
        raise typer.Exit(130)
