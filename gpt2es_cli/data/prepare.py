"""`prepare`: raw documents from a Source -> a prepared dataset (see data/dataset.py).

The pipeline, in bounded memory whatever the corpus size:

1. If the tokenizer is to be trained: one pass over the start of the source, cleaning and
   deduplicating as below, feeding the training split's text (at most `tokenizer_sample_bytes`)
   to the `tokenizers` BPE trainer as a stream (data/dataset_tokenizer.py).
2. A second pass: the main process reads documents and groups them into ~1 MB batches; worker
   processes clean, fingerprint and tokenize each batch; the main process drops duplicates
   (8-byte digests in a `DigestSet`), picks each document's split from a keyed hash of its
   text, and appends the ids to train.bin / val.bin through `DatasetWriter` (atomic: an
   exception anywhere leaves nothing behind). At most 2 batches per worker are in flight.
3. Fertility (tokens per word, bytes per token) on a sample of the validation text, for the
   dataset's tokenizer and for GPT-2's when it is available locally (data/fertility.py).

With --shard I/N (data/shards.py) the same pass runs over the whole source, and every decision is
taken for every document as without it (deduplication, the split, the document held back for
validation); the workers tokenize, and the writer writes, only the documents of shard I (their
text's fingerprint modulo N is I). So shard I holds exactly the documents of the unsharded dataset
that fall to it, in the same order, and its hygiene counts are those of its own documents (the
counts of what was read, such as undecodable bytes, are the whole source's).

The library reports progress through a callback and never prints.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.clean import DigestSet, HygieneCounts, split_score
from gpt2es_cli.data.dataset import DatasetWriter, check_output_dir, shard_dir_name, shard_dirs, token_dtype
from gpt2es_cli.data.dataset_tokenizer import choose_tokenizer
from gpt2es_cli.data.fertility import FERTILITY_SAMPLE_TOKENS, measure_fertility
from gpt2es_cli.data.mixture import MixtureSource
from gpt2es_cli.data.passes import ProgressCallback, SourceReader, batches, check_documents, clean_batch
from gpt2es_cli.data.sources import Source
from gpt2es_cli.errors import ConfigError, DataError, TokenizerError
from gpt2es_cli.tokenizer import Tokenizer

__all__ = ["PrepareResult", "prepare"]


@dataclass
class PrepareResult:
    """What `prepare` did: the dataset's meta.json, plus figures for a summary."""

    path: Path
    meta: dict[str, Any]
    hygiene: HygieneCounts
    seconds: float
    tokenize_seconds: float
    num_proc: int

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.meta["splits"].values())


def prepare(source: Source, options: PrepareConfig, on_progress: ProgressCallback | None = None) -> PrepareResult:
    """Turn a source into a prepared dataset at `options.output_dir`; see the module docstring.

    `source` is what `options.dataset` names (data.sources.resolve_source); the other source
    fields of `options` (subset, split, ...) were used to resolve it. For --format instructions,
    call data.instructions.prepare_instructions(options)."""
    options.validate()
    if options.format != "text":
        raise ConfigError(f"prepare() writes text datasets: for --format {options.format}, "
                          "call gpt2es_cli.data.instructions.prepare_instructions(options)")
    shard = options.shard_parts
    out = options.output_dir if shard is None else _shard_output(options.output_dir, *shard)
    check_output_dir(out, options.force)  # before any long work; DatasetWriter checks again
    started = time.perf_counter()
    report = on_progress or (lambda p: None)

    tokenizer, tokenizer_info = choose_tokenizer(source, options, report)

    num_proc = options.num_proc or (1 if source.small() else min(_cpu_count(), 8))
    settings = _Settings(tokenizer.to_json(), options.min_chars, options.seed, token_dtype(tokenizer.vocab_size).str,
                         shard or (0, 1))
    tokenize_started = time.perf_counter()
    with DatasetWriter(out, tokenizer, force=options.force) as writer, _Pipeline(settings, num_proc) as pipe:
        mixture = source if isinstance(source, MixtureSource) else None
        state = _WriteState(writer, options, len(mixture.parts) if mixture else 0)
        reader = SourceReader(source, options, "tokenize")
        parts: deque = deque()  # for a mixture: each batch's sources, in the order the batches come back
        for batch in pipe.imap(batches(reader, mixture, parts)):
            if mixture is not None:
                batch.parts = parts.popleft()[batch.kept]
            state.add(batch)
            report(reader.progress(state.tokens_written()))
        report(reader.progress(state.tokens_written(), done=1.0))
        hygiene = state.finish(source)
        fertility = measure_fertility(tokenizer, tokenizer_info, state.val_sample, options.gpt2_tokenizer)
        described = source.describe()
        if mixture is not None:
            for i, part in enumerate(described["parts"]):
                part["written"] = state.part_counts(i)
        meta = writer.finish(
            {
                "source": described,
                "tokenizer": tokenizer_info,
                "hygiene": hygiene.to_dict(),
                "fertility": fertility,
                "seed": options.seed,
                "val_fraction": options.val_fraction,
                **({"shard": {"index": shard[0], "count": shard[1]}} if shard else {}),
                "arguments": options.to_dict(),
                "prepare_seconds": round(time.perf_counter() - started, 2),
            }
        )
    done = time.perf_counter()
    return PrepareResult(out, meta, hygiene, done - started, done - tokenize_started, num_proc)


def _shard_output(parent: Path, index: int, count: int) -> Path:
    """--out/shard-000I-of-000N, after checking that --out is a place for shards of this split (one
    check before the long work; N machines write their own directories, never each other's)."""
    if parent.exists() and not parent.is_dir():
        raise DataError(f"--out {parent} is a file: choose a directory for the shards")
    if (parent / "meta.json").is_file():
        raise DataError(
            f"--out {parent} holds a prepared dataset, not shards: choose another --out for the shards "
            "(or delete it first)"
        )
    others = sorted({d.name for d in shard_dirs(parent) if not d.name.endswith(f"-of-{count:04d}")})
    if others:
        raise DataError(
            f"--out {parent} holds shards of another split ({others[0]}), not of {count}: delete them, or prepare "
            "into another --out"
        )
    return parent / shard_dir_name(index, count)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- workers ----------------------------------------------------------------------------------


@dataclass
class _Settings:
    tokenizer_json: str
    min_chars: int
    seed: int
    dtype: str
    shard: tuple[int, int]
    """(index, count) of the documents to tokenize: (0, 1) for all."""


@dataclass
class _Batch:
    """One batch, processed: the kept documents' fingerprints and, for those of this shard (all of
    them without --shard), their ids (each followed by <|endoftext|>)."""

    ids: np.ndarray
    ends: np.ndarray
    """Token offset where each kept document ends (after its <|endoftext|>); a document of another
    shard has no tokens (it ends where the one before it does)."""
    digests: np.ndarray
    scores: np.ndarray
    nbytes: np.ndarray
    empty: int
    too_short: int
    control_chars_removed: int
    lossy: str | None
    """A snippet the tokenizer could not reproduce, if any."""
    kept: np.ndarray
    """The position in the batch of each kept document (the others were empty or too short)."""
    mine: np.ndarray
    """Whether each kept document belongs to this shard (all True without --shard)."""
    own: tuple[int, int, int]
    """Empty documents, too short ones and control characters removed in this shard's documents."""
    parts: np.ndarray | None = None
    """For a mixture: which source each kept document came from (set in the main process)."""


class _Processor:
    """Clean, fingerprint and tokenize a batch of documents (runs in each worker)."""

    def __init__(self, settings: _Settings):
        self.settings = settings
        self.tokenizer = Tokenizer.from_json(settings.tokenizer_json)
        self.dtype = np.dtype(settings.dtype)

    def __call__(self, docs: list[str]) -> _Batch:
        s = self.settings
        index, count = s.shard
        c = clean_batch(docs, s.min_chars, count)
        digests = c.digests
        if c.owners is None:
            mine = np.ones(len(c.texts), dtype=bool)
            own = (c.empty, c.too_short, c.control_chars_removed)
        else:
            mine = c.owners == index
            own = tuple(int(x) for x in c.by_shard[index])  # type: ignore[index]
        texts = [t for t, m in zip(c.texts, mine.tolist(), strict=True) if m]
        ids = self.tokenizer.encode_batch(texts)
        eos = self.tokenizer.eos_id
        lengths = np.zeros(len(c.texts), dtype=np.int64)
        lengths[mine] = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        ends = np.cumsum(lengths)
        flat = np.empty(int(lengths.sum()), dtype=self.dtype)
        own_ends = ends[mine]
        flat[own_ends - 1] = eos
        for doc, end in zip(ids, own_ends.tolist()):
            flat[end - 1 - len(doc) : end - 1] = doc  # list -> array at C speed, not item by item
        lossy = None
        if texts:  # the tokenizer must give back the text it was given (byte-level BPEs do)
            back = self.tokenizer.decode(ids[0])
            if back != texts[0]:
                lossy = _first_difference(texts[0], back)
        return _Batch(
            flat,
            ends,
            np.array(digests, dtype=np.uint64),
            np.array([split_score(d, s.seed) for d in digests], dtype=np.float64),
            np.array(c.nbytes, dtype=np.int64),
            c.empty,
            c.too_short,
            c.control_chars_removed,
            lossy,
            np.array(c.kept, dtype=np.int64),
            mine,
            own,  # type: ignore[arg-type]
        )


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return a[max(0, i - 10) : i + 10]


_WORKER: _Processor | None = None


def _init_worker(settings: _Settings, threads: int) -> None:
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the tokenizer's own threads, per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    global _WORKER
    _WORKER = _Processor(settings)


def _work(docs: list[str]) -> _Batch:
    assert _WORKER is not None
    return _WORKER(docs)


class _Pipeline:
    """Batches in, processed batches out, in order: inline, or in `num_proc` spawned workers
    with at most 2 batches per worker in flight (Pool.imap would read the whole source ahead)."""

    def __init__(self, settings: _Settings, num_proc: int):
        self.settings, self.num_proc = settings, num_proc
        self.pool: Any = None
        self.inline: _Processor | None = None

    def __enter__(self) -> _Pipeline:
        if self.num_proc == 1:
            self.inline = _Processor(self.settings)
        else:
            threads = max(1, _cpu_count() // self.num_proc)
            # spawn, not fork: the parent may have used the tokenizer's thread pool already.
            ctx = multiprocessing.get_context("spawn")
            self.pool = ctx.Pool(self.num_proc, initializer=_init_worker, initargs=(self.settings, threads))
        return self

    def imap(self, batches: Iterable[list[str]]) -> Iterator[_Batch]:
        if self.inline is not None:
            yield from map(self.inline, batches)
            return
        pending: deque = deque()
        for batch in batches:
            pending.append(self.pool.apply_async(_work, (batch,)))
            if len(pending) >= 2 * self.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Held:
    ids: np.ndarray | None
    """None for a document of another shard (its place is kept, its tokens are that shard's)."""
    nbytes: int
    score: float
    part: int = 0


class _WriteState:
    """Deduplicate, split and write processed batches; count what happened.

    Validation must not end up empty, even for a tiny corpus where no document's score falls
    under --val-fraction: until a validation document appears, the training document with the
    lowest score is held back (one at a time); at the end it goes to validation if that is
    still empty, else to train.

    With --shard, every decision is taken over all documents, the other shards' too (which is why
    their fingerprints and scores come back from the workers), and only this shard's are written:
    `counts` are this shard's documents', `whole` the corpus's (what `check_documents` judges, so
    every shard stops alike on a corpus with too little text).
    """

    def __init__(self, writer: DatasetWriter, options: PrepareConfig, num_parts: int = 0):
        self.writer, self.options = writer, options
        self.per_part = {split: np.zeros((num_parts, 3), dtype=np.int64) for split in ("train", "val")}
        """For a mixture: documents, bytes and tokens written per source and split."""
        self.seen = DigestSet()
        self.counts = HygieneCounts()
        self.whole = HygieneCounts()
        self.documents = {"train": 0, "val": 0}
        """Documents of each split over all shards."""
        self.held: _Held | None = None
        self.val_sample: list[np.ndarray] = []
        self.val_sample_tokens = 0

    def tokens_written(self) -> int:
        return sum(f.tokens for f in self.writer.splits.values())

    def add(self, b: _Batch) -> None:
        c, w = self.counts, self.whole
        w.empty += b.empty
        w.too_short += b.too_short
        w.control_chars_removed += b.control_chars_removed
        c.empty += b.own[0]
        c.too_short += b.own[1]
        c.control_chars_removed += b.own[2]
        if b.lossy is not None:
            raise TokenizerError(
                f"the tokenizer cannot reproduce the text exactly (it changes {b.lossy!r}): "
                "use a byte-level BPE (the default, or --tokenizer gpt2)"
            )
        if len(b.digests) == 0:
            return
        keep = self.seen.add_batch(b.digests) if self.options.dedup else np.ones(len(b.digests), dtype=bool)
        w.duplicates += int((~keep).sum())
        c.duplicates += int((~keep & b.mine).sum())
        val = keep & (b.scores < self.options.val_fraction)
        train = keep & ~val
        starts = np.concatenate([[0], b.ends[:-1]])
        if self.documents["val"] == 0 and not val.any() and train.any():
            best = int(np.flatnonzero(train)[np.argmin(b.scores[train])])
            if self.held is None or b.scores[best] < self.held.score:
                self._release("train")
                part = int(b.parts[best]) if b.parts is not None else 0
                ids = b.ids[starts[best] : b.ends[best]].copy() if b.mine[best] else None
                self.held = _Held(ids, int(b.nbytes[best]), float(b.scores[best]), part)
                train[best] = False
        elif val.any():
            self._release("train")
        self.documents["train"] += int(train.sum())
        self.documents["val"] += int(val.sum())
        self._write("train", b, train & b.mine, starts)
        self._write("val", b, val & b.mine, starts)

    def _write(self, split: str, b: _Batch, mask: np.ndarray, starts: np.ndarray) -> None:
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            return
        ids = np.concatenate([b.ids[starts[i] : b.ends[i]] for i in idx])
        self.writer.write(split, ids, documents=len(idx), nbytes=int(b.nbytes[idx].sum()))
        if b.parts is not None:
            counts = self.per_part[split]
            np.add.at(counts[:, 0], b.parts[idx], 1)
            np.add.at(counts[:, 1], b.parts[idx], b.nbytes[idx])
            np.add.at(counts[:, 2], b.parts[idx], b.ends[idx] - starts[idx])
        if split == "val" and self.val_sample_tokens < FERTILITY_SAMPLE_TOKENS:
            self.val_sample.append(ids)
            self.val_sample_tokens += len(ids)

    def _release(self, split: str) -> None:
        if self.held is None:
            return
        held, self.held = self.held, None
        self.documents[split] += 1
        if held.ids is None:  # another shard's: written there
            return
        self.writer.write(split, held.ids, documents=1, nbytes=held.nbytes)
        if len(self.per_part[split]):
            self.per_part[split][held.part] += (1, held.nbytes, len(held.ids))
        if split == "val":
            self.val_sample.append(held.ids)
            self.val_sample_tokens += len(held.ids)

    def part_counts(self, i: int) -> dict[str, dict[str, int]]:
        """Documents, bytes and tokens (each with its <|endoftext|>) written from source i of a mixture."""
        return {split: dict(zip(("documents", "bytes", "tokens"), map(int, c[i]), strict=True))
                for split, c in self.per_part.items()}

    def finish(self, source: Source) -> HygieneCounts:
        """Place the held document; check both splits have documents (over all shards); return this
        shard's counts."""
        self._release("val" if self.documents["val"] == 0 else "train")
        read = source.counts
        stats = self.writer.splits
        for c, kept in ((self.whole, sum(self.documents.values())),
                        (self.counts, stats["train"].documents + stats["val"].documents)):
            c.undecodable_bytes = read.undecodable_bytes
            c.skipped_records = read.skipped_records
            c.long_documents_split = read.long_documents_split
            c.documents_kept = kept
            c.documents_read = c.documents_kept + c.empty + c.too_short + c.duplicates
        check_documents(source.name, self.whole, self.documents["train"], self.options)
        return self.counts
