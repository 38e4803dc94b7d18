"""`prepare`: raw documents from a Source -> a prepared dataset (see data/dataset.py).

The pipeline, in bounded memory whatever the corpus size:

1. If the tokenizer is to be trained: one pass over the start of the source, cleaning and
   deduplicating as below, feeding the training split's text (at most `tokenizer_sample_bytes`)
   to the `tokenizers` BPE trainer as a stream.
2. A second pass: the main process reads documents and groups them into ~1 MB batches; worker
   processes clean, fingerprint and tokenize each batch; the main process drops duplicates
   (8-byte digests in a `DigestSet`), picks each document's split from a keyed hash of its
   text, and appends the ids to train.bin / val.bin through `DatasetWriter` (atomic: an
   exception anywhere leaves nothing behind). At most 2 batches per worker are in flight.
3. Fertility (tokens per word, bytes per token) on a sample of the validation text, for the
   dataset's tokenizer and for GPT-2's when it is available locally.

The library reports progress through a callback and never prints.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.clean import (
    DigestSet,
    HygieneCounts,
    digest,
    normalize,
    split_score,
)
from gpt2es_cli.data.dataset import DatasetWriter, check_output_dir, token_dtype
from gpt2es_cli.data.sources import MixtureSource, Source
from gpt2es_cli.errors import DataError, TokenizerError
from gpt2es_cli.tokenizer import GPT2_HUB_ID, Tokenizer

__all__ = ["PrepareProgress", "PrepareResult", "prepare", "tokenizer_label"]

BATCH_CHARS = 1 << 20
"""Documents go to the workers in batches of about this many characters."""
BATCH_DOCS = 4096
FERTILITY_SAMPLE_TOKENS = 2_000_000
"""Fertility is measured on up to this many validation tokens."""


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


ProgressCallback = Callable[[PrepareProgress], None]


def prepare(source: Source, options: PrepareConfig, on_progress: ProgressCallback | None = None) -> PrepareResult:
    """Turn a source into a prepared dataset at `options.output_dir`; see the module docstring.

    `source` is what `options.dataset` names (data.sources.resolve_source); the other source
    fields of `options` (subset, split, ...) were used to resolve it."""
    options.validate()
    out = options.output_dir
    check_output_dir(out, options.force)  # before any long work; DatasetWriter checks again
    started = time.perf_counter()
    report = on_progress or (lambda p: None)

    tokenizer, tokenizer_info = _load_tokenizer(options.tokenizer, options.tokenizer_revision)
    if tokenizer is None:
        # The trainer stops early when no pair occurs twice any more: vocab_size may be smaller.
        tokenizer, tokenizer_info = _train_tokenizer(source, options, report)

    num_proc = options.num_proc or (1 if source.small() else min(_cpu_count(), 8))
    settings = _Settings(tokenizer.to_json(), options.min_chars, options.seed, token_dtype(tokenizer.vocab_size).str)
    tokenize_started = time.perf_counter()
    with DatasetWriter(out, tokenizer, force=options.force) as writer, _Pipeline(settings, num_proc) as pipe:
        mixture = source if isinstance(source, MixtureSource) else None
        state = _WriteState(writer, options, len(mixture.parts) if mixture else 0)
        reader = _Reader(source, options, "tokenize")
        parts: deque = deque()  # for a mixture: each batch's sources, in the order the batches come back
        for batch in pipe.imap(_batches(reader, mixture, parts)):
            if mixture is not None:
                batch.parts = parts.popleft()[batch.kept]
            state.add(batch)
            report(reader.progress(state.tokens_written()))
        report(reader.progress(state.tokens_written(), done=1.0))
        hygiene = state.finish(source)
        fertility = _fertility(tokenizer, tokenizer_info, state.val_sample, options)
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
                "arguments": options.to_dict(),
                "prepare_seconds": round(time.perf_counter() - started, 2),
            }
        )
    done = time.perf_counter()
    return PrepareResult(out, meta, hygiene, done - started, done - tokenize_started, num_proc)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --- reading ----------------------------------------------------------------------------------


class _Reader:
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


def _batches(docs: Iterable[str], mixture: MixtureSource | None = None, parts: deque | None = None) -> Iterator[list[str]]:
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


# --- tokenizer --------------------------------------------------------------------------------


def _load_tokenizer(choice: str, revision: str | None = None) -> tuple[Tokenizer | None, dict[str, Any]]:
    """GPT-2's or a file's tokenizer; (None, {}) when one is to be trained. `revision`: of a Hub id."""
    if revision is not None:
        from gpt2es_cli.hub import with_revision

        choice = with_revision(choice, revision, "--tokenizer-revision")
    if choice == "train":
        return None, {}
    if choice == "gpt2":
        tok = _cached_gpt2() or Tokenizer.gpt2()
        return tok, {"origin": "gpt2", "vocab_size": tok.vocab_size}
    path = Path(choice).expanduser()
    from gpt2es_cli.hub import is_hub_id

    if is_hub_id(choice):  # a Hub model's tokenizer (its files only, from the cache first)
        from gpt2es_cli.artifacts import open_tokenizer

        tok = open_tokenizer(choice)
        return tok, {"origin": "hub", "repo": choice, "vocab_size": tok.vocab_size}
    if not path.exists():
        raise TokenizerError(
            f"--tokenizer {choice!r} is neither 'train', 'gpt2', a Hub model id (owner/name) nor an existing "
            "tokenizer.json, tokenizer directory, dataset or checkpoint"
        )
    from gpt2es_cli.artifacts import open_tokenizer  # imports torch: only when needed

    tok = open_tokenizer(path)  # a checkpoint's too, to prepare data for fine-tuning it
    return tok, {"origin": "file", "path": str(path), "vocab_size": tok.vocab_size}


def _cached_gpt2() -> Tokenizer | None:
    """GPT-2's tokenizer from the Hugging Face cache only (no network), or None."""
    try:
        from huggingface_hub import hf_hub_download

        return Tokenizer.from_path(hf_hub_download(GPT2_HUB_ID, "tokenizer.json", local_files_only=True))
    except Exception:
        return None


def _train_tokenizer(source: Source, options: PrepareConfig, report: ProgressCallback) -> tuple[Tokenizer, dict]:
    """Train a byte-level BPE on the start of the training split, streamed to the trainer."""
    fed = {"documents": 0, "bytes": 0}
    counts = HygieneCounts()
    reader = _Reader(source, options, "sample")

    def texts() -> Iterator[str]:
        seen = DigestSet()
        for batch in _batches(reader):
            c = _clean(batch, options.min_chars)
            counts.empty += c.empty
            counts.too_short += c.too_short
            new = seen.add_batch(c.digests) if options.dedup else np.ones(len(c.texts), bool)
            counts.duplicates += int((~new).sum())
            counts.documents_kept += int(new.sum())
            for text, nbytes, d, is_new in zip(c.texts, c.nbytes, c.digests, new, strict=True):
                if is_new and split_score(d, options.seed) >= options.val_fraction:
                    yield text
                    fed["documents"] += 1
                    fed["bytes"] += nbytes
            report(reader.progress(done=fed["bytes"] / options.tokenizer_sample_bytes))
            if fed["bytes"] >= options.tokenizer_sample_bytes:
                break
        # The trainer now computes its merges: seconds to minutes, with nothing to report.
        report(PrepareProgress("train", fed["documents"], fed["bytes"], 0, time.perf_counter() - reader.started, None))

    tokenizer = Tokenizer.train(texts(), vocab_size=options.vocab_size)
    if fed["documents"] == 0:
        counts.documents_read = reader.documents
        _check_documents(source.name, counts, train_documents=0, options=options)
    info = {
        "origin": "trained",
        "vocab_size": tokenizer.vocab_size,
        "requested_vocab_size": options.vocab_size,
        "trained_on_documents": fed["documents"],
        "trained_on_bytes": fed["bytes"],
    }
    return tokenizer, info


# --- workers ----------------------------------------------------------------------------------


@dataclass
class _Settings:
    tokenizer_json: str
    min_chars: int
    seed: int
    dtype: str


@dataclass
class _Batch:
    """One batch, processed: the kept documents' ids (each followed by <|endoftext|>)."""

    ids: np.ndarray
    ends: np.ndarray
    """Token offset where each kept document ends (after its <|endoftext|>)."""
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
    parts: np.ndarray | None = None
    """For a mixture: which source each kept document came from (set in the main process)."""


@dataclass
class _Cleaned:
    """The documents of a batch that survive cleaning, with their sizes and fingerprints."""

    texts: list[str]
    nbytes: list[int]
    digests: list[int]
    empty: int
    too_short: int
    control_chars_removed: int
    kept: list[int]
    """The position in the batch of each surviving document."""


def _clean(docs: list[str], min_chars: int) -> _Cleaned:
    """Normalise each document and drop the empty and the too short (both passes use this)."""
    out = _Cleaned([], [], [], 0, 0, 0, [])
    for position, doc in enumerate(docs):
        text, removed = normalize(doc)
        out.control_chars_removed += removed
        if not text:
            out.empty += 1
        elif len(text) < min_chars:
            out.too_short += 1
        else:
            data = text.encode("utf-8")
            out.texts.append(text)
            out.nbytes.append(len(data))
            out.digests.append(digest(data))
            out.kept.append(position)
    return out


class _Processor:
    """Clean, fingerprint and tokenize a batch of documents (runs in each worker)."""

    def __init__(self, settings: _Settings):
        self.settings = settings
        self.tokenizer = Tokenizer.from_json(settings.tokenizer_json)
        self.dtype = np.dtype(settings.dtype)

    def __call__(self, docs: list[str]) -> _Batch:
        s = self.settings
        c = _clean(docs, s.min_chars)
        texts, digests = c.texts, c.digests
        ids = self.tokenizer.encode_batch(texts)
        eos = self.tokenizer.eos_id
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        ends = np.cumsum(lengths)
        flat = np.empty(int(lengths.sum()), dtype=self.dtype)
        flat[ends - 1] = eos
        for doc, end in zip(ids, ends.tolist()):
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
    ids: np.ndarray
    nbytes: int
    score: float
    part: int = 0


class _WriteState:
    """Deduplicate, split and write processed batches; count what happened.

    Validation must not end up empty, even for a tiny corpus where no document's score falls
    under --val-fraction: until a validation document appears, the training document with the
    lowest score is held back (one at a time); at the end it goes to validation if that is
    still empty, else to train.
    """

    def __init__(self, writer: DatasetWriter, options: PrepareConfig, num_parts: int = 0):
        self.writer, self.options = writer, options
        self.per_part = {split: np.zeros((num_parts, 3), dtype=np.int64) for split in ("train", "val")}
        """For a mixture: documents, bytes and tokens written per source and split."""
        self.seen = DigestSet()
        self.counts = HygieneCounts()
        self.held: _Held | None = None
        self.val_sample: list[np.ndarray] = []
        self.val_sample_tokens = 0

    def tokens_written(self) -> int:
        return sum(f.tokens for f in self.writer.splits.values())

    def add(self, b: _Batch) -> None:
        c = self.counts
        c.empty += b.empty
        c.too_short += b.too_short
        c.control_chars_removed += b.control_chars_removed
        if b.lossy is not None:
            raise TokenizerError(
                f"the tokenizer cannot reproduce the text exactly (it changes {b.lossy!r}): "
                "use a byte-level BPE (the default, or --tokenizer gpt2)"
            )
        if len(b.digests) == 0:
            return
        keep = self.seen.add_batch(b.digests) if self.options.dedup else np.ones(len(b.digests), dtype=bool)
        c.duplicates += int((~keep).sum())
        val = keep & (b.scores < self.options.val_fraction)
        train = keep & ~val
        starts = np.concatenate([[0], b.ends[:-1]])
        if self.writer.splits["val"].documents == 0 and not val.any() and train.any():
            best = int(np.flatnonzero(train)[np.argmin(b.scores[train])])
            if self.held is None or b.scores[best] < self.held.score:
                self._release("train")
                part = int(b.parts[best]) if b.parts is not None else 0
                self.held = _Held(b.ids[starts[best] : b.ends[best]].copy(), int(b.nbytes[best]), float(b.scores[best]),
                                  part)
                train[best] = False
        elif val.any():
            self._release("train")
        self._write("train", b, train, starts)
        self._write("val", b, val, starts)

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
        if self.held is not None:
            held, self.held = self.held, None
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
        """Place the held document; check both splits have documents; return the counts."""
        self._release("val" if self.writer.splits["val"].documents == 0 else "train")
        c = self.counts
        read = source.counts
        c.undecodable_bytes = read.undecodable_bytes
        c.skipped_records = read.skipped_records
        c.long_documents_split = read.long_documents_split
        stats = self.writer.splits
        c.documents_kept = stats["train"].documents + stats["val"].documents
        c.documents_read = c.documents_kept + c.empty + c.too_short + c.duplicates
        _check_documents(source.name, c, stats["train"].documents, self.options)
        return c


def _check_documents(name: str, c: HygieneCounts, train_documents: int, options: PrepareConfig) -> None:
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


# --- fertility --------------------------------------------------------------------------------


def _fertility(tokenizer: Tokenizer, info: dict, sample: list[np.ndarray], options: PrepareConfig) -> dict:
    """Tokens per word and bytes per token on (a sample of) the validation text."""
    ids = np.concatenate(sample) if sample else np.zeros(0, dtype=np.int64)
    bounds = np.flatnonzero(ids == tokenizer.eos_id)
    texts, start = [], 0
    for end in bounds:
        texts.append(tokenizer.decode(ids[start:end].tolist()))
        start = int(end) + 1
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    rows = [_fertility_row(tokenizer_label(info), len(ids) - len(bounds), words, nbytes)]
    reference = None
    if options.gpt2_tokenizer is not None:
        reference = Tokenizer.from_path(options.gpt2_tokenizer)
    elif info.get("origin") != "gpt2":
        reference = _cached_gpt2()
    if reference is not None and texts:
        tokens = sum(len(x) for x in reference.encode_batch(texts))
        rows.append(_fertility_row("GPT-2", tokens, words, nbytes))
    return {"sample": {"documents": len(texts), "words": words, "bytes": nbytes}, "tokenizers": rows}


def tokenizer_label(info: dict[str, Any]) -> str:
    """A short name for the tokenizer described by meta.json's `tokenizer` entry."""
    origin = info.get("origin")
    if origin == "trained":
        return f"trained BPE ({info['vocab_size']} tokens)"
    if origin == "gpt2":
        return "GPT-2"
    return f"{info.get('path', 'tokenizer')} ({info.get('vocab_size')} tokens)"


def _fertility_row(name: str, tokens: int, words: int, nbytes: int) -> dict[str, Any]:
    return {
        "name": name,
        "tokens": tokens,
        "tokens_per_word": round(tokens / words, 4) if words else None,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
    }
