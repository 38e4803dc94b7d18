"""Evaluation: loss, perplexity and bits per byte of a model on a text or a dataset split.

Text longer than the context is scored with a sliding window, as in the Hugging Face perplexity
guide: windows of `n_positions` tokens start every `stride` tokens, and each window scores only
the targets that no earlier window scored, so every token after the first is scored exactly
once, with at least `n_positions - stride` tokens of context (except at the very start).

Bits per byte = total loss in bits / UTF-8 bytes of the scored text: unlike perplexity it does
not depend on the tokenizer, so it compares models with different vocabularies.

A dataset with a loss mask (an instruction dataset) is scored on its answers only: the windows
still read every token, but only the targets the mask scores count, in the loss and in the bytes.

`EvalText` is the text to score (a dataset split or text files), handed to each model in its
own tokenizer's ids; `evaluate_ids` scores one model on it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gpt2es_cli.data.shards import open_dataset
from gpt2es_cli.errors import DataError
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import Tokenizer

TEXT_SUFFIXES = (".txt", ".md", ".text")


@dataclass
class EvalResult:
    """Scores of one model on one text."""

    name: str
    loss: float
    """Mean cross-entropy in nats per scored token."""
    perplexity: float
    bits_per_byte: float
    tokens: int
    """Tokens scored."""
    bytes: int
    """UTF-8 bytes of the scored text (special tokens excluded)."""
    seconds: float
    tokens_per_second: float
    context: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def window_starts(num_targets: int, window: int, stride: int) -> list[int]:
    """Start offsets of the windows that cover targets 1..num_targets (see module docstring)."""
    last = num_targets - window
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def count_text_bytes(tokenizer: Tokenizer, ids: np.ndarray, chunk: int = 1 << 16) -> int:
    """UTF-8 bytes of the text the ids spell, special tokens excluded.

    Decodes in chunks cut just after an <|endoftext|> where possible, so characters split across
    tokens are not cut in two.
    """
    total, start, n = 0, 0, len(ids)
    while start < n:
        end = min(start + chunk, n)
        if end < n:
            eos = np.flatnonzero(ids[start:end] == tokenizer.eos_id)
            if len(eos):
                end = start + int(eos[-1]) + 1
        total += len(tokenizer.decode(ids[start:end].tolist(), skip_special_tokens=True).encode("utf-8"))
        start = end
    return total


def count_token_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes the tokens spell one by one (special tokens count 0): the bytes of scattered
    scored tokens, which need not form whole text."""
    unique, counts = np.unique(np.asarray(ids), return_counts=True)
    specials = set(tokenizer.special_tokens)
    sizes = [0 if tokenizer.backend.id_to_token(int(i)) in specials else len(tokenizer.token_bytes(int(i)))
             for i in unique]
    return int(np.dot(np.asarray(sizes, dtype=np.int64), counts))


@torch.inference_mode()
def evaluate_ids(
    model: GPT2,
    ids: np.ndarray,
    tokenizer: Tokenizer,
    name: str = "model",
    stride: int | None = None,
    batch_size: int = 8,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: Callable[[int, int], None] | None = None,
    context: int | None = None,
    mask: np.ndarray | None = None,
) -> EvalResult:
    """Score token ids (1-D) with a sliding window. `progress(done, total)` counts tokens scored.
    `mask` (one value per id, 1: scored; an instruction dataset's loss mask) scores those targets only.

    `context`: tokens per window, by default the model's; longer than the trained context only for
    sinusoidal and rope positions (how they extrapolate). The model may compute in any dtype
    (cast, quantized or under `autocast`): the cross-entropy is always taken in float32 over
    float32 logits, so low-precision weights do not also lose precision in the loss.
    """
    trained = model.config.n_positions
    context = trained if context is None else context
    if context > trained and model.config.position == "learned":
        raise DataError(
            f"--context {context} is longer than the model's {trained} learned positions: use --context "
            f"{trained} or less (only sinusoidal and rope positions go further)"
        )
    stride = context // 2 if stride is None else stride
    if not 1 <= stride <= context:
        raise DataError(f"--stride must be between 1 and the context ({context}), got {stride}")
    if len(ids) < 2:
        raise DataError(f"the text is too short to score: {len(ids)} token(s), at least 2 are needed")
    if mask is not None and len(mask) != len(ids):
        raise DataError(f"the loss mask has {len(mask)} values for {len(ids)} tokens: prepare the dataset again")
    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1 (got {batch_size})")
    device = model.wte.weight.device
    num_targets = len(ids) - 1
    window = min(context, num_targets)
    starts = window_starts(num_targets, window, stride)
    autocast = autocast or contextlib.nullcontext
    total_nll, scored, scored_until = 0.0, 0, 0  # targets 1..scored_until are done
    covered = 0  # targets the windows reached (all of them, at the end)
    begin = time.perf_counter()
    for b in range(0, len(starts), batch_size):
        batch = starts[b : b + batch_size]
        rows = np.stack([ids[s : s + window + 1] for s in batch]).astype(np.int64)
        tokens = torch.from_numpy(rows).to(device)  # (B, window+1)
        # Target j of a window starting at s is token s+1+j; score it only if no window did.
        new = torch.zeros(len(batch), window, dtype=torch.bool)
        for r, s in enumerate(batch):
            first_new = max(scored_until - s, 0)
            new[r, first_new:] = True
            scored_until = s + window
        covered += int(new.sum())
        if mask is not None:  # and only the targets the loss mask scores
            new &= torch.from_numpy(np.stack([np.asarray(mask[s + 1 : s + 1 + window]) for s in batch]) != 0)
        new = new.to(device)
        with autocast():
            logits = model(tokens[:, :-1])  # (B, window, V)
        # float32 logits: bf16 log-softmax over a large vocabulary would round the loss.
        nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        total_nll += float(nll.view(len(batch), window)[new].sum())
        scored += int(new.sum())
        if progress:
            progress(covered, num_targets)
    seconds = time.perf_counter() - begin
    assert covered == num_targets, (covered, num_targets)
    if mask is None:
        nbytes = count_text_bytes(tokenizer, ids[1:])
    else:
        if scored == 0:
            raise DataError("the loss mask scores none of these tokens: there is no answer to evaluate")
        nbytes = count_token_bytes(tokenizer, np.asarray(ids[1:])[np.asarray(mask[1:]) != 0])
    loss = total_nll / scored
    return EvalResult(
        name=name,
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nll / math.log(2) / nbytes if nbytes else float("nan"),
        tokens=scored,
        bytes=nbytes,
        seconds=seconds,
        tokens_per_second=scored / seconds if seconds > 0 else float("inf"),
        context=context,
        stride=stride,
    )


def read_texts(path: str | Path) -> list[str]:
    """Documents to evaluate on: a UTF-8 text file, or every text file under a directory."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"text path {path} does not exist: check the path")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    texts = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{f} is not UTF-8 text (bad byte at offset {e.start}): convert it to UTF-8") from None
        if text.strip():
            texts.append(text)
    if not texts:
        raise DataError(f"{path} is empty: there is no text to evaluate")
    return texts


def encode_documents(tokenizer: Tokenizer, texts: list[str], max_tokens: int | None = None) -> np.ndarray:
    """Token ids of the documents, each followed by <|endoftext|>, cut to max_tokens."""
    out: list[int] = []
    text_tokens = 0
    for ids in tokenizer.encode_batch(texts):
        out.extend(ids)
        out.append(tokenizer.eos_id)
        text_tokens += len(ids)
        if max_tokens is not None and len(out) >= max_tokens:
            break
    if text_tokens < 2:
        raise DataError(f"the text is too short to score: {text_tokens} token(s), at least 2 are needed")
    return np.asarray(out[:max_tokens] if max_tokens else out, dtype=np.int64)


def split_documents(tokenizer: Tokenizer, ids: np.ndarray) -> list[str]:
    """Texts of the documents in a flat id array (separated by <|endoftext|>)."""
    cuts = np.flatnonzero(ids == tokenizer.eos_id)
    docs, start = [], 0
    for end in [*cuts.tolist(), len(ids)]:
        if end > start:
            docs.append(tokenizer.decode(ids[start:end].tolist()))
        start = end + 1
    return docs


class EvalText:
    """The text `eval` scores, given to each model in its own tokenizer's ids.

    From a dataset split the ids are used as they are for a model with the dataset's tokenizer,
    and decoded back into documents and re-tokenized for any other; from text files the
    documents are tokenized for each model. Either way at most `max_tokens` tokens are scored.
    """

    def __init__(
        self,
        label: str,
        *,
        ids: np.ndarray | None = None,
        tokenizer: Tokenizer | None = None,
        texts: list[str] | None = None,
        max_tokens: int | None = None,
        mask: np.ndarray | None = None,
    ):
        if max_tokens is not None and max_tokens < 2:
            raise DataError(f"--max-tokens must be at least 2 (got {max_tokens})")
        if (ids is None) != (tokenizer is None) or (ids is None and texts is None):
            raise ValueError("EvalText needs ids with their tokenizer, or texts")
        self.label = label
        """What is scored, in words: 'data/demo (val)', or the text path."""
        self.max_tokens = max_tokens
        self.texts = texts
        self.ids = None if ids is None else np.asarray(ids[:max_tokens] if max_tokens else ids)
        self.tokenizer = tokenizer
        self.mask = None if mask is None else np.asarray(mask[:max_tokens] if max_tokens else mask)
        """The loss mask of `ids` (a dataset's), or None: every token is scored."""

    @classmethod
    def from_dataset(cls, path: str | Path, split: str = "val", max_tokens: int | None = None) -> EvalText:
        """A split (train or val) of a prepared dataset, or of a directory of shards (all of them, in order)."""
        dataset = open_dataset(path)
        if split not in ("train", "val"):
            raise DataError(f"--split must be train or val (got {split!r})")
        label = f"{path} ({split}{', answers only' if dataset.masked else ''})"
        return cls(label, ids=dataset.tokens(split), tokenizer=dataset.tokenizer(), max_tokens=max_tokens,
                   mask=dataset.mask(split))

    @classmethod
    def from_files(cls, path: str | Path, max_tokens: int | None = None) -> EvalText:
        """A UTF-8 text file, or every text file under a directory (see `read_texts`)."""
        return cls(str(path), texts=read_texts(path), max_tokens=max_tokens)

    @classmethod
    def open(
        cls, data: str | Path | None, text: str | Path | None, split: str = "val", max_tokens: int | None = None
    ) -> EvalText:
        """From exactly one of a dataset directory (`data`, with `split`) or text files (`text`)."""
        if (data is None) == (text is None):
            raise DataError("give exactly one of --data DATA_DIR (a prepared dataset) or --text FILE_OR_DIR")
        if data is not None:
            return cls.from_dataset(data, split, max_tokens)
        return cls.from_files(text, max_tokens)

    def mask_for(self, tokenizer: Tokenizer) -> np.ndarray | None:
        """The loss mask of `ids_for(tokenizer)` (None: every token is scored)."""
        return self.mask if self.mask is not None and self._same_tokenizer(tokenizer) else None

    def _same_tokenizer(self, tokenizer: Tokenizer) -> bool:
        return self.tokenizer is not None and self.tokenizer.backend.to_str() == tokenizer.backend.to_str()

    def ids_for(self, tokenizer: Tokenizer) -> np.ndarray:
        """The text in `tokenizer`'s ids (re-tokenized when it is not the dataset's tokenizer; a
        dataset with a loss mask is scored only with its own)."""
        if self.ids is not None and self._same_tokenizer(tokenizer):
            return self.ids
        if self.mask is not None:
            raise DataError(
                f"{self.label} is scored on its answers, marked for its own tokenizer, and this model has another: "
                "evaluate models fine-tuned on it, or pass --text"
            )
        if self.texts is None:
            self.texts = split_documents(self.tokenizer, self.ids)
        return encode_documents(tokenizer, self.texts, self.max_tokens)
