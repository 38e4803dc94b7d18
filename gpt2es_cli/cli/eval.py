"""`gpt2es eval`: loss, perplexity and bits per byte of one or more checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gpt2es_cli.checkpoint import load_checkpoint
from gpt2es_cli.cli.app import command, console, err_console
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.device import select_precision
from gpt2es_cli.errors import DataError
from gpt2es_cli.evaluate import (
    EvalResult,
    encode_documents,
    evaluate_ids,
    read_texts,
    split_documents,
)
from gpt2es_cli.tokenizer import Tokenizer


class _Source:
    """The text to score, as ids in the tokenizer it came with (a dataset) or as raw documents."""

    def __init__(self, data: Path | None, text: Path | None, split: str, max_tokens: int | None):
        if (data is None) == (text is None):
            raise DataError("give exactly one of --data DATA_DIR (a prepared dataset) or --text FILE_OR_DIR")
        self.max_tokens = max_tokens
        self.texts: list[str] | None = None
        self.ids: np.ndarray | None = None
        self.tokenizer: Tokenizer | None = None
        if data is not None:
            ds = PreparedDataset.open(data)
            if split not in ("train", "val"):
                raise DataError(f"--split must be train or val (got {split!r})")
            ids = ds.tokens(split)
            self.ids = np.asarray(ids[:max_tokens] if max_tokens else ids)
            self.tokenizer = ds.tokenizer()
            self.label = f"{data} ({split})"
        else:
            self.texts = read_texts(text)
            self.label = str(text)

    def ids_for(self, tokenizer: Tokenizer) -> np.ndarray:
        """The text in `tokenizer`'s ids (re-tokenized when it is not the dataset's tokenizer)."""
        if self.ids is not None and self.tokenizer.to_json() == tokenizer.to_json():
            return self.ids
        if self.texts is None:
            self.texts = split_documents(self.tokenizer, self.ids)
        return encode_documents(tokenizer, self.texts, self.max_tokens)


@command("eval")
def evaluate(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="Checkpoints to compare: gpt2es .pth files, run directories or local Hugging Face GPT-2 directories.",
            show_default=False,
        ),
    ],
    data: Annotated[Path | None, typer.Option(help="A dataset directory written by `gpt2es prepare`.")] = None,
    text: Annotated[Path | None, typer.Option(help="A UTF-8 text file, or a directory of .txt files.")] = None,
    split: Annotated[str, typer.Option(help="Which split of --data: val or train.")] = "val",
    stride: Annotated[
        int | None, typer.Option(help="Sliding-window step in tokens (default: half the context).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 8,
    max_tokens: Annotated[int | None, typer.Option(help="Score at most this many tokens.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    amp: Annotated[bool, typer.Option(help="bf16/fp16 autocast where supported.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Validation loss, perplexity and bits per byte; several checkpoints give one table."""
    if max_tokens is not None and max_tokens < 2:
        raise DataError(f"--max-tokens must be at least 2 (got {max_tokens})")
    source = _Source(data, text, split, max_tokens)
    precision = select_precision(device, amp=amp)
    results: list[EvalResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=json_output,
    ) as progress:
        for path in checkpoints:
            ckpt = load_checkpoint(path)
            tokenizer = ckpt.tokenizer()
            ids = source.ids_for(tokenizer)
            model = ckpt.build_model(precision.device)
            task = progress.add_task(f"scoring {path.name}", total=max(len(ids) - 1, 1))
            results.append(
                evaluate_ids(
                    model,
                    ids,
                    tokenizer,
                    name=str(path),
                    stride=stride,
                    batch_size=batch_size,
                    autocast=precision.autocast,
                    progress=lambda done, total, t=task: progress.update(t, completed=done),
                )
            )
            del model
    results.sort(key=lambda r: (math.isnan(r.bits_per_byte), r.bits_per_byte))
    if json_output:
        console.print_json(json.dumps({"text": source.label, "results": [r.to_dict() for r in results]}))
        return
    table = Table(title=f"Evaluation on {source.label}", title_justify="left")
    for col, justify in (
        ("checkpoint", "left"),
        ("bits/byte", "right"),
        ("loss", "right"),
        ("perplexity", "right"),
        ("tokens", "right"),
        ("bytes", "right"),
        ("tokens/s", "right"),
    ):
        table.add_column(col, justify=justify)
    for i, r in enumerate(results):
        style = "bold green" if i == 0 and len(results) > 1 else None
        table.add_row(
            r.name,
            f"{r.bits_per_byte:.4f}",
            f"{r.loss:.4f}",
            f"{r.perplexity:,.2f}",
            f"{r.tokens:,}",
            f"{r.bytes:,}",
            f"{r.tokens_per_second:,.0f}",
            style=style,
        )
    console.print(table)
    r = results[0]
    console.print(
        f"[dim]context {r.context}, stride {r.stride}; every token scored once; "
        "bits/byte compares models with different tokenizers.[/]"
    )
