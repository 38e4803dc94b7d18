"""`gpt2es eval`: loss, perplexity and bits per byte of one or more checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gpt2es_cli.artifacts import recorded_dataset
from gpt2es_cli.cli.app import CHECKPOINT_HELP, command, console, err_console, note
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.config import EvalConfig, InferenceConfig
from gpt2es_cli.evaluate import EvalResult, EvalText, evaluate_ids
from gpt2es_cli.inference import Purpose, load_model, resolve_dtype


@command("eval", epilog='Examples:\n\n  gpt2es eval\n\n  gpt2es eval runs/demo runs/books --data data/books\n\n  gpt2es eval runs/rope/best.pth --text libro.txt --context 512')
@settings_options(EvalConfig)
@settings_options(InferenceConfig, into="inference", only=("device", "dtype", "quantize", "revision"))
def evaluate(
    given: dict[str, Any],
    inference: dict[str, Any],
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="CHECKPOINT",
            help="Checkpoints to compare (default: the newest run under runs/). Each: " + CHECKPOINT_HELP,
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="A dataset directory written by `gpt2es prepare` "
            "(default: the one the first checkpoint was trained on)."
        ),
    ] = None,
    text: Annotated[Path | None, typer.Option(help="A UTF-8 text file, or a directory of .txt files.")] = None,
    json_output: Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON.")] = False,
) -> None:
    """Validation loss, perplexity and bits per byte; several checkpoints give one table.

    With neither --data nor --text, scores the validation split (--split) of the dataset the first checkpoint was trained on.
    """
    settings = EvalConfig.from_dict(given)
    loading = InferenceConfig.from_dict(inference)
    resolve_dtype(loading, Purpose.SCORE, settings.amp)  # --amp with another --dtype: said before any file is read
    source = EvalText.open(data, text, settings.split, settings.max_tokens) if data is not None or text is not None else None
    results: list[EvalResult] = []
    precision = ""
    with _progress(disable=json_output or not err_console.is_terminal) as progress:
        for path in checkpoints or [None]:
            ready = load_model(path, loading, purpose=Purpose.SCORE, amp=settings.amp)
            if ready.default is not None:
                note(f"using {ready.default}")
            name = path if path is not None else ready.checkpoint.path
            if source is None:
                dataset = recorded_dataset(ready.checkpoint)
                source = EvalText.from_dataset(dataset.path, settings.split, settings.max_tokens)
                note(f"evaluating on {source.label}, {dataset.reason}")
            ids = source.ids_for(ready.tokenizer)
            precision = ready.precision
            task = progress.add_task(f"scoring {name.name}", total=max(len(ids) - 1, 1))
            results.append(evaluate_ids(
                ready.model, ids, ready.tokenizer, name=str(name), stride=settings.stride,
                batch_size=settings.batch_size, context=settings.context, mask=source.mask_for(ready.tokenizer),
                progress=lambda done, total, t=task: progress.update(t, completed=done),
            ))
            del ready
    results.sort(key=lambda r: (math.isnan(r.bits_per_byte), r.bits_per_byte))
    if json_output:
        console.print_json(
            json.dumps({"text": source.label, "precision": precision, "results": [r.to_dict() for r in results]})
        )
    else:
        render(results, source.label, precision)


def _progress(disable: bool) -> Progress:
    """A progress bar per checkpoint on stderr, gone when it is done."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
        TimeRemainingColumn(), console=err_console, transient=True, disable=disable,
    )


def render(results: list[EvalResult], label: str, precision: str) -> None:
    """The results as one table, best first, and how they were scored (each row's context and
    stride when they differ between checkpoints)."""
    windows = {(r.context, r.stride) for r in results}
    table = Table(title=f"Evaluation on {label}", title_justify="left")
    columns = ["checkpoint", "bits/byte", "loss", "perplexity", "tokens", "bytes", "tokens/s"]
    if len(windows) > 1:
        columns += ["context", "stride"]
    for col in columns:
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    for i, r in enumerate(results):
        cells = [r.name, f"{r.bits_per_byte:.4f}", f"{r.loss:.4f}", f"{r.perplexity:,.2f}", f"{r.tokens:,}",
                 f"{r.bytes:,}", f"{r.tokens_per_second:,.0f}"]
        if len(windows) > 1:
            cells += [f"{r.context:,}", f"{r.stride:,}"]
        table.add_row(*cells, style="bold green" if i == 0 and len(results) > 1 else None)
    console.print(table)
    how = f"context {results[0].context}, stride {results[0].stride}, " if len(windows) == 1 else ""
    console.print(
        f"[dim]{how}{precision}; every token scored once; bits/byte compares models with different tokenizers.[/]"
    )
