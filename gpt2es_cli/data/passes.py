"""One pass of `prepare` over a source: documents up to the caps, in batches, cleaned, with progress.

Both passes (the tokenizer's training sample and the pass that writes the dataset) read the source
through `SourceReader` and `batches`, clean each batch with `clean_batch`, and end with
`check_documents` when too little text is left for a training and a validation split.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.clean import HygieneCounts, digest, normalize
from gpt2es_cli.data.mixture import MixtureSource
from gpt2es_cli.data.shards import shard_of
from gpt2es_cli.data.sources import Source
from gpt2es_cli.errors import DataError

__all__ = [
    "PrepareProgress",
    "ProgressCallback",
    "SourceReader",
    "batches",
    "check_documents",
    "clean_batch",
]

BATCH_CHARS = 1 << 20
"""Documents go to the workers in batches of about this many characters."""
BATCH_DOCS = 4096


@dataclass
class PrepareProgress:
    """A progress report, sent after each batch."""

    phase: str
    """'sample' (reading text to train the tokenizer on), 'train' (the tokenizer's trainer at
    work, no fraction), or 'tokenize' (the pass that writes the dataset)."""
    documents: int
    """Documents read from the source so far in this phase."""
    bytes_read: int
    """UTF-8 bytes of those documents."""
    tokens: int
    """Tokens written so far (0 before the 'tokenize' phase)."""
    seconds: float
    """Since this phase started."""
    fraction: float | None
    """How much of this phase is done, when the source size or a cap says."""


ProgressCallback = Callable[[PrepareProgress], None]


class SourceReader:
    """The source's documents up to --max-docs / --max-bytes, counted for progress reports."""

    def __init__(self, source: Source, options: PrepareConfig, phase: str):
        self.source, self.options, self.phase = source, options, phase
        self.documents = self.bytes = 0
        self.started = time.perf_counter()

    def __iter__(self) -> Iterator[str]:
        cap_docs, cap_bytes = self.options.max_docs, self.options.max_bytes
        for doc in self.source.documents():
            if (cap_docs is not None and self.documents >= cap_docs) or (
                cap_bytes is not None and self.bytes >= cap_bytes
            ):
                break
            self.documents += 1
            self.bytes += len(doc.encode("utf-8"))
            yield doc

    def progress(self, tokens: int = 0, done: float | None = None, phase: str | None = None) -> PrepareProgress:
        """A report; `done` is one more estimate of the fraction done, if the caller has one."""
        parts = [] if done is None else [done]
        if self.source.total_bytes:
            parts.append(self.source.position / self.source.total_bytes)
        if self.options.max_docs:
            parts.append(self.documents / self.options.max_docs)
        if self.options.max_bytes:
            parts.append(self.bytes / self.options.max_bytes)
        fraction = min(1.0, max(parts)) if parts else None
        seconds = time.perf_counter() - self.started
        return PrepareProgress(phase or self.phase, self.documents, self.bytes, tokens, seconds, fraction)


def batches(docs: Iterable[str], mixture: MixtureSource | None = None, parts: deque | None = None) -> Iterator[list[str]]:
    """Documents in batches of about BATCH_CHARS. From a mixture, each batch's array of which
    source each document came from goes to `parts` as the batch is yielded."""
    batch: list[str] = []
    sources: list[int] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        if mixture is not None:
            sources.append(mixture.last)
        size += len(doc)
        if size >= BATCH_CHARS or len(batch) >= BATCH_DOCS:
            if parts is not None:
                parts.append(np.array(sources, dtype=np.int64))
            yield batch
            batch, sources, size = [], [], 0
    if batch:
        if parts is not None:
            parts.append(np.array(sources, dtype=np.int64))
        yield batch


@dataclass
class CleanedBatch:
    """The documents of a batch that survive cleaning, with their sizes and fingerprints."""

    texts: list[str]
    nbytes: list[int]
    digests: list[int]
    empty: int
    too_short: int
    control_chars_removed: int
    kept: list[int]
    """The position in the batch of each surviving document."""
    owners: np.ndarray | None = None
    """With shards: the shard of each surviving document (data/shards.py's `shard_of`)."""
    by_shard: np.ndarray | None = None
    """With shards: (shards, 3) counts of the empty documents, the too short ones and the control
    characters removed, each counted in the shard of its document."""


def clean_batch(docs: list[str], min_chars: int, shards: int = 1) -> CleanedBatch:
    """Normalise each document and drop the empty and the too short (both passes use this); with
    `shards` > 1, also say which shard each document belongs to, dropped ones included."""
    out = CleanedBatch([], [], [], 0, 0, 0, [])
    dropped: list[tuple[int, int, int]] = []  # with shards: (digest, column, count) of what is not kept
    for position, doc in enumerate(docs):
        text, removed = normalize(doc)
        out.control_chars_removed += removed
        if not text or len(text) < min_chars:
            if not text:
                out.empty += 1
            else:
                out.too_short += 1
            if shards > 1:
                d = digest(text.encode("utf-8"))
                dropped += [(d, 0 if not text else 1, 1), (d, 2, removed)]
            continue
        data = text.encode("utf-8")
        out.texts.append(text)
        out.nbytes.append(len(data))
        out.digests.append(digest(data))
        out.kept.append(position)
        if shards > 1 and removed:
            dropped.append((out.digests[-1], 2, removed))
    if shards > 1:
        out.owners = shard_of(np.array(out.digests, dtype=np.uint64), shards)
        out.by_shard = np.zeros((shards, 3), dtype=np.int64)
        if dropped:
            where = shard_of(np.array([d for d, _, _ in dropped], dtype=np.uint64), shards)
            np.add.at(out.by_shard, (where, [c for _, c, _ in dropped]), [n for _, _, n in dropped])
    return out


def check_documents(name: str, c: HygieneCounts, train_documents: int, options: PrepareConfig) -> None:
    """A one-line error when there is not enough text for a training and a validation split."""
    if c.documents_read == 0:
        raise DataError(f"{name} has no documents: the input is empty")
    if c.documents_kept == 0:
        raise DataError(
            f"no text left in {name} after cleaning: of {c.documents_read} documents, {c.empty} were empty, "
            f"{c.too_short} shorter than --min-chars {options.min_chars}, {c.duplicates} duplicates"
        )
    if c.documents_kept == 1:
        raise DataError(
            f"{name} has only 1 document after cleaning: at least 2 are needed (one for validation); "
            "with one .txt file, use --txt-mode blank or line"
        )
    if train_documents == 0:
        raise DataError(
            f"all {c.documents_kept} documents went to validation: lower --val-fraction ({options.val_fraction})"
        )
