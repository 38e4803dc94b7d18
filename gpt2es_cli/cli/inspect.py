"""`gpt2es inspect`: what is inside a checkpoint or a prepared dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gpt2es_cli.checkpoint import load_checkpoint
from gpt2es_cli.cli.app import command, console

TARGET_HELP = (
    "A gpt2es checkpoint (.pth), a run directory, a local Hugging Face GPT-2 directory, "
    "or a dataset directory written by `gpt2es prepare`."
)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(str(key), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return table


@command("inspect")
def inspect(
    target: Annotated[Path, typer.Argument(help=TARGET_HELP, show_default=False)],
    json_output: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show what is inside a checkpoint or a prepared dataset."""
    summary = load_checkpoint(target).summary()
    if json_output:
        console.print_json(json.dumps(summary, ensure_ascii=False))
        return
    render_checkpoint(summary)


def render_checkpoint(s: dict[str, Any]) -> None:
    console.print(
        key_value_table(
            "Checkpoint",
            {
                "path": s["path"],
                "source": s["source"],
                "file size": human_bytes(s["file_bytes"]),
                "format version": str(s["format_version"]),
                "written by": f"gpt2es {s['gpt2es_version']}" if s["source"] == "gpt2es" else s["source"],
                "weights dtype": s["dtype"],
            },
        )
    )
    console.print()
    console.print(key_value_table("Model config", s["model_config"]))
    console.print()
    params = s["parameters"]
    table = Table(title="Parameters", title_justify="left")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for name in ("embeddings", "attention", "feed_forward", "norms"):
        share = params[name] / params["total"] if params["total"] else 0.0
        table.add_row(name.replace("_", "-"), f"{params[name]:,}", f"{share:.1%}")
    table.add_row("[bold]total[/]", f"[bold]{params['total']:,}[/] ({human_count(params['total'])})", "100.0%")
    console.print(table)
    console.print()
    tok = s["tokenizer"]
    if tok is None:
        console.print("[yellow]Tokenizer:[/] none saved with this checkpoint")
    else:
        console.print(
            key_value_table(
                "Tokenizer",
                {
                    "type": tok["type"],
                    "vocab size": f"{tok['vocab_size']:,}",
                    "special tokens": ", ".join(tok["special_tokens"]),
                    "end of text id": str(tok["eos_id"]),
                },
            )
        )
    if s["training"]:
        console.print()
        console.print(key_value_table("Training state", s["training"]))
    if s["extra"]:
        console.print()
        console.print(key_value_table("Extra", s["extra"]))
