"""The prepared-dataset format: what `prepare` writes and what `train`, `eval`, `inspect` read.

A prepared dataset is a directory:

    train.bin, val.bin   flat token ids, little-endian uint16 (vocab <= 65536) or uint32,
                         an <|endoftext|> after each document
    tokenizer.json       the tokenizer that made the ids (tokenizers library JSON)
    meta.json            format, format_version, gpt2es_version, created, dtype, vocab_size,
                         eos_id, splits{train,val: documents, bytes, tokens, sha256},
                         plus whatever the writer adds (source, args, hygiene counts, ...)

It is written by `DatasetWriter` into a temporary sibling directory and renamed into place at
the end, so an interrupted run leaves no half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli import __version__
from gpt2es_cli.errors import DataError
from gpt2es_cli.fileio import read_json_object, replace_dir, temp_dir_for
from gpt2es_cli.tokenizer import Tokenizer

FORMAT = "gpt2es-dataset"
FORMAT_VERSION = 1
SAMPLE_TOKENS = 1 << 18
"""Tokens read from each of three places of a split when a dataset is opened, to check its ids."""
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class _SplitFile:
    def __init__(self, path: Path, dtype: np.dtype):
        self.file = open(path, "wb")
        self.dtype = dtype
        self.sha256 = hashlib.sha256()
        self.documents = 0
        self.tokens = 0
        self.bytes = 0

    def write(self, ids: np.ndarray, documents: int, nbytes: int) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.documents += documents
        self.tokens += len(ids)
        self.bytes += nbytes


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse an output path that is a file, or a non-empty directory without --force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output path {out_dir} is a file: choose a directory path with --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise DataError(f"{out_dir} already exists and is not empty: use --force to replace it")


class DatasetWriter:
    """Stream token ids of documents into a new prepared dataset, atomically.

    Use as a context manager: on success `finish()` renames the temp directory to `out_dir`;
    on any exception the temp directory is removed and `out_dir` is left as it was.
    """

    def __init__(self, out_dir: str | Path, tokenizer: Tokenizer, force: bool = False):
        self.out_dir = Path(out_dir)
        check_output_dir(self.out_dir, force)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.force = force
        self.tmp = temp_dir_for(self.out_dir)  # a killed prepare's temp directory goes first
        self.splits = {s: _SplitFile(self.tmp / f"{s}.bin", self.dtype) for s in SPLITS}
        self.done = False

    def write(self, split: str, ids: np.ndarray | list[int], documents: int = 1, nbytes: int = 0) -> None:
        """Append ids (already ending in <|endoftext|> per document) to a split."""
        self.splits[split].write(np.asarray(ids), documents, nbytes)

    def split_stats(self) -> dict[str, dict[str, Any]]:
        return {
            s: {"documents": f.documents, "bytes": f.bytes, "tokens": f.tokens, "sha256": f.sha256.hexdigest()}
            for s, f in self.splits.items()
        }

    def finish(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write tokenizer.json and meta.json, then move the dataset into place. Returns meta."""
        for f in self.splits.values():
            f.file.flush()
            os.fsync(f.file.fileno())
            f.file.close()
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "gpt2es_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dtype": self.dtype.name,
            "vocab_size": self.tokenizer.vocab_size,
            "eos_id": self.tokenizer.eos_id,
            "splits": self.split_stats(),
            **(meta or {}),
        }
        self.tokenizer.save(self.tmp / "tokenizer.json")
        (self.tmp / "meta.json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_dir(self.tmp, self.out_dir)
        self.done = True
        return full

    def abort(self) -> None:
        for f in self.splits.values():
            if not f.file.closed:
                f.file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.done:
            self.abort()


@dataclass
class PreparedDataset:
    """A prepared dataset directory, validated; token files are memory-mapped, never loaded."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> PreparedDataset:
        path = Path(path)
        if not path.exists():
            raise DataError(f"dataset directory {path} does not exist: run `gpt2es prepare --out {path}` first")
        if not path.is_dir():
            raise DataError(f"{path} is not a directory: pass the directory `gpt2es prepare` wrote")
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise DataError(f"{path} is not a prepared dataset (no meta.json): run `gpt2es prepare --out {path}`")
        meta = read_json_object(meta_file, DataError, "prepare the dataset again")
        if meta.get("format") != FORMAT:
            raise DataError(f"{path} is not a gpt2es dataset (meta.json has no format {FORMAT!r})")
        version = meta.get("format_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise DataError(f"{meta_file} is damaged (format_version {version!r} is not a number): prepare it again")
        if version > FORMAT_VERSION:
            raise DataError(f"{path} was prepared by a newer gpt2es: upgrade with pip install -U gpt2es")
        damaged = _meta_problems(meta)
        if damaged:
            raise DataError(f"{meta_file} is damaged ({'; '.join(damaged)}): prepare the dataset again")
        problems = []
        for split in SPLITS:
            f = path / f"{split}.bin"
            if not f.is_file():
                problems.append(f"{split}.bin is missing")
                continue
            expected = meta["splits"][split]["tokens"] * np.dtype(meta["dtype"]).itemsize
            if f.stat().st_size != expected:
                problems.append(f"{split}.bin has {f.stat().st_size} bytes, meta.json says {expected}")
        if not (path / "tokenizer.json").is_file():
            problems.append("tokenizer.json is missing")
        if problems:
            raise DataError(f"{path} is incomplete or damaged ({'; '.join(problems)}): prepare it again")
        dataset = cls(path, meta)
        for split in SPLITS:
            top = dataset.sampled_max_id(split)
            if top is not None and top >= dataset.vocab_size:
                raise DataError(
                    f"{path / (split + '.bin')} holds token id {top}, beyond the {dataset.vocab_size} ids of its "
                    "vocabulary: the file is damaged (gpt2es inspect --verify checks it all); prepare it again"
                )
        return dataset

    def sampled_max_id(self, split: str, chunk: int = SAMPLE_TOKENS) -> int | None:
        """The largest token id in the first, middle and last `chunk` tokens of a split (None if empty):
        a cheap check on open; `verify` reads everything."""
        n = self.num_tokens(split)
        if n == 0:
            return None
        tokens = self.tokens(split)
        starts = sorted({0, max(0, n // 2 - chunk // 2), max(0, n - chunk)})
        return int(max(int(tokens[s : s + chunk].max()) for s in starts))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memory map (empty array for an empty split)."""
        if self.num_tokens(split) == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_path(self.path / "tokenizer.json")

    def verify(self) -> list[str]:
        """Recompute checksums; return the splits whose sha256 differs from meta.json."""
        bad = []
        for split in SPLITS:
            h = hashlib.sha256()
            with open(self.path / f"{split}.bin", "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest() != self.meta["splits"][split]["sha256"]:
                bad.append(split)
        return bad


def _meta_problems(meta: dict) -> list[str]:
    """What a meta.json lacks or has wrong (empty when its keys and types are as `prepare` writes)."""
    problems = []
    try:
        if np.dtype(meta.get("dtype")) not in (np.dtype("uint16"), np.dtype("uint32")):
            problems.append(f"dtype {meta.get('dtype')!r} is not uint16 or uint32")
    except TypeError:
        problems.append(f"dtype {meta.get('dtype')!r} is not a numpy dtype")
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        problems.append(f"vocab_size {vocab!r} is not a positive whole number")
    splits = meta.get("splits")
    if not isinstance(splits, dict):
        return [*problems, "no 'splits' table"]
    for split in SPLITS:
        entry = splits.get(split)
        if not isinstance(entry, dict):
            problems.append(f"splits has no {split!r} entry")
            continue
        tokens = entry.get("tokens")
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            problems.append(f"splits.{split}.tokens {tokens!r} is not a whole number >= 0")
        if not isinstance(entry.get("sha256"), str):
            problems.append(f"splits.{split}.sha256 is missing")
    return problems
