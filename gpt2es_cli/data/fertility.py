"""Tokenizer fertility: tokens per word and bytes per token of a dataset's validation text.

Measured for the dataset's own tokenizer and, when it is at hand (--gpt2-tokenizer or the Hugging
Face cache), for GPT-2's on the same text, so the two can be compared in meta.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.data.dataset_tokenizer import cached_gpt2, tokenizer_label
from gpt2es_cli.tokenizer import Tokenizer

__all__ = ["FERTILITY_SAMPLE_TOKENS", "measure_fertility"]

FERTILITY_SAMPLE_TOKENS = 2_000_000
"""Fertility is measured on up to this many validation tokens."""


def measure_fertility(tokenizer: Tokenizer, info: dict, sample: list[np.ndarray], gpt2_tokenizer: Path | None) -> dict:
    """Tokens per word and bytes per token on (a sample of) the validation text.

    `sample`: token ids of whole validation documents, each ending in <|endoftext|>; `info`: the
    tokenizer's meta.json entry; `gpt2_tokenizer`: GPT-2's, to compare with (None: from the cache,
    unless the dataset's tokenizer is GPT-2's)."""
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
    if gpt2_tokenizer is not None:
        reference = Tokenizer.from_path(gpt2_tokenizer)
    elif info.get("origin") != "gpt2":
        reference = cached_gpt2()
    if reference is not None and texts:
        tokens = sum(len(x) for x in reference.encode_batch(texts))
        rows.append(_fertility_row("GPT-2", tokens, words, nbytes))
    return {"sample": {"documents": len(texts), "words": words, "bytes": nbytes}, "tokenizers": rows}


def _fertility_row(name: str, tokens: int, words: int, nbytes: int) -> dict[str, Any]:
    return {
        "name": name,
        "tokens": tokens,
        "tokens_per_word": round(tokens / words, 4) if words else None,
        "bytes_per_token": round(nbytes / tokens, 4) if tokens else None,
    }
