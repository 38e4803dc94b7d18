"""`gpt2es export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from gpt2es_cli.cli.app import command, console, warn
from gpt2es_cli.config import ModelConfig


@command("export")
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="A gpt2es .pth, a run directory, or a Hugging Face GPT-2 directory.")
    ],
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the Hugging Face model into.")],
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT_DIR if it holds a previous export.")
    ] = False,
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight dtype to write: float32, bfloat16 or float16.")
    ] = "float32",
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            help="Tokenizer to export instead of the checkpoint's (tokenizer.json, or a directory "
            "with it or vocab.json + merges.txt).",
        ),
    ] = None,
) -> None:
    """Export a checkpoint as a Hugging Face GPT-2 (transformers' AutoModelForCausalLM)."""
    from gpt2es_cli.checkpoint import load_checkpoint
    from gpt2es_cli.export import export_hf
    from gpt2es_cli.tokenizer import Tokenizer

    ckpt = load_checkpoint(checkpoint)
    tok = Tokenizer.from_path(tokenizer) if tokenizer is not None else None
    written = export_hf(ckpt, out_dir, force=force, dtype=dtype, tokenizer=tok)
    render(written, dtype, ckpt.model_config)
    if not (written / "tokenizer.json").is_file():
        warn(f"{checkpoint} carries no tokenizer, so none was exported: pass --tokenizer to add one")


def render(out_dir: Path, dtype: str, config: ModelConfig) -> None:
    """The files written, their sizes, and how to load the export."""
    table = Table(title=f"Exported to {escape(str(out_dir))} ({dtype})", title_justify="left")
    table.add_column("file")
    table.add_column("size", justify="right")
    total = 0
    for file in sorted(out_dir.iterdir()):
        size = file.stat().st_size
        total += size
        table.add_row(escape(file.name), _human(size))
    table.add_row("[bold]total[/]", f"[bold]{_human(total)}[/]")
    console.print(table)
    console.print(
        f"GPT2LMHeadModel: {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads, "
        f"context {config.n_positions}, vocabulary {config.vocab_size}, {config.activation}"
    )
    where = repr(str(out_dir))
    console.print("Load it with transformers:")
    console.print(
        escape(
            "    from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"    model = AutoModelForCausalLM.from_pretrained({where})\n"
            f"    tokenizer = AutoTokenizer.from_pretrained({where})"
        ),
        soft_wrap=True,
    )


def _human(size: int) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    value, i = float(size), 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{size} B" if i == 0 else f"{value:.1f} {units[i]}"
