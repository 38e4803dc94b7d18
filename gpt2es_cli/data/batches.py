"""Training windows read from a prepared dataset's token files, never loaded whole.

A split of N tokens is cut into windows of seq_len + 1 tokens (inputs and targets shifted by
one). Each epoch visits every window once in a shuffled order; from the second epoch on, the
grid of windows is shifted by a seeded offset so the model sees other boundaries.

The shuffle is a keyed Feistel permutation computed index by index, so the sampler holds no
array that grows with the dataset: memory stays constant from a 1 MB to a 1 TB train.bin, and
its whole state is two integers (epoch, position), which makes resuming exact.

A dataset with a loss mask (instruction tuning) is packed the same way: a window holds several
examples, each starting with <|endoftext|> as documents do, and wherever the windows cut, each
target keeps its own mask value; a target that is not scored is set to `IGNORE_INDEX`, which the
loss skips, so only the answers are learned and counted.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from gpt2es_cli.data.dataset import MASK_DTYPE, PreparedDataset
from gpt2es_cli.errors import DataError
from gpt2es_cli.loss import IGNORE_INDEX

if TYPE_CHECKING:
    from gpt2es_cli.data.shards import MergedDataset

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-scrambling hash of uint64 values (wraps mod 2^64)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _key(*parts: int) -> int:
    """A 64-bit key from integers (seed, epoch, round, ...)."""
    h = np.zeros(1, dtype=np.uint64)
    for p in parts:
        with np.errstate(over="ignore"):
            h = _mix(h ^ np.uint64(p & 0xFFFFFFFFFFFFFFFF)) + np.uint64(0x9E3779B97F4A7C15)
    return int(h[0])


def feistel_permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A pseudo-random permutation of range(n) applied to `index`, without storing it.

    A balanced Feistel network over the smallest even number of bits covering n is a bijection
    on that power-of-two domain; values that land at or above n are encrypted again (cycle
    walking) until they fall inside, which keeps it a bijection on range(n).
    """
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    low = np.uint64((1 << (bits // 2)) - 1)
    keys = [np.uint64(_key(key, r)) for r in range(rounds)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & low
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & low)
        return (left << half) | right

    out = encrypt(np.asarray(index, dtype=np.uint64))
    outside = out >= np.uint64(n)
    while outside.any():  # expected fewer than 4 passes: the domain is < 4n
        out[outside] = encrypt(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)


class WindowSampler:
    """The order in which training windows are visited: deterministic under a seed, resumable.

    `take(count)` returns the start offsets of the next `count` windows and advances. Every
    process of a distributed run holds the same sampler and takes the same starts, then reads
    only its own share of them.
    """

    def __init__(self, num_tokens: int, seq_len: int, seed: int):
        if num_tokens < seq_len + 1:
            raise DataError(
                f"the split has {num_tokens} tokens, fewer than one window of --seq-len {seq_len} + 1: "
                "lower --seq-len or prepare more text"
            )
        self.num_tokens = num_tokens
        self.seq_len = seq_len
        self.seed = seed
        self.epoch = 0
        self.position = 0
        """Windows of the current epoch already taken."""

    def epoch_offset(self, epoch: int) -> int:
        """Where the grid of windows starts in this epoch: 0 first, then a seeded shift."""
        if epoch == 0:
            return 0
        offset = _key(self.seed, epoch, 0x0FF5E7) % self.seq_len
        return offset if self.num_tokens - 1 - offset >= self.seq_len else 0

    def windows_in_epoch(self, epoch: int) -> int:
        return (self.num_tokens - 1 - self.epoch_offset(epoch)) // self.seq_len

    def take(self, count: int) -> np.ndarray:
        """Start offsets (int64) of the next `count` windows, crossing epochs as needed."""
        starts = []
        while count > 0:
            n = self.windows_in_epoch(self.epoch)
            chunk = min(count, n - self.position)
            index = np.arange(self.position, self.position + chunk, dtype=np.int64)
            index = feistel_permute(index, n, _key(self.seed, self.epoch))
            starts.append(self.epoch_offset(self.epoch) + index * self.seq_len)
            self.position += chunk
            count -= chunk
            if self.position == n:
                self.epoch += 1
                self.position = 0
        return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seq_len": self.seq_len, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seq_len"] != self.seq_len or state["seed"] != self.seed:
            raise DataError(
                f"the saved data position is for --seq-len {state['seq_len']} and --seed {state['seed']}, "
                f"not {self.seq_len} and {self.seed}: resume with the run's settings"
            )
        if state["position"] > self.windows_in_epoch(state["epoch"]):
            raise DataError("the saved data position is past the end of train.bin: is this the run's dataset?")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def fixed_windows(num_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """Start offsets of up to `count` non-overlapping windows spread evenly over a split.

    The same every time: validation loss is measured on exactly these windows at each eval.
    """
    n = (num_tokens - 1) // seq_len
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    picks = np.unique(np.linspace(0, n - 1, num=min(count, n)).round().astype(np.int64))
    return picks * seq_len


class TokenWindows:
    """Reads windows of seq_len + 1 tokens from a split's token file into (inputs, targets).

    Each window is one positional read into a buffer, so the file is never loaded and memory
    stays flat however large it is. (A memory map would do the reading too, but the pages it
    touches stay mapped and count towards the process's RSS: with large readahead, each random
    window maps megabytes, and a long run ends up with much of the file in its RSS.) With a loss
    mask (`mask_path`), the same window of the mask is read beside it and the targets it does not
    score become IGNORE_INDEX.

    A split in several files (a corpus prepared in shards: data/shards.py) is read as the files one
    after another: a window that crosses from one into the next is read from both.
    """

    def __init__(self, path: str | Path | Sequence[tuple[Path, Path | None]], dtype: np.dtype | str, seq_len: int,
                 mask_path: str | Path | None = None):
        """`path`: a token file (with `mask_path`, its loss mask), or a list of (token file, mask file or None)."""
        files = [(Path(path), None if mask_path is None else Path(mask_path))] if isinstance(path, (str, Path)) else [
            (Path(p), None if m is None else Path(m)) for p, m in path]
        self.dtype = np.dtype(dtype)
        self.seq_len = seq_len
        self.path, self.mask_path = files[0]
        self._parts: list[_Part] = []
        offset = 0
        try:
            for token_path, mask in files:
                tokens = token_path.stat().st_size // self.dtype.itemsize
                part = _Part(token_path, offset, tokens, open(token_path, "rb", buffering=0),  # closed by close()
                             mask, None if mask is None else open(mask, "rb", buffering=0))
                self._parts.append(part)
                offset += tokens
        except BaseException:
            self.close()
            raise
        if len({p.mask is None for p in self._parts}) > 1:
            self.close()
            raise DataError("some of the split's files have a loss mask and some do not: prepare them alike")
        self.num_tokens = offset
        self._starts = [p.start for p in self._parts]

    @classmethod
    def open(cls, dataset: PreparedDataset | MergedDataset, split: str, seq_len: int) -> TokenWindows:
        files = dataset.split_files(split)
        nonempty = [(p, m) for p, m, n in files if n > 0] or [(p, m) for p, m, _ in files[:1]]
        return cls(nonempty, dataset.dtype, seq_len)

    @property
    def masked(self) -> bool:
        """Whether some targets are not scored (IGNORE_INDEX in `batch`'s targets)."""
        return self._parts[0].mask is not None

    def _read(self, mask: bool, dtype: np.dtype, starts: np.ndarray) -> np.ndarray:
        n = self.seq_len + 1
        rows = np.empty((len(starts), n), dtype=dtype)
        for i, start in enumerate(starts):
            if start < 0 or start + n > self.num_tokens:
                raise DataError(f"window at token {start} runs past the end of {self._name()}")
            k = bisect.bisect_right(self._starts, int(start)) - 1
            done = 0
            while done < n:  # one read, or one per file the window spans
                part = self._parts[k]
                offset = int(start) + done - part.start
                take = min(n - done, part.tokens - offset)
                if take > 0:
                    file, path = (part.mask, part.mask_path) if mask else (part.file, part.path)
                    file.seek(offset * dtype.itemsize)
                    if file.readinto(memoryview(rows[i, done : done + take]).cast("B")) != take * dtype.itemsize:
                        raise DataError(f"{path} was truncated while training: prepare the dataset again")
                    done += take
                k += 1
        return rows

    def _name(self) -> str:
        return str(self.path) if len(self._parts) == 1 else f"{self.path} and the {len(self._parts) - 1} files after it"

    def batch(self, starts: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets (B, seq_len) as int64 on `device`; targets not scored are IGNORE_INDEX."""
        rows = self._read(False, self.dtype, starts)
        data = torch.from_numpy(rows.astype(np.int64))
        x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()  # (B, T) each, targets shifted by one
        if self.masked:
            scored = self._read(True, MASK_DTYPE, starts)[:, 1:]  # (B, T): each target's flag
            y = y.masked_fill(torch.from_numpy(scored == 0), IGNORE_INDEX)  # out of place: y may be a view of x's rows
        device = torch.device(device)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    def close(self) -> None:
        for part in self._parts:
            part.file.close()
            if part.mask is not None:
                part.mask.close()


@dataclass
class _Part:
    """One token file of a split, at `start` tokens into it."""

    path: Path
    start: int
    tokens: int
    file: BinaryIO
    mask_path: Path | None
    mask: BinaryIO | None
