"""A corpus prepared in parts (prepare --shard I/N), opened as one dataset.

`prepare --shard I/N --out DIR` writes the part I of N (counted from 0) to DIR/shard-000I-of-000N, a
prepared dataset of its own (data/dataset.py) holding the documents whose text's fingerprint (the 64-bit
digest that deduplication uses) modulo N is I. Every copy of a text has the same fingerprint, so it
falls in one shard and deduplication there is exact; the train/validation split is the same keyed hash
as without shards, and so is every other decision (prepare.py). So the N shards hold exactly the
documents of the unsharded preparation, token for token, each shard its own in their order there.

`open_dataset(path)` is what `train` and `inspect` open: a prepared dataset directory as a
`PreparedDataset`, a directory of shards as a `MergedDataset`, once every shard is there and they
belong together (the same N, the same tokenizer, the same settings). A `MergedDataset` reads as one
dataset whose splits are its shards' splits one after another, in shard order (0, 1, ..., N-1):
`split_files` lists the shards' files, so `TokenWindows` reads windows across their boundaries as
if from one train.bin, and one `WindowSampler` samples over the total. Its `meta` sums the shards'
counts, and `splits.<split>.sha256` is a fingerprint (the sha256 of the shards' checksums, in
order), so a run resumed on a changed or re-prepared shard is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.data.dataset import SHARD_NAME, SPLITS, PreparedDataset, shard_dir_name, shard_dirs
from gpt2es_cli.errors import DataError
from gpt2es_cli.tokenizer import Tokenizer

__all__ = ["MergedDataset", "is_shard_set", "open_dataset", "shard_of", "shard_set_state"]

STREAM_COUNTS = ("undecodable_bytes", "skipped_records", "long_documents_split")
"""Hygiene counts of what was read (not of documents): every shard reads the whole source, so each
shard's are the whole corpus's."""
PER_RUN = ("out", "force", "num_proc", "shard", "gpt2_tokenizer", "tokenizer", "tokenizer_revision")
"""prepare settings that may differ between the shards of one corpus (the tokenizer is compared by
its content instead)."""


def shard_of(digests: np.ndarray, count: int) -> np.ndarray:
    """Which of `count` shards each document belongs to, from its text's 64-bit fingerprint (data/clean.py's
    `digest`): the fingerprint modulo count."""
    return (np.asarray(digests, dtype=np.uint64) % np.uint64(count)).astype(np.int64)


def is_shard_set(path: str | Path) -> bool:
    """Whether `path` is a directory of shards (shard-000I-of-000N) rather than one dataset."""
    path = Path(path)
    return not (path / "meta.json").is_file() and bool(shard_dirs(path))


@dataclass
class ShardSetState:
    """What a directory of shards holds so far: for `prepare` to say what is left."""

    count: int
    present: list[int]
    missing: list[int]


def shard_set_state(path: Path, count: int) -> ShardSetState:
    """Which of the `count` shards under `path` are there (finished) and which are not yet."""
    present = sorted(i for i, n in map(_parse_name, shard_dirs(path)) if n == count)
    return ShardSetState(count, present, sorted(set(range(count)) - set(present)))


@dataclass
class MergedDataset:
    """Prepared datasets (a corpus's shards) read as one: the same interface as PreparedDataset for
    `train`, evaluation and `inspect` (see the module docstring)."""

    path: Path
    parts: list[PreparedDataset]
    meta: dict[str, Any]

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def vocab_size(self) -> int:
        return self.parts[0].vocab_size

    @property
    def masked(self) -> bool:
        return self.parts[0].masked

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"])

    def scored_tokens(self, split: str) -> int:
        return sum(p.scored_tokens(split) for p in self.parts)

    def split_files(self, split: str) -> list[tuple[Path, Path | None, int]]:
        """Every shard's token file, mask file (None without one) and tokens, in shard order."""
        return [entry for p in self.parts for entry in p.split_files(split)]

    def label(self, split: str) -> str:
        """Where a split is, for messages: "data/oscar's train split (8 shards)"."""
        return f"{self.path}'s {split} split ({len(self.parts)} shards)"

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids, every shard's in order (read into memory: for evaluation's val split)."""
        return np.concatenate([p.tokens(split) for p in self.parts]) if self.parts else np.zeros(0, self.dtype)

    def mask(self, split: str) -> np.ndarray | None:
        """The split's loss mask, every shard's in order (None when every token is scored)."""
        return np.concatenate([p.mask(split) for p in self.parts]) if self.masked else None

    def tokenizer(self) -> Tokenizer:
        return self.parts[0].tokenizer()

    def verify(self) -> list[str]:
        """Each shard's checksums recomputed: the files that differ from their meta.json, as
        'shard-0003-of-0008/train' (and '.../train.mask')."""
        return [f"{p.path.name}/{bad}" for p in self.parts for bad in p.verify()]


def open_dataset(path: str | Path) -> PreparedDataset | MergedDataset:
    """A prepared dataset directory, or a directory of shards (checked to be complete and to belong
    together) as one dataset; each problem is a one-line DataError saying what to do."""
    path = Path(path)
    if not is_shard_set(path):
        return PreparedDataset.open(path)  # its own errors: missing, not a dataset, damaged
    return _open_shards(path, shard_dirs(path))


def _parse_name(directory: Path) -> tuple[int, int]:
    m = SHARD_NAME.fullmatch(directory.name)
    assert m is not None
    return int(m.group(1)), int(m.group(2))


def _open_shards(path: Path, dirs: list[Path]) -> MergedDataset:
    named = [(d, *_parse_name(d)) for d in dirs]
    counts = sorted({n for _, _, n in named})
    if len(counts) > 1:
        examples = ", ".join(next(d.name for d, _, n in named if n == c) for c in counts)
        raise DataError(
            f"{path} holds shards of {' and of '.join(map(str, counts))} parts ({examples}): one corpus is split "
            "one way; delete the shards of the other split, or prepare into another --out"
        )
    count = counts[0]
    present = {i for _, i, _ in named}
    missing = sorted(set(range(count)) - present)
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        writing = [i for i in missing if any(path.glob(f".{shard_dir_name(i, count)}.*.tmp"))]
        note = f"; {', '.join(map(str, writing[:8]))} still being written" if writing else ""
        raise DataError(
            f"{path} has {len(present)} of its {count} shards: {shown} {'is' if len(missing) == 1 else 'are'} "
            f"missing{note}; prepare {'it' if len(missing) == 1 else 'them'} with gpt2es prepare ... "
            f"--shard {missing[0]}/{count} --out {path} (the same settings and --tokenizer)"
        )
    ordered = [d for d, _, _ in sorted(named, key=lambda t: t[1])]
    parts = [PreparedDataset.open(d) for d in ordered]
    first = parts[0]
    reference = _tokenizer_sha256(first)
    for i, part in enumerate(parts):
        record = part.meta.get("shard") or {}
        if record.get("index") != i or record.get("count") != count:
            said = f"part {record.get('index')} of {record.get('count')}" if record else "no shard at all"
            raise DataError(
                f"{part.path} is named shard {i} of {count} but its meta.json says {said}: put the shards back "
                "under their own names, or prepare it again with --shard"
            )
        if _tokenizer_sha256(part) != reference:
            raise DataError(
                f"{part.path} was tokenized with another tokenizer than {first.path} (their tokenizer.json differ): "
                "prepare it again with the same --tokenizer as the others"
            )
        if part.masked != first.masked or part.dtype != first.dtype:
            raise DataError(f"{part.path} is another kind of dataset than {first.path}: prepare it again like the others")
        if i:
            _same_settings(first, part)
    return MergedDataset(path, parts, _merged_meta(path, parts))


def _tokenizer_sha256(dataset: PreparedDataset) -> str:
    return hashlib.sha256((dataset.path / "tokenizer.json").read_bytes()).hexdigest()


def _same_settings(first: PreparedDataset, other: PreparedDataset) -> None:
    """Refuse a shard prepared from another source or with other settings than shard 0."""
    a, b = (
        {k: v for k, v in (d.meta.get("arguments") or {}).items() if k not in PER_RUN} for d in (first, other)
    )
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            option = "--" + key.replace("_", "-")
            raise DataError(
                f"{other.path} was prepared with other settings than {first.path} ({option} {b.get(key)!r} against "
                f"{a.get(key)!r}): prepare it again with the same ones"
            )


def _fingerprint(values: Sequence[str]) -> str:
    """One checksum of several (a single one is itself: a corpus in one shard reads as that shard)."""
    if len(values) == 1:
        return values[0]
    return hashlib.sha256("\n".join(values).encode()).hexdigest()


def _merged_meta(path: Path, parts: list[PreparedDataset]) -> dict[str, Any]:
    """A meta.json for the whole: the first shard's description, the shards' counts summed."""
    first = parts[0].meta
    meta: dict[str, Any] = {
        k: first[k]
        for k in ("format", "format_version", "gpt2es_version", "dtype", "vocab_size", "eos_id", "loss_mask",
                  "tokenizer", "seed", "val_fraction")
        if k in first
    }
    meta["created"] = max(str(p.meta.get("created", "")) for p in parts)
    splits = {}
    for split in SPLITS:
        entries = [p.meta["splits"][split] for p in parts]
        merged: dict[str, Any] = {k: sum(int(e.get(k, 0)) for e in entries) for k in ("documents", "bytes", "tokens")}
        merged["sha256"] = _fingerprint([e["sha256"] for e in entries])
        if "loss_mask" in first:
            merged["scored_tokens"] = sum(int(e.get("scored_tokens", 0)) for e in entries)
            merged["mask_sha256"] = _fingerprint([str(e.get("mask_sha256")) for e in entries])
        splits[split] = merged
    meta["splits"] = splits
    hygiene = [p.meta.get("hygiene") for p in parts]
    if all(hygiene):
        meta["hygiene"] = {
            k: (hygiene[0][k] if k in STREAM_COUNTS else sum(h.get(k, 0) for h in hygiene)) for k in hygiene[0]
        }
    if "source" in first:
        meta["source"] = _merged_source(parts)
    if "arguments" in first:
        meta["arguments"] = {k: v for k, v in first["arguments"].items() if k not in ("shard", "out", "force")}
    meta["shards"] = {
        "count": len(parts),
        "path": str(path),
        "parts": [
            {"name": p.path.name,
             "splits": {s: {k: p.meta["splits"][s][k] for k in ("documents", "bytes", "tokens")} for s in SPLITS}}
            for p in parts
        ],
    }
    return meta


def _merged_source(parts: list[PreparedDataset]) -> Any:
    """The source as the first shard describes it (every shard read all of it); for a mixture, what was
    written from each source summed over the shards."""
    import copy

    source = copy.deepcopy(parts[0].meta["source"])
    if not isinstance(source, dict) or source.get("kind") != "mixture":
        return source
    for i, entry in enumerate(source.get("parts", [])):
        written: dict[str, dict[str, int]] = {}
        for p in parts:
            theirs = p.meta["source"]["parts"][i].get("written", {})
            for split, counts in theirs.items():
                mine = written.setdefault(split, {})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0) + v
        entry["written"] = written
    return source
