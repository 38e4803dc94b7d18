"""`gpt2es prepare`: any Spanish corpus to a tokenizer and memory-mapped token files."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
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
from gpt2es_cli.cli.render_data import fertility_table, hygiene_table, splits_table
from gpt2es_cli.data.prepare import (
    PrepareOptions,
    PrepareProgress,
    PrepareResult,
    prepare,
    tokenizer_label,
)
from gpt2es_cli.data.sources import resolve_source
from gpt2es_cli.errors import ConfigError

DATASET_HELP = "demo, wikipedia, oscar, a Hub dataset owner/name, or a local file, glob, directory (see above)."
PHASES = {"sample": "tokenizer sample", "train": "tokenizer training", "tokenize": "tokenizing"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?))?b?\s*$", re.IGNORECASE)


def parse_size(value: str | None, option: str) -> int | None:
    """'4MB', '1.5GB', '500k', '2GiB' or '123' -> bytes (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    if value is None:
        return None
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"{option} {value!r} is not a size: write e.g. 500MB, 2GB or 1000000")
    number, unit, binary = m.groups()
    power = " kmgt".index(unit.lower()) if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


def default_out(dataset: str) -> Path:
    """data/<a name derived from the dataset>."""
    base = re.split(r"[*?\[]", dataset)[0].rstrip("/")  # a glob: the folder it searches
    stem = Path(base).name.split(".")[0] or "dataset"
    return Path("data") / re.sub(r"[^\w-]+", "-", stem)


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
    for table in (hygiene_table(meta), fertility_table(meta)):
        if table is not None:
            console.print(table)


@command("prepare")
def prepare_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help=DATASET_HELP)] = "demo",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory. Default: data/<dataset name>.")
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="Hub dataset configuration, e.g. 20231101.es for wikipedia.")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to read from a Hub or save_to_disk dataset. Default: train.")
    ] = None,
    text_column: Annotated[
        str | None, typer.Option(help="Column/field with the text (default: 'text', else 'content').")
    ] = None,
    txt_mode: Annotated[
        str,
        typer.Option(
            help="How .txt files split into documents: 'blank' (a blank line ends a document), 'line' (one per "
            "line), 'file' (one per file; best for books, e.g. ../shared/corpus/es).",
        ),
    ] = "blank",
    max_docs: Annotated[int | None, typer.Option(help="Take at most this many documents.")] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Take at most this much text, e.g. 500MB (demo: default 4MB).")
    ] = None,
    tokenizer: Annotated[
        str,
        typer.Option(
            help="'train' a byte-level BPE on the train split, 'gpt2' (Hub cache), a tokenizer.json / a "
            "directory with tokenizer.json or vocab.json + merges.txt, or a checkpoint or dataset whose "
            "tokenizer to reuse (e.g. to fine-tune that checkpoint with --init-from).",
        ),
    ] = "train",
    vocab_size: Annotated[int, typer.Option(help="Vocabulary size of a trained tokenizer.")] = 32768,
    tokenizer_sample_bytes: Annotated[
        str, typer.Option(help="Train the tokenizer on at most this much of the train split.")
    ] = "100MB",
    gpt2_tokenizer: Annotated[
        Path | None,
        typer.Option(help="GPT-2's tokenizer (dir or tokenizer.json) to compare fertility with; default: HF cache."),
    ] = None,
    min_chars: Annotated[int, typer.Option(help="Drop documents shorter than this after cleaning.")] = 1,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Drop exact duplicate documents.")] = True,
    val_fraction: Annotated[
        float, typer.Option(help="Share of documents for validation, in (0, 1); at least one document.")
    ] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed for the train/validation split (and the demo tales).")] = 0,
    num_proc: Annotated[
        int | None, typer.Option(help="Tokenizer worker processes. Default: 1 for small inputs, else one per CPU.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dataset at --out.")] = False,
) -> None:
    """Clean, deduplicate, split and tokenize a corpus into train.bin, val.bin, tokenizer.json, meta.json.

    Streams from source to disk in bounded memory; the output directory appears only when complete.

    Sources (--dataset): 'demo' (default), built-in Spanish tales, works offline. 'wikipedia':
    Spanish Wikipedia (wikimedia/wikipedia, 20231101.es), streamed. 'oscar': OSCAR 23.01 Spanish
    (oscar-corpus/OSCAR-2301, es_meta/*.jsonl.zst), streamed; GATED: accept its conditions at
    huggingface.co/datasets/oscar-corpus/OSCAR-2301 and log in with `hf auth login` (or set
    HF_TOKEN) first. Any Hub dataset owner/name, with --config, --split, --text-column. Or local:
    a .txt, .jsonl, .json, .csv or .parquet file (.gz/.zst too), a quoted glob, a directory
    (searched recursively), or a dataset saved with save_to_disk.
    """
    cap_bytes = parse_size(max_bytes, "--max-bytes")
    options = PrepareOptions(
        out=out or default_out(dataset),
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        tokenizer_sample_bytes=parse_size(tokenizer_sample_bytes, "--tokenizer-sample-bytes") or 0,
        min_chars=min_chars,
        dedup=dedup,
        val_fraction=val_fraction,
        seed=seed,
        max_docs=max_docs,
        max_bytes=cap_bytes,
        num_proc=num_proc,
        force=force,
        gpt2_tokenizer=gpt2_tokenizer,
    )
    options.validate()  # bad settings first, all at once, before looking at the source
    source = resolve_source(
        dataset,
        config=config,
        split=split,
        text_column=text_column,
        txt_mode=txt_mode,
        seed=seed,
        max_bytes=cap_bytes,
        max_docs=max_docs,
    )
    with ProgressView() as view:
        result = prepare(source, options, view)
    render_result(result)
