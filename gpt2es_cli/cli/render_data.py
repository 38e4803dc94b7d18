"""Rich rendering of prepared datasets: the tables `prepare` ends with and `inspect DATA_DIR` shows.

Everything here takes data the library computed (meta.json, `DatasetSummary`) and only prints.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gpt2es_cli.cli import fmt
from gpt2es_cli.data.dataset_tokenizer import tokenizer_label
from gpt2es_cli.data.summary import DatasetSummary
from gpt2es_cli.tokenizer import EOS_TOKEN

HYGIENE_LABELS = {
    "documents_read": "documents read",
    "documents_kept": "documents kept",
    "empty": "empty after cleaning",
    "too_short": "shorter than --min-chars",
    "duplicates": "exact duplicates dropped",
    "undecodable_bytes": "undecodable bytes replaced",
    "control_chars_removed": "control characters removed",
    "skipped_records": "records without text skipped",
    "long_documents_split": "over-long documents cut",
}


INSTRUCTION_LABELS = {
    "read": "records read",
    "alpaca": "  instruction / input / output",
    "messages": "  messages",
    "not_an_object": "not a JSON object (skipped)",
    "missing_field": "missing or non-text field (skipped)",
    "bad_messages": "malformed messages (skipped)",
    "empty_answer": "empty answer (skipped)",
    "too_long": "longer than --context (skipped)",
    "duplicates": "exact duplicates dropped",
    "kept": "examples kept",
}
TEMPLATE_LABELS = {
    "chatml": "ChatML, <|im_end|> ends answers",
    "text-markers": "### Usuario: / ### Asistente:, <|endoftext|> ends answers",
}


def splits_table(meta: dict[str, Any]) -> Table:
    """Documents, bytes and tokens per split."""
    table = Table(title="Splits", title_justify="left")
    for name in ("split", "documents", "MB", "tokens", "tokens/doc"):
        table.add_column(name, justify="left" if name == "split" else "right")
    total = {"documents": 0, "bytes": 0, "tokens": 0}
    for split, s in meta["splits"].items():
        per_doc = f"{s['tokens'] / s['documents']:,.1f}" if s["documents"] else "-"
        table.add_row(split, f"{s['documents']:,}", fmt.megabytes(s["bytes"]), f"{s['tokens']:,}", per_doc)
        for k in total:
            total[k] += s[k]
    table.add_section()
    per_doc = f"{total['tokens'] / total['documents']:,.1f}" if total["documents"] else "-"
    table.add_row("total", f"{total['documents']:,}", fmt.megabytes(total["bytes"]), f"{total['tokens']:,}", per_doc)
    return table


def shards_table(shards: list[dict[str, Any]] | None) -> Table | None:
    """Per shard of a corpus prepared in shards: documents and tokens of each split, and MB of both."""
    if not shards:
        return None
    table = Table(title="Shards (read one after another)", title_justify="left",
                  caption=f"directories {escape(str(shards[0]['name']))} ... {escape(str(shards[-1]['name']))}",
                  caption_justify="left")
    for name in ("shard", "train docs", "train tokens", "val docs", "val tokens", "MB"):
        table.add_column(name, justify="right", no_wrap=True)
    for i, shard in enumerate(shards):
        train, val = shard["splits"]["train"], shard["splits"]["val"]
        table.add_row(str(i), f"{train['documents']:,}", f"{train['tokens']:,}", f"{val['documents']:,}",
                      f"{val['tokens']:,}", fmt.megabytes(train["bytes"] + val["bytes"]))
    return table


def hygiene_table(meta: dict[str, Any]) -> Table | None:
    """What text hygiene did (prepare's counts)."""
    hygiene = meta.get("hygiene")
    if not hygiene:
        return None
    table = Table(title="Text hygiene", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in hygiene.items():
        table.add_row(HYGIENE_LABELS.get(key, key), f"{value:,}")
    return table


def instructions_table(meta: dict[str, Any]) -> Table | None:
    """What `prepare --format instructions` read, kept and skipped, by kind, and the chat template."""
    info = meta.get("instructions")
    if not info:
        return None
    table = Table(title="Instruction examples", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in (info.get("examples") or {}).items():
        if value or key in ("read", "kept"):
            table.add_row(escape(INSTRUCTION_LABELS.get(key, key)), f"{value:,}")
    table.add_section()
    table.add_row("answers (the scored tokens)", f"{info.get('scored_fraction', 0):.1%}")
    table.add_row("chat template", escape(TEMPLATE_LABELS.get(info.get("template"), str(info.get("template")))))
    return table


def mixture_table(meta: dict[str, Any]) -> Table | None:
    """Per source of a mixture: its weight, what was read and written (both splits), whether it ran out."""
    source = meta.get("source") or {}
    if source.get("kind") != "mixture":
        return None
    table = Table(title="Sources (mixed by bytes)", title_justify="left")
    for name, justify in (("source", "left"), ("weight", "right"), ("documents", "right"), ("MB", "right"),
                          ("share", "right"), ("tokens", "right"), ("ran out", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    parts = source.get("parts", [])
    written = [{k: sum(p.get("written", {}).get(s, {}).get(k, 0) for s in ("train", "val"))
                for k in ("documents", "bytes", "tokens")} for p in parts]
    total = sum(w["bytes"] for w in written) or 1
    for part, w in zip(parts, written, strict=True):
        after = part.get("ran_out_after_bytes")
        ran_out = f"yes, after {after / 1e6:,.1f} MB in all" if part.get("ran_out") and after is not None else "no"
        table.add_row(str(part.get("source", {}).get("name")), f"{part.get('weight', 0):.2f}", f"{w['documents']:,}",
                      f"{w['bytes'] / 1e6:,.2f}", f"{w['bytes'] / total:.1%}", f"{w['tokens']:,}", ran_out)
    return table


def fertility_table(meta: dict[str, Any]) -> Table | None:
    """Tokens per word and bytes per token on the validation sample, per tokenizer."""
    fertility = meta.get("fertility")
    if not fertility or not fertility.get("tokenizers"):
        return None
    sample = fertility["sample"]
    table = Table(
        title="Tokenizer fertility",
        caption=f"on {sample['documents']:,} validation documents: {sample['words']:,} words, "
        f"{fmt.megabytes(sample['bytes'])} MB",
        title_justify="left",
        caption_justify="left",
    )
    for name in ("tokenizer", "tokens", "tokens/word", "bytes/token"):
        table.add_column(name, justify="left" if name == "tokenizer" else "right")
    for row in fertility["tokenizers"]:
        table.add_row(
            escape(row["name"]),
            f"{row['tokens']:,}",
            "-" if row["tokens_per_word"] is None else f"{row['tokens_per_word']:.3f}",
            "-" if row["bytes_per_token"] is None else f"{row['bytes_per_token']:.3f}",
        )
    return table


def _pairs(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in items.items():
        if isinstance(value, list):
            value = "\n".join(map(str, value))
        table.add_row(escape(str(key)), escape("-" if value is None else str(value)))
    return table


def dataset_table(summary: DatasetSummary) -> Table:
    meta = summary.meta
    tok = meta.get("tokenizer") or {}
    items = {
        "path": str(summary.path),
        "format": f"{meta.get('format')} v{meta.get('format_version')} (gpt2es {meta.get('gpt2es_version')})",
        "created": meta.get("created"),
        "dtype": meta.get("dtype"),
        "vocab size": meta.get("vocab_size"),
        "eos id": meta.get("eos_id"),
        "tokenizer": tokenizer_label(tok) if tok else "-",
        "seed": meta.get("seed"),
        "val fraction": meta.get("val_fraction"),
    }
    if tok.get("origin") == "trained":
        items["tokenizer trained on"] = f"{tok['trained_on_documents']:,} documents, {fmt.megabytes(tok['trained_on_bytes'])} MB"
    if meta.get("shards"):
        items["shards"] = f"{meta['shards']['count']}, trained on as one dataset (gpt2es train -d {summary.path})"
    elif meta.get("shard"):
        items["shard"] = f"{meta['shard']['index']} of {meta['shard']['count']} (counted from 0)"
    if meta.get("loss_mask"):
        scored = sum(s.get("scored_tokens", 0) for s in meta["splits"].values())
        total = sum(s["tokens"] for s in meta["splits"].values()) or 1
        items["loss mask"] = f"answers only: {scored:,} of {total:,} tokens scored ({scored / total:.1%})"
    if summary.bad_checksums is not None:
        items["checksums"] = "ok" if not summary.bad_checksums else "MISMATCH: " + ", ".join(summary.bad_checksums)
    return _pairs("Dataset", items)


def lengths_table(summary: DatasetSummary) -> Table:
    table = Table(title="Document length (tokens)", title_justify="left")
    for name in ("split", "documents", "mean", "min", "p10", "median", "p90", "max"):
        table.add_column(name, justify="left" if name == "split" else "right")
    for split, s in summary.lengths.items():
        if s is None:
            table.add_row(split, "0", *["-"] * 6)
            continue
        docs = f"{s.documents:,}" + (" (sampled)" if s.sampled else "")
        table.add_row(
            split,
            docs,
            f"{s.mean:,.1f}",
            f"{s.minimum:,}",
            f"{s.p10:,.0f}",
            f"{s.median:,.0f}",
            f"{s.p90:,.0f}",
            f"{s.maximum:,}",
        )
    return table


def window_panel(summary: DatasetSummary) -> Panel | None:
    """The decoded window, with each <|endoftext|> shown dimmed on its own line."""
    w = summary.window
    if w is None:
        return None
    text = Text()
    for i, part in enumerate(w.text.split(EOS_TOKEN)):
        if i:
            text.append(f"\n{EOS_TOKEN}\n", style="dim")
        text.append(part)
    title = f"{w.tokens} tokens of {w.split} from position {w.start:,}"
    return Panel(text, title=title, title_align="left")


def render_dataset_summary(summary: DatasetSummary, console: Console) -> None:
    """Print everything `gpt2es inspect DATA_DIR` shows."""
    meta = summary.meta
    parts: list[Any] = [dataset_table(summary), splits_table(meta), lengths_table(summary)]
    parts += [t for t in (shards_table(summary.shards),) if t is not None]
    parts += [t for t in (mixture_table(meta), instructions_table(meta), fertility_table(meta), hygiene_table(meta))
              if t is not None]
    if meta.get("source"):
        parts.append(_pairs("Source", meta["source"]))
    if meta.get("arguments"):
        parts.append(_pairs("Arguments", meta["arguments"]))
    panel = window_panel(summary)
    if panel is not None:
        parts.append(panel)
    for part in parts:
        console.print(part)
        console.print()
