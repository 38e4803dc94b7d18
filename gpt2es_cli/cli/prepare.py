"""`gpt2es prepare`: any Spanish corpus to a tokenizer and memory-mapped token files."""

from __future__ import annotations

import time
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gpt2es_cli.cli.app import command, console, err_console
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.cli.render_data import (
    fertility_table,
    hygiene_table,
    instructions_table,
    mixture_table,
    splits_table,
)
from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.dataset_tokenizer import tokenizer_label
from gpt2es_cli.data.instructions import prepare_instructions
from gpt2es_cli.data.mixture import open_sources
from gpt2es_cli.data.passes import PrepareProgress
from gpt2es_cli.data.prepare import PrepareResult, prepare
from gpt2es_cli.data.shards import shard_set_state

PHASES = {"sample": "tokenizer sample", "train": "tokenizer training", "tokenize": "tokenizing"}


class ProgressView:
    """A rich progress display on stderr; plain lines every 30 s when stderr is not a terminal."""

    def __init__(self) -> None:
        self.live = err_console.is_terminal
        self.progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/]"),
            TextColumn("{task.description:<18}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.phase: str | None = None
        self.last_line = 0.0

    def __enter__(self) -> ProgressView:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def __call__(self, p: PrepareProgress) -> None:
        rate = f"{p.tokens / p.seconds:,.0f} tokens/s" if p.tokens and p.seconds > 0 else ""
        counts = f"{p.documents:,} docs, {p.bytes_read / 1e6:,.1f} MB"
        if p.phase == "tokenize":
            counts += f", {p.tokens:,} tokens, {rate}"
        fields = {"counts": counts}
        if p.phase != self.phase:
            self._finish_phase()
            self.phase = p.phase
            total = None if p.fraction is None else 1.0
            self.tasks[p.phase] = self.progress.add_task(PHASES.get(p.phase, p.phase), total=total, **fields)
            if not self.live:
                err_console.print(f"{PHASES.get(p.phase, p.phase)}...")
                self.last_line = time.monotonic()
        task = self.tasks[p.phase]
        self.progress.update(task, completed=p.fraction or 0.0, **fields)
        if not self.live and time.monotonic() - self.last_line >= 30:
            done = "" if p.fraction is None else f" ({p.fraction:.0%})"
            err_console.print(f"  {counts}{done}")
            self.last_line = time.monotonic()

    def _finish_phase(self) -> None:
        if self.phase is not None:
            task = self.tasks[self.phase]
            self.progress.update(task, total=1.0, completed=1.0)


def render_result(result: PrepareResult) -> None:
    """The summary `prepare` ends with, on stdout."""
    meta = result.meta
    console.print(f"[bold green]Prepared[/] {result.path} in {result.seconds:,.1f} s")
    console.print(splits_table(meta))
    tok = meta.get("tokenizer", {})
    info = Table(title="Run", title_justify="left", show_header=False)
    info.add_column("what", style="bold")
    info.add_column("value")
    info.add_row("source", str(meta["source"].get("name")))
    label = tokenizer_label(tok)
    if tok.get("origin") == "trained" and tok["vocab_size"] < tok["requested_vocab_size"]:
        label += f"; {tok['requested_vocab_size']} asked, the text supports no more"
    info.add_row("tokenizer", label)
    if tok.get("origin") == "trained":
        info.add_row(
            "trained on", f"{tok['trained_on_documents']:,} documents, {tok['trained_on_bytes'] / 1e6:,.2f} MB"
        )
    info.add_row("dtype", meta["dtype"])
    speed = result.tokens / result.tokenize_seconds if result.tokenize_seconds > 0 else 0.0
    mb = sum(s["bytes"] for s in meta["splits"].values()) / 1e6
    rate = mb / result.tokenize_seconds if result.tokenize_seconds > 0 else 0.0
    info.add_row("tokenizing", f"{result.tokenize_seconds:,.1f} s, {speed:,.0f} tokens/s, {rate:,.2f} MB/s")
    info.add_row("worker processes", str(result.num_proc))
    console.print(info)
    for table in (mixture_table(meta), instructions_table(meta), hygiene_table(meta), fertility_table(meta)):
        if table is not None:
            console.print(table)
    if meta.get("shard"):
        render_shard_state(result)


def render_shard_state(result: PrepareResult) -> None:
    """After one shard: how many of the corpus's shards are ready, and what to run next."""
    shard, parent = result.meta["shard"], result.path.parent
    state = shard_set_state(parent, shard["count"])
    where = escape(str(parent))
    console.print(f"shard {shard['index']} of {shard['count']} (counted from 0): {len(state.present)} of "
                  f"{state.count} shards of {where} are ready")
    if state.missing:
        shown = ", ".join(map(str, state.missing[:8])) + (" ..." if len(state.missing) > 8 else "")
        console.print(f"still to prepare (or being prepared): {shown}; then: gpt2es train -d {where}")
    else:
        console.print(f"next: gpt2es train -d {where}")


@command("prepare", epilog='Examples:\n\n  gpt2es prepare\n\n  gpt2es prepare --dataset oscar --max-bytes 2GB\n\n  gpt2es prepare -d libros/ --txt-mode file -o data/libros\n\n  gpt2es prepare --format instructions -d alpaca_es.jsonl --tokenizer runs/demo')
@settings_options(PrepareConfig)
def prepare_command(given: dict[str, Any]) -> None:
    """Clean, deduplicate, split and tokenize a corpus into train.bin, val.bin, tokenizer.json, meta.json.

    Streams from source to disk in bounded memory; the output directory appears only when complete.

    Sources (--dataset): 'demo' (default), built-in Spanish tales, works offline. 'wikipedia':
    Spanish Wikipedia (wikimedia/wikipedia, 20231101.es), streamed. 'oscar': OSCAR 23.01 Spanish
    (oscar-corpus/OSCAR-2301, es_meta/*.jsonl.zst), streamed; GATED: accept its conditions at
    huggingface.co/datasets/oscar-corpus/OSCAR-2301 and log in with `hf auth login` (or set
    HF_TOKEN) first. Any Hub dataset owner/name, with --subset, --split, --text-column. Or local:
    a .txt, .jsonl, .json, .csv or .parquet file (.gz/.zst too), a quoted glob, a directory
    (searched recursively), or a dataset saved with save_to_disk.

    Instruction tuning (--format instructions): .jsonl/.json files of examples, each
    {"instruction", "input", "output"} (input optional) or {"messages": [{"role": "system"|"user"|"assistant",
    "content"}, ...]}, a Hub dataset with those fields, or 'demo' (questions about the demo tales).
    Only the answers are learned; pass the model's tokenizer (--tokenizer CHECKPOINT or Hub id) to fine-tune it.
    """
    options = PrepareConfig.from_dict(given)  # bad settings first, all at once, before looking at the source
    if options.format == "instructions":
        with ProgressView() as view:
            result = prepare_instructions(options, view)
    else:
        source = open_sources(options)
        with ProgressView() as view:
            result = prepare(source, options, view)
    render_result(result)
