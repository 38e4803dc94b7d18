"""`gpt2es inspect`: what is inside a checkpoint or a prepared dataset, how a tokenizer splits text,
what a model attends to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gpt2es_cli.artifacts import checkpoint_or_default, is_dataset, open_checkpoint, open_tokenizer
from gpt2es_cli.attention import AttentionMap, attention_map, check_image_path, plot_attention
from gpt2es_cli.cli import fmt
from gpt2es_cli.cli.app import command, console, note, warn
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.config import InferenceConfig, InspectConfig
from gpt2es_cli.data.shards import is_shard_set
from gpt2es_cli.errors import ConfigError, DataError
from gpt2es_cli.hub import is_hub_id
from gpt2es_cli.tokenizer import Tokenizer

TARGET_HELP = (
    "A gpt2es checkpoint (.pth), a run directory, a local Hugging Face GPT-2 directory, "
    "a dataset directory written by `gpt2es prepare`, or a directory of its shards (`prepare --shard`). "
    "Default: the newest run's best.pth (else last.pth) under runs/."
)
ATTENTION_IMAGE = Path("attention.png")
"""Where --attention draws unless --image says otherwise (in the working directory)."""


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(str(key), value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    return table


@command("inspect", epilog='Examples:\n\n  gpt2es inspect runs/demo\n\n  gpt2es inspect data/demo --verify\n\n  gpt2es inspect runs/demo --tokenizer --text "¿Qué tal, señor?"'
                            '\n\n  gpt2es inspect runs/demo --attention "El perro corre" --image perro.png')
@settings_options(InspectConfig)
@settings_options(InferenceConfig, into="inference", only=("revision",))
def inspect(
    given: dict[str, Any],
    inference: dict[str, Any],
    target: Annotated[Path | None, typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False)] = None,
    tokenizer: Annotated[
        bool, typer.Option("--tokenizer", metavar="", help="Show how --text splits into tokens with TARGET's tokenizer.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option("--verify", metavar="", help="For a dataset: recompute the token files' checksums (exit 1 if any differs from meta.json)."),
    ] = False,
    attention: Annotated[
        str | None,
        typer.Option("--attention", metavar="TEXT", show_default=False,
                     help="Show what every layer and head of TARGET's model attends to in TEXT: a heatmap grid "
                          "written to --image, and a table of the token each position attends to most."),
    ] = None,
    image: Annotated[
        Path,
        typer.Option("--image", metavar="PATH",
                     help="Where --attention writes its heatmap grid (a PNG, replaced whole)."),
    ] = ATTENTION_IMAGE,
    json_output: Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show what is inside a checkpoint or a prepared dataset, how a tokenizer splits text, or what a model
    attends to."""
    settings = InspectConfig.from_dict(given)
    text, seed = settings.text, settings.seed
    path, chosen = checkpoint_or_default(target, revision=InferenceConfig.from_dict(inference).revision)
    if chosen is not None:
        note(f"using {chosen}")
    if attention is not None:
        inspect_attention(path, attention, image, json_output, tokenizer=tokenizer, verify=verify)
        return
    if image != ATTENTION_IMAGE:
        raise ConfigError("--image says where --attention draws: give --attention TEXT as well")
    if tokenizer:
        view = tokenize_view(open_tokenizer(path), text)
        if json_output:
            console.print_json(json.dumps(view, ensure_ascii=False))
        else:
            render_tokens(view)
        return
    if is_dataset(path) or is_shard_set(path):
        from gpt2es_cli.cli.render_data import render_dataset_summary
        from gpt2es_cli.data.summary import describe_dataset

        summary = describe_dataset(path, seed=seed, verify=verify)
        if json_output:
            console.print_json(json.dumps(summary.to_dict(), ensure_ascii=False))
        else:
            render_dataset_summary(summary, console)
        if summary.bad_checksums:
            raise DataError(
                f"{path} is damaged: the checksums of {' and '.join(f'{s}.bin' for s in summary.bad_checksums)} "
                "differ from meta.json; prepare the dataset again"
            )
        return
    if verify:
        raise ConfigError(f"--verify checks a prepared dataset's token files, and {path} is not a dataset (no meta.json)")
    run_dir = Path(path) if Path(path).is_dir() and (Path(path) / "last.pth").is_file() else None
    if run_dir is not None:  # a run: its history is in last.pth (best.pth holds weights only)
        summary = open_checkpoint(run_dir / "last.pth").summary()
        summary["run"] = {
            "directory": str(run_dir),
            "last": str(run_dir / "last.pth"),
            "best": str(run_dir / "best.pth") if (run_dir / "best.pth").is_file() else None,
        }
    else:
        summary = open_checkpoint(path).summary()
    if json_output:
        console.print_json(json.dumps(summary, ensure_ascii=False))
        return
    render_checkpoint(summary)


def inspect_attention(path: Path, text: str, image: Path, json_output: bool, *, tokenizer: bool, verify: bool) -> None:
    """--attention: the model's weights on `text`, drawn to `image`, summed up in a table (or JSON)."""
    if tokenizer or verify:
        raise ConfigError("--attention looks inside a model: give it without --tokenizer and --verify")
    if is_dataset(path):
        raise ConfigError(f"--attention looks inside a model, and {path} is a prepared dataset: give a checkpoint")
    check_image_path(image)  # before the model is read
    # Named by its file (a run directory's best.pth), or by the Hub id it came from.
    view = attention_map(open_checkpoint(path), text, source=str(path) if is_hub_id(path) else None)
    if view.truncated:
        warn(f"the text has {view.text_tokens} tokens, more than the model's context of {view.context}: "
             f"showing the first {view.context}")
    written = plot_attention(view, image)
    if json_output:  # one line: the weights alone are n_layer x n_head x T x T numbers
        console.print_json(json.dumps(view.to_dict(written), ensure_ascii=False), indent=None)
        return
    render_attention(view, written)


def token_cell(token: str, width: int = 10) -> str:
    """A token in a table cell: spaces as ·, newlines as ⏎, at most `width` characters."""
    shown = token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥")
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def render_attention(view: AttentionMap, image: Path) -> None:
    """One table per layer: a row per position (its token), a column per head, in each cell the token
    that position attends to most and the weight. When the heads do not fit across the terminal, the
    cells show the position's number instead of its token, and past that a layer takes several tables."""
    tokens = [token_cell(t) for t in view.tokens]
    strongest = view.strongest()
    T, n_head = len(tokens), view.n_head
    number, name = len(str(T - 1)), max(len(t) for t in tokens)
    fixed = (max(number, 1) + 3) + (max(name, 5) + 3) + 1  # the # and token columns, the last border
    compact = fixed + n_head * (max(name + 5, 6) + 3) > console.width  # a cell: "token 0.50", padded, a border
    cell = max(number + 5, len(f"h{n_head - 1}")) if compact else max(name + 5, len(f"head {n_head - 1}"))
    fits = max(1, min(n_head, (console.width - fixed) // (cell + 3)))
    per_table = -(-n_head // -(-n_head // fits))  # as many heads in each of the fewest tables (8 in 7s: 4 and 4)
    console.print(f"[bold]Attention[/] of {escape(view.source)}: {view.n_layer} layers x {n_head} heads "
                  f"on {T} tokens", soft_wrap=True)
    console.print(f"[dim]each cell: the {'position (#)' if compact else 'token'} that a position attends to most, "
                  "and its weight (0..1; bold from 0.5)[/]", soft_wrap=True)
    for layer in range(view.n_layer):
        for first in range(0, n_head, per_table):
            heads = range(first, min(n_head, first + per_table))
            part = f" (heads {heads[0]}-{heads[-1]})" if len(heads) < n_head else ""
            table = Table(title=f"layer {layer}{part}", title_justify="left", padding=(0, 1))
            table.add_column("#", justify="right", style="dim", no_wrap=True)
            table.add_column("token", no_wrap=True)
            for head in heads:
                table.add_column(f"h{head}" if compact else f"head {head}", justify="right" if compact else "left",
                                 no_wrap=True, min_width=cell)  # one width for all: a grid to read across
            for position, token in enumerate(tokens):
                cells = []
                for head in heads:
                    focus = strongest[layer][head][position]
                    shown = str(focus.position) if compact else tokens[focus.position]
                    cells.append(Text(f"{shown} {focus.weight:.2f}", style="bold" if focus.weight >= 0.5 else ""))
                table.add_row(str(position), Text(token), *cells)
            console.print(table)
    console.print(f"heatmaps: {image}", soft_wrap=True, markup=False)


def tokenize_view(tok: Tokenizer, text: str) -> dict[str, Any]:
    """The tokens of `text`: ids and how each reads, plus counts."""
    ids = tok.encode(text)
    words = len(text.split())
    nbytes = len(text.encode("utf-8"))
    return {
        "text": text,
        "tokens": [{"id": i, "text": piece} for i, piece in zip(ids, tok.token_strings(ids), strict=True)],
        "count": len(ids),
        "characters": len(text),
        "bytes": nbytes,
        "tokens_per_word": round(len(ids) / words, 3) if words else None,
        "bytes_per_token": round(nbytes / len(ids), 3) if ids else None,
        "vocab_size": tok.vocab_size,
    }


TOKEN_STYLES = ("black on cyan", "black on yellow", "black on green", "black on magenta")


def render_tokens(view: dict[str, Any]) -> None:
    pieces, ids = Text(), Text()
    colour = console.is_terminal and not console.no_color
    for n, token in enumerate(view["tokens"]):
        style = TOKEN_STYLES[n % len(TOKEN_STYLES)] if colour else ""
        # Show spaces and newlines so token boundaries are visible; without colour, | between tokens.
        piece = token["text"].replace(" ", "·").replace("\n", "⏎")
        if colour:
            pieces.append(piece, style=style)
            ids.append(str(token["id"]), style=style)
            ids.append(" ")
        else:
            pieces.append(("|" if n else "") + piece)
            ids.append(f"{token['id']} ")
    if not colour:  # piped: one token per line as well, its id beside it
        console.print(pieces, soft_wrap=True)
        for token in view["tokens"]:
            console.print(f"{token['id']:>8}  {token['text'].replace(' ', '·').replace(chr(10), '⏎')}", soft_wrap=True,
                          markup=False)
    else:
        console.print(pieces)
        console.print(ids)
    per_word = view["tokens_per_word"]
    console.print(
        f"[dim]{view['count']} tokens for {view['characters']} characters ({view['bytes']} bytes): "
        f"{view['bytes_per_token']} bytes/token"
        + (f", {per_word} tokens/word" if per_word is not None else "")
        + f"; vocabulary {view['vocab_size']:,}[/]"
    )


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line chart of values, averaged into at most `width` buckets."""
    if not values:
        return ""
    buckets = min(width, len(values))
    means = []
    for b in range(buckets):
        chunk = values[b * len(values) // buckets : (b + 1) * len(values) // buckets]
        means.append(sum(chunk) / len(chunk))
    lo, hi = min(means), max(means)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in means)


def render_training(t: dict[str, Any]) -> None:
    rows: dict[str, Any] = {}
    if "step" in t:
        total = t.get("total_steps")
        rows["step"] = f"{t['step']:,}" + (f" / {total:,}" if total else "")
    if "tokens_seen" in t:
        rows["tokens seen"] = f"{t['tokens_seen']:,} ({fmt.count(t['tokens_seen'])})"
    if t.get("elapsed") is not None:
        rows["time trained"] = fmt.duration(t["elapsed"])
    if t.get("best_val"):
        best = t["best_val"]
        rows["best val loss"] = f"{best['val_loss']:.4f} at step {best['step']:,}"
    elif t.get("best_val_loss") is not None:
        rows["best val loss"] = f"{t['best_val_loss']:.4f}"
    if t.get("dataset"):
        rows["trained on"] = t["dataset"]
    recipe = t.get("recipe") or {}
    if recipe.get("schedule"):
        warmup = recipe.get("warmup_steps")
        total = t.get("total_steps")
        rows["schedule"] = recipe["schedule"] + (
            f", warmup {warmup:,}" + (f" of {total:,} steps" if total else " steps") if warmup is not None else ""
        ) + (f", to min-lr {recipe['min_lr']:g}" if recipe.get("min_lr") is not None else "")
    if recipe.get("optimizer"):
        lr = recipe.get("lr")
        rows["optimizer"] = recipe["optimizer"] + (f", lr {lr:g}" if lr is not None else "") + (
            f", muon-lr {recipe['muon_lr']:g}" if recipe["optimizer"] == "muon" and recipe.get("muon_lr") else "")
    if recipe.get("grad_clip") is not None:
        clip = recipe["grad_clip"]
        rows["gradient clip"] = "auto (twice the moving average of the norms)" if clip == "auto" else (
            "off" if clip == 0 else f"{clip:g}")
    if t.get("recoveries"):
        rows["NaN recoveries"] = str(t["recoveries"])
    console.print(key_value_table("Training", rows))
    losses = [r["loss"] for r in t.get("train_loss", [])]
    if losses:
        console.print(
            f"  train loss  {losses[0]:.3f} [cyan]{sparkline(losses)}[/] {losses[-1]:.3f}"
            f"  [dim]({len(losses)} logged steps)[/]"
        )
    if t.get("evals"):
        table = Table(title="Validation history", title_justify="left")
        for col in ("step", "tokens", "val loss", "perplexity"):
            table.add_column(col, justify="right")
        best_step = t.get("best_val", {}).get("step")
        for r in t["evals"]:
            ppl = r.get("val_perplexity")
            table.add_row(
                f"{r['step']:,}",
                fmt.count(r["tokens"]) if r.get("tokens") is not None else "-",
                f"{r['val_loss']:.4f}",
                f"{ppl:,.2f}" if ppl is not None else "-",
                style="bold green" if r["step"] == best_step else None,
            )
        console.print(table)


def adapter_table(a: dict[str, Any], total: int) -> Table:
    """A LoRA run's adapter: its shape, what trains, and the base it was merged onto."""
    base = a["base"]
    trainable = a["trainable_parameters"]
    return key_value_table("Adapter", {
        "type": f"{'LoRA' if a['type'] == 'lora' else a['type']} (merged onto its base when loaded)",
        "rank": str(a["rank"]),
        "alpha": f"{a['alpha']:g} (scale alpha / rank = {a['scaling']:g})",
        "dropout": f"{a['dropout']:g}",
        "targets": f"{', '.join(a['targets'])} ({a['layers']} layers)",
        "trainable parameters": f"{trainable:,} ({fmt.count(trainable)}, {trainable / total:.2%} of the model)"
        if total else f"{trainable:,}",
        "base": base["source"] + (f" at revision {base['revision']}" if base.get("revision") else ""),
        "base sha256": base["sha256"],
    })


def render_checkpoint(s: dict[str, Any]) -> None:
    run = s.get("run")
    if run is not None:
        best = (s.get("training") or {}).get("best_val")
        where = f" (val loss {best['val_loss']:.4f} at step {best['step']})" if best and run["best"] else ""
        console.print(key_value_table("Run", {
            "directory": run["directory"],
            "last.pth": f"{run['last']} (weights, training state and history, shown below)",
            "best.pth": f"{run['best']}{where}" if run["best"] else "none yet",
        }))
        console.print()
    console.print(
        key_value_table(
            "Checkpoint",
            {
                "path": s["path"],
                "source": s["source"],
                "file size": fmt.size(s["file_bytes"]),
                **({"sharded": f"{s['sharded']['directory']} (by {s['sharded']['world_size']} processes)"}
                   if s.get("sharded") else {}),
                "format version": str(s["format_version"]),
                "written by": f"gpt2es {s['gpt2es_version']}" if s["source"] == "gpt2es" else s["source"],
                "weights dtype": s["dtype"],
            },
        )
    )
    console.print()
    if s.get("adapter"):
        console.print(adapter_table(s["adapter"], s["parameters"]["total"]))
        console.print()
    model = dict(s["model_config"])
    model["output head"] = "tied to the token embedding" if model.get("tie_word_embeddings", True) else "untied (its own matrix)"
    model["positions"] = {"learned": "learned (GPT-2's table)", "sinusoidal": "sinusoidal (fixed, not trained)",
                          "rope": f"rope (rotary, theta {model.get('rope_theta', 10000):g})"}.get(
        model.get("position", "learned"), model.get("position"))
    console.print(key_value_table("Model config", model))
    console.print()
    params = s["parameters"]
    table = Table(title="Parameters", title_justify="left")
    table.add_column("component")
    table.add_column("parameters", justify="right")
    table.add_column("share", justify="right")
    for name in ("embeddings", "attention", "feed_forward", "norms", "head"):
        if name not in params:
            continue
        share = params[name] / params["total"] if params["total"] else 0.0
        table.add_row(name.replace("_", "-"), f"{params[name]:,}", f"{share:.1%}")
    table.add_row("[bold]total[/]", f"[bold]{params['total']:,}[/] ({fmt.count(params['total'])})", "100.0%")
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
                    "chat template": {"none": "none (a base model: sample continues text)",
                                      "chatml": "ChatML (sample --chat)", "text-markers": "text markers (sample --chat)",
                                      }.get(tok.get("chat_template", "none"), "custom (sample --chat)"),
                },
            )
        )
    if s["training"]:
        console.print()
        render_training(s["training"])
    if s["extra"]:
        console.print()
        console.print(key_value_table("Extra", s["extra"]))
