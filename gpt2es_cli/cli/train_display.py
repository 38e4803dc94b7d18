"""What `gpt2es train` shows: the live panel (or plain lines when piped) and the final summary.

`TrainDisplay` subscribes to the training loop's events like any other subscriber;
`run_training` runs the loop with it on the main process and renders how the run ended.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.cli import fmt
from gpt2es_cli.cli.app import console, err_console, fail, warn
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training import (
    Event,
    Recovery,
    Saved,
    StepReport,
    TrainStart,
    TrainSummary,
    ValidationDone,
    is_main_process,
    train,
)

EVAL_ROWS_SHOWN = 8


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
    parts += [f"epoch {r.epoch:.2f}", f"{fmt.clock(r.elapsed)} elapsed", f"eta {fmt.clock(r.eta)}"]
    return " | ".join(parts)


class TrainDisplay:
    """Renders the loop's events: a live panel on a terminal, plain lines otherwise."""

    def __init__(self, live: bool):
        self.live: Live | None = Live(console=console, refresh_per_second=4, transient=False) if live else None
        self.evals: list[ValidationDone] = []
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

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self.start = event
            self._print(self._header(event), soft_wrap=True)
        elif isinstance(event, StepReport):
            self.last = event
            if self.live is None:
                console.print(_step_line(event), soft_wrap=True)
        elif isinstance(event, ValidationDone):
            self.evals.append(event)
            mark = " (best)" if event.best else ""
            line = f"eval step {event.step} | val loss {event.val_loss:.4f} | ppl {event.val_perplexity:.2f}{mark}"
            if self.live is None:
                console.print(line, soft_wrap=True)
            if event.sample is not None:
                self._print(f"[dim]sample:[/] {escape(event.sample)}", soft_wrap=True)
        elif isinstance(event, Saved) and not event.best:  # best.pth: the validation table marks it
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
            f"model {s.num_parameters / 1e6:.2f}M parameters | data {escape(c.data)} ({fmt.count(s.train_tokens)} tokens) | "
            f"{s.device}{procs}, {s.precision}{', compiled' if c.compile else ''}\n"
            f"batch {c.global_batch} x {c.seq_len} = {s.tokens_per_step:,} tokens/step "
            f"({c.batch_size} per pass, {s.accum_steps} accumulation step(s)) | {s.total_steps} steps ({s.budget}) | "
            f"lr {c.lr:g} {c.schedule}, warmup {c.warmup_steps}"
        )

    def _eval_table(self, rows: list[ValidationDone], hidden: int) -> Table:
        table = Table(title="validation", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("step", "tokens", "val loss", "perplexity", ""):
            table.add_column(col, justify="right" if col else "left")
        if hidden:
            table.add_row("…", f"{hidden} earlier", "", "", "")
        for e in rows:
            table.add_row(str(e.step), fmt.count(e.tokens_seen), f"{e.val_loss:.4f}", f"{e.val_perplexity:.2f}",
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
            stats.add_row(*speed, f"epoch {r.epoch:.2f}", f"elapsed {fmt.clock(r.elapsed)}", f"eta {fmt.clock(r.eta)}")
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
        ("time", f"{fmt.clock(s.elapsed)} ({s.tokens_per_second:,.0f} tok/s)"),
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


def run_training(config: TrainConfig, checkpoint: Checkpoint | None, force: bool) -> None:
    """Train with the live display on the main process (quietly on the others), then render the end."""
    if not is_main_process():  # other torchrun processes: train quietly
        train(config, resume=checkpoint, force=force)
        return
    with TrainDisplay(live=console.is_terminal) as display:
        summary = train(config, resume=checkpoint, force=force, subscribers=[display])
    _render_summary(summary)
    if summary.stop_reason == "diverged":
        raise fail(
            f"the loss was not finite again after {config.nan_retries} rollbacks; the last good state is in "
            f"{summary.last_checkpoint}: resume it with a lower --lr, a lower --grad-clip, or --dtype float32"
        )
    if summary.stop_reason == "interrupted":
        raise typer.Exit(130)
