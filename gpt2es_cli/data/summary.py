"""What `gpt2es inspect DATA_DIR` shows about a prepared dataset, computed (rendering is in
cli/render_data.py): meta.json, document length statistics from the <|endoftext|> positions in
the token files (sampled when the files are huge), and a decoded window of tokens.
`describe_dataset` is the entry point. A directory of shards (prepare --shard) is described as the
one dataset `train` reads (data/shards.py), with each shard's splits beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.data.dataset import SPLITS, PreparedDataset
from gpt2es_cli.data.shards import MergedDataset, open_dataset

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
    """Splits whose sha256 differs from meta.json ('shard-0003-of-0008/train' in a directory of
    shards); None when not verified."""
    shards: list[dict[str, Any]] | None = None
    """For a directory of shards: each shard's name and documents, bytes and tokens per split."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (for `inspect --json`)."""
        return {**asdict(self), "path": str(self.path)}


def describe_dataset(
    path: str | Path, *, seed: int = 0, window_tokens: int = 160, verify: bool = False
) -> DatasetSummary:
    """Open a prepared dataset (or a directory of shards) and compute what `inspect` shows (token files
    stay memory-mapped)."""
    ds = open_dataset(path)
    parts = ds.parts if isinstance(ds, MergedDataset) else [ds]
    eos = int(ds.meta["eos_id"])
    rng = np.random.default_rng(seed)
    budget = max(CHUNK_TOKENS, SCAN_TOKENS // len(parts))  # the scan budget shared by the shards
    lengths = {split: _stats([_lengths(p.tokens(split), eos, rng, budget) for p in parts]) for split in SPLITS}
    window = None
    total = ds.num_tokens("train")
    if total:
        n = min(window_tokens, total)
        start = int(rng.integers(0, total - n + 1))
        text = ds.tokenizer().decode(_read(parts, "train", start, n).tolist())
        window = TokenWindow("train", start, n, text)
    bad = ds.verify() if verify else None
    shards = ds.meta["shards"]["parts"] if isinstance(ds, MergedDataset) else None
    return DatasetSummary(Path(path), ds.meta, lengths, window, bad, shards)


def _read(parts: list[PreparedDataset], split: str, start: int, count: int) -> np.ndarray:
    """`count` tokens from `start` in the parts' split read one after another."""
    pieces, offset = [], 0
    for part in parts:
        n = part.num_tokens(split)
        lo, hi = max(start - offset, 0), min(start + count - offset, n)
        if lo < hi:
            pieces.append(np.asarray(part.tokens(split)[lo:hi]))
        offset += n
    return np.concatenate(pieces)


def document_lengths(tokens: np.ndarray, eos_id: int, rng: np.random.Generator) -> LengthStats | None:
    """Length statistics of the documents in a token array (every document ends in eos_id)."""
    return _stats([_lengths(tokens, eos_id, rng, SCAN_TOKENS)])


def _lengths(tokens: np.ndarray, eos_id: int, rng: np.random.Generator, budget: int) -> tuple[np.ndarray, bool]:
    """The lengths of the documents in a token array (all of them, or those inside chunks adding up
    to `budget` tokens when it holds more), and whether they were sampled."""
    n = len(tokens)
    if n == 0:
        return np.zeros(0, dtype=np.int64), False
    sampled = n > budget
    if sampled:
        count = max(1, budget // CHUNK_TOKENS)
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
    return (np.concatenate(found) if found else np.zeros(0, dtype=np.int64)), sampled


def _stats(found: list[tuple[np.ndarray, bool]]) -> LengthStats | None:
    """Statistics over the lengths of several token arrays (None when they hold no document)."""
    lengths = np.concatenate([x for x, _ in found]) if found else np.zeros(0, dtype=np.int64)
    sampled = any(s for _, s in found)
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
