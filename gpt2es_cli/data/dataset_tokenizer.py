"""The tokenizer of a dataset being prepared: the one --tokenizer names, or a BPE trained for it.

`choose_tokenizer` returns the tokenizer with its meta.json entry (`origin`: 'gpt2', 'hub',
'file' or 'trained'); `tokenizer_label` names such an entry for a person. A trained tokenizer is
a byte-level BPE fed, as a stream, the start of the training split (cleaned and deduplicated as
the dataset will be, at most --tokenizer-sample-bytes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.clean import DigestSet, HygieneCounts, split_score
from gpt2es_cli.data.passes import (
    PrepareProgress,
    ProgressCallback,
    SourceReader,
    batches,
    check_documents,
    clean_batch,
)
from gpt2es_cli.data.sources import Source
from gpt2es_cli.errors import TokenizerError
from gpt2es_cli.tokenizer import GPT2_HUB_ID, Tokenizer

__all__ = ["cached_gpt2", "choose_tokenizer", "load_tokenizer", "tokenizer_label"]


def choose_tokenizer(source: Source, options: PrepareConfig, report: ProgressCallback) -> tuple[Tokenizer, dict]:
    """The tokenizer --tokenizer names, or one trained on `source` for --tokenizer train."""
    tokenizer, info = load_tokenizer(options.tokenizer, options.tokenizer_revision)
    if tokenizer is None:
        # The trainer stops early when no pair occurs twice any more: vocab_size may be smaller.
        tokenizer, info = _train_tokenizer(source, options, report)
    return tokenizer, info


def tokenizer_label(info: dict[str, Any]) -> str:
    """A short name for the tokenizer described by meta.json's `tokenizer` entry."""
    origin = info.get("origin")
    if origin == "trained":
        return f"trained BPE ({info['vocab_size']} tokens)"
    if origin == "gpt2":
        return "GPT-2"
    return f"{info.get('path', 'tokenizer')} ({info.get('vocab_size')} tokens)"


def cached_gpt2() -> Tokenizer | None:
    """GPT-2's tokenizer from the Hugging Face cache only (no network), or None."""
    try:
        from huggingface_hub import hf_hub_download

        return Tokenizer.from_path(hf_hub_download(GPT2_HUB_ID, "tokenizer.json", local_files_only=True))
    except Exception:
        return None


def load_tokenizer(choice: str, revision: str | None = None) -> tuple[Tokenizer | None, dict[str, Any]]:
    """GPT-2's or a file's tokenizer; (None, {}) when one is to be trained. `revision`: of a Hub id."""
    if revision is not None:
        from gpt2es_cli.hub import with_revision

        choice = with_revision(choice, revision, "--tokenizer-revision")
    if choice == "train":
        return None, {}
    if choice == "gpt2":
        tok = cached_gpt2() or Tokenizer.gpt2()
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


def _train_tokenizer(source: Source, options: PrepareConfig, report: ProgressCallback) -> tuple[Tokenizer, dict]:
    """Train a byte-level BPE on the start of the training split, streamed to the trainer."""
    fed = {"documents": 0, "bytes": 0}
    counts = HygieneCounts()
    reader = SourceReader(source, options, "sample")

    def texts() -> Iterator[str]:
        seen = DigestSet()
        for batch in batches(reader):
            c = clean_batch(batch, options.min_chars)
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
        check_documents(source.name, counts, train_documents=0, options=options)
    info = {
        "origin": "trained",
        "vocab_size": tokenizer.vocab_size,
        "requested_vocab_size": options.vocab_size,
        "trained_on_documents": fed["documents"],
        "trained_on_bytes": fed["bytes"],
    }
    return tokenizer, info
