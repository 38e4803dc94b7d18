"""The prepared-dataset format: what `prepare` writes and what `train`, `eval`, `inspect` read.

A prepared dataset is a directory:

    train.bin, val.bin   flat token ids, little-endian uint16 (vocab <= 65536) or uint32,
                         an <|endoftext|> after each document
    tokenizer.json       the tokenizer that made the ids (tokenizers library JSON), and
                         chat_template.jinja beside it when the tokenizer has a chat template
    meta.json            format, format_version, gpt2es_version, created, dtype, vocab_size,
                         eos_id, splits{train,val: documents, bytes, tokens, sha256},
                         plus whatever the writer adds (source, args, hygiene counts, ...)

An instruction dataset (prepare --format instructions, format_version 2) also has a loss mask:

    train.mask.bin, val.mask.bin   one uint8 per token: 1 when the token is scored as a target
                                   (an answer's), 0 when it is only read (prompts, markers)
    meta.json                      loss_mask {dtype, scores}, and per split scored_tokens, mask_sha256

It is written by `DatasetWriter` into a temporary sibling directory and renamed into place at
the end, so an interrupted run leaves no half-written dataset behind.

A corpus prepared in N parts (prepare --shard I/N) is a directory of N such datasets, named
`shard-000I-of-000N` (I from 0), each with `shard {index, count}` in its meta.json; data/shards.py
opens them as one dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
FORMAT_VERSION = 2
"""The newest layout this reads: 1, token files only; 2, with a loss mask (written only for a masked dataset,
so a dataset without one still opens in versions that read 1)."""
MASK_DTYPE = np.dtype("uint8")
SAMPLE_TOKENS = 1 << 18
"""Tokens read from each of three places of a split when a dataset is opened, to check its ids."""
SPLITS = ("train", "val")
SHARD_NAME = re.compile(r"shard-(\d{4,})-of-(\d{4,})")
"""The name of one part of a corpus prepared with --shard I/N: shard-000I-of-000N."""


def shard_dir_name(index: int, count: int) -> str:
    """'shard-0003-of-0008' for part 3 (counted from 0) of 8."""
    return f"shard-{index:04d}-of-{count:04d}"


def shard_dirs(path: Path) -> list[Path]:
    """The shard directories right inside `path` (shard-000I-of-000N), sorted by name; [] when none."""
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_dir() and SHARD_NAME.fullmatch(p.name))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class _SplitFile:
    def __init__(self, path: Path, dtype: np.dtype, masked: bool = False):
        self.file = open(path, "wb")
        self.mask_file = open(path.with_suffix(".mask.bin"), "wb") if masked else None
        self.dtype = dtype
        self.sha256 = hashlib.sha256()
        self.mask_sha256 = hashlib.sha256()
        self.documents = 0
        self.tokens = 0
        self.bytes = 0
        self.scored = 0
        self.last_id: int | None = None
        """The last token id written (None before any)."""

    def write(self, ids: np.ndarray, documents: int, nbytes: int, mask: np.ndarray | None = None) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        if self.mask_file is not None:
            if mask is None or len(mask) != len(ids):
                raise ValueError("a masked dataset needs one mask value per token written")
            flags = np.ascontiguousarray(mask, dtype=MASK_DTYPE)
            self.mask_file.write(flags.tobytes())
            self.mask_sha256.update(flags.tobytes())
            self.scored += int(flags.astype(bool).sum())
        self.documents += documents
        self.tokens += len(ids)
        self.bytes += nbytes
        if len(ids):
            self.last_id = int(ids[-1])

    def close(self) -> None:
        for f in (self.file, self.mask_file):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()

    def stats(self) -> dict[str, Any]:
        found: dict[str, Any] = {"documents": self.documents, "bytes": self.bytes, "tokens": self.tokens,
                                 "sha256": self.sha256.hexdigest()}
        if self.mask_file is not None:
            found |= {"scored_tokens": self.scored, "mask_sha256": self.mask_sha256.hexdigest()}
        return found


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

    def __init__(self, out_dir: str | Path, tokenizer: Tokenizer, force: bool = False, masked: bool = False):
        self.out_dir = Path(out_dir)
        check_output_dir(self.out_dir, force)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.force = force
        self.masked = masked
        """With a loss mask: every write gives one mask value per token (see the module docstring)."""
        self.tmp = temp_dir_for(self.out_dir)  # a killed prepare's temp directory goes first
        self.splits = {s: _SplitFile(self.tmp / f"{s}.bin", self.dtype, masked) for s in SPLITS}
        self.done = False

    def write(self, split: str, ids: np.ndarray | list[int], documents: int = 1, nbytes: int = 0,
              mask: np.ndarray | None = None) -> None:
        """Append ids (already ending in <|endoftext|> per document) to a split; with a loss mask,
        `mask` holds one value per id (1: scored)."""
        self.splits[split].write(np.asarray(ids), documents, nbytes, mask)

    def split_stats(self) -> dict[str, dict[str, Any]]:
        return {s: f.stats() for s, f in self.splits.items()}

    def finish(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write tokenizer.json and meta.json, then move the dataset into place. Returns meta."""
        for f in self.splits.values():
            f.close()
        full = {
            "format": FORMAT,
            "format_version": 2 if self.masked else 1,
            "gpt2es_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "dtype": self.dtype.name,
            "vocab_size": self.tokenizer.vocab_size,
            "eos_id": self.tokenizer.eos_id,
            "splits": self.split_stats(),
            **({"loss_mask": {"dtype": MASK_DTYPE.name, "scores": "answers"}} if self.masked else {}),
            **(meta or {}),
        }
        self.tokenizer.save(self.tmp / "tokenizer.json")
        (self.tmp / "meta.json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        replace_dir(self.tmp, self.out_dir)
        self.done = True
        return full

    def abort(self) -> None:
        for f in self.splits.values():
            for file in (f.file, f.mask_file):
                if file is not None and not file.closed:
                    file.close()
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
            shards = shard_dirs(path)
            if shards:
                raise DataError(
                    f"{path} holds the shards of a dataset ({shards[0].name}, ...), not one dataset: pass one shard, "
                    f"e.g. {shards[0]}, or train on them all with gpt2es train -d {path}"
                )
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
            mask = path / f"{split}.mask.bin"
            if "loss_mask" not in meta:
                continue
            if not mask.is_file():
                problems.append(f"{mask.name} is missing")
            elif mask.stat().st_size != meta["splits"][split]["tokens"] * MASK_DTYPE.itemsize:
                problems.append(f"{mask.name} has {mask.stat().st_size} bytes for {meta['splits'][split]['tokens']} tokens")
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

    def split_files(self, split: str) -> list[tuple[Path, Path | None, int]]:
        """The split's token file, its loss mask file (None without one) and its tokens: one entry here,
        one per shard for a dataset of shards (data/shards.py), so readers take either alike."""
        return [(self.path / f"{split}.bin", self.mask_path(split), self.num_tokens(split))]

    def label(self, split: str) -> str:
        """Where a split is, for messages: data/demo/train.bin."""
        return str(self.path / f"{split}.bin")

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids as a read-only memory map (empty array for an empty split)."""
        if self.num_tokens(split) == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path / f"{split}.bin", dtype=self.dtype, mode="r")

    @property
    def masked(self) -> bool:
        """Whether only some tokens are scored (an instruction dataset: its answers)."""
        return "loss_mask" in self.meta

    def mask_path(self, split: str) -> Path | None:
        """The split's loss mask file (one uint8 per token, 1: scored), or None when every token is scored."""
        return self.path / f"{split}.mask.bin" if self.masked else None

    def mask(self, split: str) -> np.ndarray | None:
        """The split's loss mask as a read-only memory map (None when every token is scored)."""
        if not self.masked:
            return None
        if self.num_tokens(split) == 0:
            return np.zeros(0, dtype=MASK_DTYPE)
        return np.memmap(self.path / f"{split}.mask.bin", dtype=MASK_DTYPE, mode="r")

    def scored_tokens(self, split: str) -> int:
        """Tokens of the split scored as targets (all of them without a loss mask)."""
        entry = self.meta["splits"][split]
        return int(entry["scored_tokens"]) if self.masked else int(entry["tokens"])

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_path(self.path / "tokenizer.json")

    def verify(self) -> list[str]:
        """Recompute checksums; return the splits whose sha256 differs from meta.json ('train.mask'
        and 'val.mask' for loss masks)."""
        files = [(split, f"{split}.bin", "sha256") for split in SPLITS]
        if self.masked:
            files += [(f"{split}.mask", f"{split}.mask.bin", "mask_sha256") for split in SPLITS]
        bad = []
        for name, file, key in files:
            h = hashlib.sha256()
            with open(self.path / file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            split = name.split(".")[0]
            if h.hexdigest() != self.meta["splits"][split].get(key):
                bad.append(name)
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
        scored = entry.get("scored_tokens")
        if "loss_mask" in meta and (not isinstance(scored, int) or isinstance(scored, bool) or scored < 0):
            problems.append(f"splits.{split}.scored_tokens {scored!r} is not a whole number >= 0")
    return problems
