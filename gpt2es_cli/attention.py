"""What each attention head looks at: the weights of every layer and head on one text, and a
heatmap grid of them (`gpt2es inspect CHECKPOINT --attention TEXT`).

The weights come from the model itself: `GPT2.attention_weights` runs the model's own blocks and
asks each attention layer for softmax(q k^T / sqrt(hs)) under the causal mask, from the same
queries and keys its forward pass uses (rotary angles included, softmax in float32). Training and
sampling never build these (T x T) matrices: their attention goes through
scaled_dot_product_attention, and nothing here changes that path.

Reading a map: weights[layer, head, i, j] is how much position i (the query, the token whose next
token is being predicted) takes from position j (the key); each row sums to 1 and j > i is 0,
because a GPT never sees the future.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.errors import CheckpointError, ConfigError, first_line
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.tokenizer import Tokenizer


class Focus(NamedTuple):
    """The position a query attends to most, and with what weight."""

    position: int
    weight: float


@dataclass(frozen=True)
class AttentionMap:
    """The attention weights of one model on one text."""

    source: str
    """The checkpoint: its file or directory, or the Hub model id it came from."""
    text: str
    token_ids: list[int]
    tokens: list[str]
    """How each token reads on its own (Tokenizer.token_strings)."""
    weights: torch.Tensor
    """(n_layer, n_head, T, T) float32: [layer, head, query position, key position]."""
    text_tokens: int
    """How many tokens the whole text has: more than T when it was cut to the context."""
    context: int
    """The model's context (n_positions)."""

    @property
    def truncated(self) -> bool:
        return self.text_tokens > len(self.tokens)

    @property
    def n_layer(self) -> int:
        return self.weights.size(0)

    @property
    def n_head(self) -> int:
        return self.weights.size(1)

    def strongest(self) -> list[list[list[Focus]]]:
        """For each layer, head and query position, the key position with the largest weight
        (the earliest one on a tie)."""
        values, positions = self.weights.max(dim=-1)  # (n_layer, n_head, T)
        return [
            [[Focus(int(p), float(v)) for p, v in zip(pos_h, val_h, strict=True)]
             for pos_h, val_h in zip(pos_l.tolist(), val_l.tolist(), strict=True)]
            for pos_l, val_l in zip(positions, values, strict=True)
        ]

    def to_dict(self, image: Path | None = None) -> dict[str, Any]:
        """Plain data (JSON): the tokens, the weights as nested lists [layer][head][query][key]
        rounded to 6 decimals, the strongest key of every query, and where the image is."""
        return {
            "checkpoint": self.source,
            "text": self.text,
            "tokens": [{"position": n, "id": i, "text": t}
                       for n, (i, t) in enumerate(zip(self.token_ids, self.tokens, strict=True))],
            "text_tokens": self.text_tokens,
            "truncated": self.truncated,
            "context": self.context,
            "layers": self.n_layer,
            "heads": self.n_head,
            "weights": [[[[round(w, 6) for w in row] for row in head] for head in layer]
                        for layer in self.weights.tolist()],
            "strongest": [[[{"position": f.position, "weight": round(f.weight, 6)} for f in head] for head in layer]
                          for layer in self.strongest()],
            "image": str(image) if image is not None else None,
        }


def attention_map(checkpoint: Checkpoint, text: str, source: str | None = None) -> AttentionMap:
    """The attention weights of `checkpoint`'s model on `text`, split by the checkpoint's own
    tokenizer; a text longer than the context is cut to its first n_positions tokens
    (`truncated` says so). Runs on the CPU in float32."""
    name = source or str(checkpoint.path)
    if not text:
        raise ConfigError("the text to look at is empty: give a few words, e.g. --attention \"El perro corre\"")
    if checkpoint.tokenizer_json is None:
        raise CheckpointError(
            f"{name} carries no tokenizer, so the text cannot be split into its tokens: "
            "use a checkpoint saved with one (gpt2es train and gpt2es export save it)"
        )
    tokenizer = Tokenizer.from_json(checkpoint.tokenizer_json)
    ids = tokenizer.encode(text)
    if not ids:
        raise ConfigError(f"{text!r} has no tokens: give a few words, e.g. --attention \"El perro corre\"")
    context = checkpoint.model_config.n_positions
    kept = ids[:context]
    model = checkpoint.build_model("cpu").float()  # eval mode: no dropout
    idx = torch.tensor([kept], dtype=torch.long)  # (1, T)
    weights = torch.stack([w[0] for w in model.attention_weights(idx)])  # (n_layer, n_head, T, T)
    return AttentionMap(name, text, kept, tokenizer.token_strings(kept), weights, len(ids), context)


LABEL_CHARS = 14
"""The longest token label; longer tokens are cut, ending in …."""


def token_label(token: str) -> str:
    """A token as an axis label: spaces as ·, newlines as ⏎, tabs as ⇥ (so boundaries show), at most
    LABEL_CHARS characters, and $ escaped (matplotlib would read a pair of them as a formula)."""
    shown = token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥")
    if len(shown) > LABEL_CHARS:
        shown = shown[: LABEL_CHARS - 1] + "…"
    return shown.replace("$", r"\$")


@dataclass(frozen=True)
class Layout:
    """The heatmap grid's geometry, in inches: one square cell of side `cell` per layer and head,
    with room around each for its token labels and its title, and a header above the grid."""

    n_layer: int
    n_head: int
    cell: float
    label: float
    """Room for the token labels left of and below each cell."""
    font: float
    """Font size of the token labels, in points."""
    dpi: int
    title: list[str]
    """The header's lines: the checkpoint and the text (12 points)."""
    note: list[str]
    """How to read the grid (8 points)."""

    GAP = 0.25  # between a cell and the next one's labels
    CELL_TITLE = 0.3  # above each cell: "layer 0 · head 0"
    COLORBAR = 1.0  # right of the grid

    @property
    def pitch(self) -> tuple[float, float]:
        """Width and height of one cell with its labels."""
        return self.label + self.cell + self.GAP, self.CELL_TITLE + self.cell + self.label + self.GAP

    @property
    def header(self) -> float:
        return 0.25 + len(self.title) * 12 * 1.3 / 72 + len(self.note) * 8 * 1.3 / 72

    @property
    def inches(self) -> tuple[float, float]:
        w, h = self.pitch
        return self.n_head * w + self.COLORBAR + 0.3, self.n_layer * h + self.header

    @property
    def pixels(self) -> tuple[int, int]:
        """The PNG's width and height."""
        w, h = self.inches
        return round(w * self.dpi), round(h * self.dpi)


NOTE = ("Rows: layers; columns: heads. In each cell, row i is the token at position i and how much it takes from "
        "each token up to it (each row sums to 1); grey: the future, hidden by the causal mask.")


def layout(attention: AttentionMap) -> Layout:
    """The grid for `attention`. Cells grow with the number of tokens so that ~30 labels stay
    readable (4.4 inches a side at 30, a 7-point font); the resolution drops (down to 60 dpi) so
    that a big grid stays under about 8000 pixels a side. The title (the checkpoint and the text)
    wraps to the grid's width, in at most 3 lines."""
    n_layer, n_head = attention.n_layer, attention.n_head
    labels = [token_label(t) for t in attention.tokens]
    T = len(labels)
    title = f"Attention of {attention.source} on “{attention.text}”" + (
        f" (its first {T} of {attention.text_tokens} tokens: the context)" if attention.truncated else "")
    cell = min(4.4, max(1.6, 0.9 + 0.12 * T))
    font = min(8.0, max(4.0, 0.7 * cell * 72 / T))
    longest = max(len(label.replace("\\$", "$")) for label in labels)
    label = 0.15 + longest * font * 0.62 / 72  # a character is ~0.6 em wide
    width = n_head * (label + cell + Layout.GAP) + Layout.COLORBAR + 0.3
    lines = textwrap.wrap(title, max(30, int((width - 0.3) * 72 / (12 * 0.6))))
    if len(lines) > 3:
        lines = [*lines[:2], lines[2][:-1] + "…"]
    note = textwrap.wrap(NOTE, max(40, int((width - 0.3) * 72 / (8 * 0.55))))
    grid = Layout(n_layer, n_head, cell, label, font, 100, lines, note)
    return replace(grid, dpi=max(60, min(100, int(8000 / max(grid.inches)))))


def check_image_path(path: Path) -> None:
    """Refuse an --image path that cannot take a PNG before any work is done."""
    if path.suffix.lower() != ".png":
        raise ConfigError(f"the attention image is a PNG: give a path ending in .png, not {path}")
    if path.is_dir():
        raise ConfigError(f"cannot write the attention image to {path}: it is a directory; give a file path")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot write the attention image to {path}: {parent} is a file, not a directory")


def plot_attention(attention: AttentionMap, path: Path) -> Path:
    """Draw the grid (rows: layers, columns: heads; in each cell the T x T weights, queries down,
    keys across, tokens labelled; one colour scale 0..1, the causal mask's future in grey) and
    write it to `path` atomically as a PNG. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    check_image_path(path)
    labels = [token_label(t) for t in attention.tokens]
    T = len(labels)
    geo = layout(attention)
    width, height = geo.inches
    pitch_w, pitch_h = geo.pitch
    weights = attention.weights.numpy()
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    every = max(1, math.ceil(T / 40))  # past ~40 tokens, label every n-th
    ticks = list(range(0, T, every))

    fig = plt.figure(figsize=(width, height), dpi=geo.dpi)
    try:
        top = height - 0.15
        fig.text(0.15 / width, top / height, "\n".join(geo.title).replace("$", r"\$"), ha="left", va="top",
                 fontsize=12, fontweight="bold", linespacing=1.3)
        top -= len(geo.title) * 12 * 1.3 / 72
        fig.text(0.15 / width, top / height, "\n".join(geo.note), ha="left", va="top", fontsize=8, linespacing=1.3)
        image = None
        for layer in range(attention.n_layer):
            for head in range(attention.n_head):
                left = head * pitch_w + geo.label
                bottom = height - geo.header - layer * pitch_h - geo.CELL_TITLE - geo.cell
                ax = fig.add_axes((left / width, bottom / height, geo.cell / width, geo.cell / height))
                cell = np.ma.masked_array(weights[layer, head], mask=future)
                image = ax.imshow(cell, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
                ax.set_title(f"layer {layer} · head {head}", fontsize=9, pad=3)
                ax.set_xticks([])
                ax.set_yticks([])
                for i in ticks:  # plain texts, not tick labels: a grid of 144 cells draws twice as fast
                    ax.text(i, -0.01, labels[i], rotation=90, ha="center", va="top", fontsize=geo.font,
                            transform=ax.get_xaxis_transform())
                    ax.text(-0.01, i, labels[i], ha="right", va="center", fontsize=geo.font,
                            transform=ax.get_yaxis_transform())
        bar = fig.add_axes(((width - geo.COLORBAR - 0.1) / width, 0.5 - min(0.4, 2.0 / height),
                            0.18 / width, min(0.8, 4.0 / height)))
        fig.colorbar(image, cax=bar, label="attention weight")
        try:
            atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=geo.dpi))
        except OSError as e:
            raise ConfigError(
                f"cannot write the attention image to {path} ({first_line(e)}): give another --image") from None
    finally:
        plt.close(fig)
    return path
