"""What `gpt2es train` shows: the live panel (or plain lines when piped) and the final summary.

`TrainDisplay` subscribes to the training loop's events like any other subscriber;
`run_training` runs the loop with it on the main process and renders how the run ended (and,
with --push-to-hub, where it was uploaded).
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
from gpt2es_cli.errors import Gpt2esError
from gpt2es_cli.training import (
    AutoResume,
    Event,
    Recovery,
    RunFinished,
    Saved,
    StepReport,
    TrainStart,
    TrainSummary,
    ValidationDone,
    is_main_process,
    train,
)
from gpt2es_cli.training.budget import Budget
from gpt2es_cli.training.events import PlanFitted, PlanWarning, StopReason, TrainEnd, UploadFailed
from gpt2es_cli.training.subscribers import logger_outputs

EVAL_ROWS_SHOWN = 8


def _budget_words(budget: Budget | None, c: TrainConfig) -> str:
    """Why a run has its steps: '1 epoch', '2.5 epochs', '--max-steps', '1.00M tokens'."""
    if budget == Budget.EPOCHS:
        epochs = c.epochs or 1.0
        return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")
    if budget == Budget.MAX_TOKENS and c.max_tokens is not None:
        return f"{fmt.count(c.max_tokens)} tokens"
    return f"--{str(budget or Budget.MAX_STEPS).replace('_', '-')}"


def _steps_words(s: TrainStart) -> str:
    """'415 steps (1 epoch)', '~ steps fitted to 4m after the first 10', '520 steps (fitted to 10m)'."""
    c = s.config
    if s.fit_time and s.max_time is not None:
        cap = f", at most {s.cap_steps:,} ({_budget_words(s.cap_budget, c)})" if s.cap_steps is not None else ""
        return f"steps fitted to {fmt.duration(s.max_time)} after the first ones{cap}"
    if s.budget == Budget.MAX_TIME and s.max_time is not None:
        return f"{s.total_steps:,} steps (fitted to {fmt.duration(s.max_time)})"
    return f"{s.total_steps:,} steps ({_budget_words(s.budget, c)})"


def _plan_line(p: PlanFitted, resumed: bool = False) -> str:
    costs = f"{p.step_time:.3g} s/step, {p.eval_time:.2g} s per evaluation, {p.save_time:.2g} s per save"
    what = f"re-planned at step {p.step}" if not p.first else f"plan from step {p.step}" if resumed else "plan"
    bound = "" if p.budget == Budget.MAX_TIME else f" (the step budget binds first; {p.time_steps:,} would fit)"
    return (
        f"{what}: {p.total_steps:,} steps in {fmt.duration(p.max_time)}{bound} ({costs}) | warmup {p.warmup_steps} | "
        f"{p.evals} {'' if p.first and not resumed else 'more '}evaluations of {p.eval_batches} batch{'es' if p.eval_batches != 1 else ''} | "
        f"ends at {fmt.clock(p.projected)}"
    )


def _batch_choice_line(s: TrainStart) -> str:
    """What --batch-size auto chose: 'batch size auto: 8 per pass, the largest that fits (estimated 4.1 GB of 5.0 GB free, ...)'."""
    b, c = s.batch_choice, s.config
    procs = f" over {s.world_size} processes" if s.world_size > 1 else ""
    why = {
        "memory": "the largest that fits",
        "cap": "the most it picks",
        "data": f"as the training data holds {b.cap * s.world_size} windows",
        "global_batch": f"the largest power of two dividing --global-batch {c.global_batch}{procs}",
    }[b.limit]
    if b.method == "probe":
        how = f"a measured step peaked at {fmt.size(b.needed)} of {fmt.size(b.available)} free"
    else:
        how = f"estimated {fmt.size(b.needed)} of {fmt.size(b.available)} free, {fmt.size(b.per_window)} per window"
    return f"batch size auto: {b.batch_size} per pass, {why} ({how})"


def _lora_line(s: TrainStart) -> str:
    """'LoRA rank 16 (alpha 32) on c_attn, c_proj, c_fc: 2.36M trainable parameters (0.66%), the base frozen in bfloat16; AdamW'."""
    a, trainable = s.adapter, s.trainable_parameters or 0
    share = f" ({trainable / s.num_parameters:.2%})" if s.num_parameters else ""
    return (f"LoRA rank {a.rank} (alpha {a.alpha:g}) on {', '.join(a.targets)}: {fmt.count(trainable)} trainable "
            f"parameters{share}, the base frozen in {s.base_dtype}; adapters train with AdamW")


def _size_choice_line(s: TrainStart) -> str:
    """What --preset auto chose: 'preset auto: 4x256 (3.1M block parameters, lr 1.8e-3): ...'."""
    z, c = s.size_choice, s.config
    lr = f", lr {z.lr:.2g}" if z.lr is not None else ""
    head = f"preset auto: {z.name} ({c.n_layer} blocks x {c.n_embd} wide{lr})"
    if z.reason == "no_time":
        return f"{head}: without --max-time there is no time to fit, so the {z.name} preset"
    timed = [k for k in z.candidates if k.tokens is not None]
    rates = ", ".join(
        f"{k.name} {fmt.count(k.tokens_per_second)} tok/s ({k.tokens / k.block_parameters:.2g} tokens/param)"
        for k in timed
    )
    chosen = z.chosen
    enough = chosen is not None and chosen.tokens is not None and (
        chosen.tokens >= z.tokens_per_parameter * chosen.block_parameters
    )
    rule = f"{z.tokens_per_parameter:g}+ tokens per block parameter in {fmt.duration(c.max_time)}"
    why = f"the largest model that trains {rule}" if enough else f"the smallest, as none trains {rule}"
    return f"{head}, {why} | timed in {z.probe_seconds:.0f} s: {rates}"


def _grad_text(r: StepReport) -> str:
    """'grad 0.812', or 'grad 3.412 (2 clipped at 1.6)' when clipping fired since the last report."""
    if r.clipped and r.grad_clip is not None:
        return f"grad {r.grad_norm:.3f} ({r.clipped} clipped at {r.grad_clip:.2g})"
    return f"grad {r.grad_norm:.3f}"


def _step_line(r: StepReport) -> str:
    parts = [
        f"step {r.step:>{len(str(r.total_steps))}}/{r.total_steps} ({100 * r.step / r.total_steps:.1f}%)",
        f"loss {r.loss:.4f}",
        f"avg {r.smoothed_loss:.4f}",
        f"lr {r.lr:.2e}",
        _grad_text(r),
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
        self.summary: TrainSummary | None = None
        """How the run ended, once it has."""

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
            if event.batch_choice is not None and not event.batch_choice.fits:
                warn(
                    f"even one window is estimated at {fmt.size(event.batch_choice.needed)}, near or above the "
                    f"{fmt.size(event.batch_choice.available)} free: if it runs out of memory, use "
                    "--activation-checkpointing, a lower --seq-len or a smaller model"
                )
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
        elif isinstance(event, PlanFitted):
            resumed = self.start is not None and self.start.start_step > 0
            self._print(f"[dim]{escape(_plan_line(event, resumed))}[/]", soft_wrap=True)
        elif isinstance(event, PlanWarning):
            warn(event.message)
        elif isinstance(event, Recovery):
            warn(
                f"loss was not finite at step {event.step}: rolled back to step {event.restored_step}, "
                f"learning rate x{event.lr_scale:g} (attempt {event.attempt} of {event.max_attempts})"
            )
        elif isinstance(event, UploadFailed):
            warn(event.message)
        elif isinstance(event, TrainEnd):
            self.summary = event.summary
        if self.live is not None:
            self.live.update(self._render())

    def _header(self, s: TrainStart) -> str:
        c = s.config
        what = f"resuming at step {s.start_step}" if s.start_step else "new run"
        init = f", from {c.init_from}" if c.init_from else ""
        procs = f" x {s.world_size} processes" if s.world_size > 1 else ""
        if c.parallel == "fsdp":  # auto is resolved by the time the run starts
            procs += f" sharded (FSDP{', CPU offload' if c.cpu_offload else ''})"
        accumulation = f"{s.accum_steps} accumulation step{'s' if s.accum_steps != 1 else ''}"
        return (  # short lines: each fits 80 columns but for long paths and the auto choices below
            f"[bold]gpt2es train[/] -> {escape(str(s.run_dir))} ({what}{escape(init)})\n"
            f"model {s.num_parameters / 1e6:.2f}M parameters | {s.device}{procs}, {s.precision}"
            f"{', compiled' if c.compile else ''}\n"
            f"data {escape(c.data)} ({fmt.count(s.train_tokens)} tokens)\n"
            f"batch {c.global_batch} x {c.seq_len} = {s.tokens_per_step:,} tokens/step ({c.batch_size} per pass, "
            f"{accumulation})\n"
            f"{_steps_words(s)} | lr {c.peak_lr:g} {c.schedule}, warmup "
            + (f"{s.warmup_steps}" if s.warmup_steps is not None else "5% of the steps")
            + (f"\n{_lora_line(s)}" if s.adapter is not None else "")
            + (f"\n{_size_choice_line(s)}" if s.size_choice is not None else "")
            + (f"\n{_batch_choice_line(s)}" if s.batch_choice is not None else "")
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
            bar = Table.grid(padding=(0, 1))  # a line of its own: a bare ProgressBar runs into what follows
            bar.add_row(ProgressBar(total=r.total_steps, completed=r.step, width=50), f"{100 * r.step / r.total_steps:.1f}%")
            parts.append(bar)
            stats = Table.grid(padding=(0, 2))
            # Three rows of at most four cells: 80 columns hold them whole (no cell wraps).
            stats.add_row(f"step [bold]{r.step}[/]/{r.total_steps}", f"loss [bold]{r.loss:.4f}[/]",
                          f"avg {r.smoothed_loss:.4f}", f"lr {r.lr:.2e}")
            speed = [f"{r.tokens_per_second:,.0f} tok/s"] + ([f"mfu {100 * r.mfu:.1f}%"] if r.mfu is not None else [])
            stats.add_row(_grad_text(r), *speed)
            stats.add_row(f"epoch {r.epoch:.2f}", f"elapsed {fmt.clock(r.elapsed)}", f"eta {fmt.clock(r.eta)}")
            parts.append(stats)
        return Group(*parts)


STOP_WORDS = {
    StopReason.MAX_STEPS: "reached --max-steps",
    StopReason.MAX_TOKENS: "reached --max-tokens",
    StopReason.EPOCHS: "reached the epoch budget",
    StopReason.MAX_TIME: "used its --max-time",
    StopReason.OUT_OF_TIME: "ran out of --max-time before its planned end (the steps slowed down)",
    StopReason.INTERRUPTED: "interrupted",
    StopReason.DIVERGED: "stopped: the loss kept diverging",
}
"""The summary's 'stopped' line for each way a run ends."""


def _render_summary(s: TrainSummary, log_to: str = "") -> None:
    rows = [
        ("stopped", STOP_WORDS[s.stop_reason]),
        ("steps", f"{s.step}/{s.total_steps}" + (f" (resumed at {s.start_step})" if s.start_step else "")),
        ("tokens", f"{s.tokens_seen:,}"),
        ("time", f"{fmt.clock(s.elapsed)} ({s.tokens_per_second:,.0f} tok/s)" + (
            f", {fmt.duration(s.run_elapsed or s.elapsed)} of --max-time {fmt.duration(s.max_time)}"
            if s.max_time is not None else ""
        )),
    ]
    if s.final_loss is not None:
        rows.append(("train loss", f"{s.final_loss:.4f} (smoothed)"))
    if s.val_loss is not None:
        rows.append(("val loss", f"{s.val_loss:.4f} (best {s.best_val_loss:.4f})"))
    if s.recoveries:
        rows.append(("recoveries", str(s.recoveries)))
    rows.append(("checkpoint", str(s.last_checkpoint) if s.last_checkpoint is not None else "none saved"))
    if s.best_checkpoint is not None:
        rows.append(("best", str(s.best_checkpoint)))
    rows.append(("metrics", f"{s.run_dir / 'metrics.jsonl'}, {s.run_dir / 'loss.png'}"))
    rows += logger_outputs(log_to, s.run_dir).items()
    width = max(11, *(len(label) + 1 for label, _ in rows))
    for label, value in rows:  # plain lines: paths must never be cut to the terminal width
        console.print(f"[bold]{label:<{width}}[/]{escape(value)}", soft_wrap=True)
    if s.stop_reason.resumable and s.last_checkpoint is not None:
        err_console.print(f"resume with: gpt2es train --resume {escape(str(s.run_dir))}", soft_wrap=True)
    else:
        sample_from = s.best_checkpoint or s.last_checkpoint
        console.print(f"sample with: gpt2es sample {escape(str(sample_from))}", soft_wrap=True)


def show_auto_resume(found: AutoResume) -> None:
    """The newer checkpoints --resume auto passed over, and the one it resumes instead (main process only)."""
    if not is_main_process():
        return
    if found.restart:
        warn(f"{found.run_dir} holds a run stopped before its first last.pth ({', '.join(found.restart[:3])}): "
             "starting it again (its files are put back if the new run fails before it saves)")
    for reason in found.passed_over:
        warn(f"passed over: {reason}")
    if found.passed_over and found.checkpoint is not None:
        warn(f"resuming from {found.checkpoint.path}, the newest checkpoint that loads")


def show_finished(finished: RunFinished) -> None:
    """--resume auto of a run that has trained its whole budget: said once, and no failure."""
    if is_main_process():
        console.print(f"nothing to train: {escape(str(finished))}", soft_wrap=True)


def run_training(config: TrainConfig, checkpoint: Checkpoint | None, force: bool) -> None:
    """Train with the live display on the main process (quietly on the others), then render the end."""
    if not is_main_process():  # other torchrun processes: train quietly
        train(config, resume=checkpoint, force=force)
        return
    display = TrainDisplay(live=console.is_terminal)
    try:
        with display:
            summary = train(config, resume=checkpoint, force=force, subscribers=[display])
    except Gpt2esError:
        if display.summary is not None:  # the run ended and saved; only the upload at the end failed
            _render_summary(display.summary, config.log_to)
        raise
    _render_summary(summary, config.log_to)
    if summary.hub_url is not None:
        console.print(f"uploaded {escape(str(summary.run_dir / 'hf'))} to {escape(summary.hub_url)}", soft_wrap=True)
    if summary.stop_reason is StopReason.DIVERGED and summary.last_checkpoint is None:
        raise fail(
            f"the loss was not finite before its first good step ({config.nan_retries} rollbacks), so nothing "
            "was saved and the run directory is as it was: lower --lr or --grad-clip, or use --dtype float32"
        )
    if summary.stop_reason is StopReason.DIVERGED:
        raise fail(
            f"the loss was not finite again after {config.nan_retries} rollbacks; the last good state is in "
            f"{summary.last_checkpoint}: resume it with a lower --lr, a lower --grad-clip, or --dtype float32"
        )
    if summary.stop_reason is StopReason.INTERRUPTED:
        raise typer.Exit(130)
