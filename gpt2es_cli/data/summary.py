"""What `gpt2es inspect DATA_DIR` shows about a prepared dataset, computed (rendering is in
cli/render_data.py): meta.json, document length statistics from the <|endoftext|> positions in
the token files (sampled when the files are huge), and a decoded window of tokens.
`describe_dataset` is the entry point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.data.dataset import SPLITS, PreparedDataset

SCAN_TOKENS = 64 * 2**20
"""Splits up to this many tokens are scanned whole for document lengths; bigger ones are
sampled in chunks adding up to this many tokens."""
CHUNK_TOKENS = 4 * 2**20


@dataclass
class LengthStats:
    """Document lengths in tokens (without the <|endoftext|>)."""

    documents: int
    """How many documents the figures are over."""
    sampled: bool
    """True when only chunks of the split were scanned (documents longer than a chunk are missed)."""
    mean: float
    minimum: int
    p10: float
    median: float
    p90: float
    maximum: int


@dataclass
class TokenWindow:
    """A stretch of consecutive tokens, decoded."""

    split: str
    start: int
    tokens: int
    text: str


@dataclass
class DatasetSummary:
    path: Path
    meta: dict[str, Any]
    lengths: dict[str, LengthStats | None]
    """Per split; None for an empty split."""
    window: TokenWindow | None
    bad_checksums: list[str] | None
    """Splits whose sha256 differs from meta.json; None when not verified."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for `inspect --json`)."""
        return {**asdict(self), "path": str(self.path)}


def describe_dataset(
    path: str | Path, *, seed: int = 0, window_tokens: int = 160, verify: bool = False
) -> DatasetSummary:
    """Open a prepared dataset and compute what `inspect` shows (token files stay memory-mapped)."""
    ds = PreparedDataset.open(path)
    eos = int(ds.meta["eos_id"])
    rng = np.random.default_rng(seed)
    lengths = {split: document_lengths(ds.tokens(split), eos, rng) for split in SPLITS}
    window = None
    train = ds.tokens("train")
    if len(train):
        n = min(window_tokens, len(train))
        start = int(rng.integers(0, len(train) - n + 1))
        text = ds.tokenizer().decode(train[start : start + n].tolist())
        window = TokenWindow("train", start, n, text)
    bad = ds.verify() if verify else None
    return DatasetSummary(Path(path), ds.meta, lengths, window, bad)


def document_lengths(tokens: np.ndarray, eos_id: int, rng: np.random.Generator) -> LengthStats | None:
    """Length statistics of the documents in a token array (every document ends in eos_id)."""
    n = len(tokens)
    if n == 0:
        return None
    sampled = n > SCAN_TOKENS
    if sampled:
        count = SCAN_TOKENS // CHUNK_TOKENS
        starts = np.sort(rng.choice(n // CHUNK_TOKENS, size=count, replace=False)) * CHUNK_TOKENS
        chunks = [(int(s), int(s) + CHUNK_TOKENS) for s in starts]
    else:
        chunks = [(s, min(s + CHUNK_TOKENS, n)) for s in range(0, n, CHUNK_TOKENS)]
    found: list[np.ndarray] = []
    previous = -1  # the eos before the current chunk, when scanning whole
    for start, end in chunks:
        pos = np.flatnonzero(np.asarray(tokens[start:end]) == eos_id) + start
        if start == 0 and len(pos) and pos[0] == 0 and not sampled:
            previous, pos = 0, pos[1:]  # an instruction dataset's split opens with <|endoftext|>: it ends no document
        if sampled:  # only documents that start and end inside the chunk
            found.append(np.diff(pos) - 1)
        else:
            found.append(np.diff(np.concatenate([[previous], pos])) - 1)
            if len(pos):
                previous = int(pos[-1])
    lengths = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    if len(lengths) == 0:
        return None
    p10, median, p90 = np.percentile(lengths, [10, 50, 90])
    return LengthStats(
        len(lengths),
        sampled,
        float(lengths.mean()),
        int(lengths.min()),
        float(p10),
        float(median),
        float(p90),
        int(lengths.max()),
    )
