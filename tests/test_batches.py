"""The window sampler: shuffled, exact epochs, deterministic, resumable, constant memory."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2es_cli.data.batches import (
    TokenWindows,
    WindowSampler,
    feistel_permute,
    fixed_windows,
)
from gpt2es_cli.errors import DataError


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 255, 1000, 4097])
def test_feistel_permute_is_a_permutation(n):
    out = feistel_permute(np.arange(n), n, key=12345)
    assert sorted(out.tolist()) == list(range(n))


def test_feistel_permute_depends_on_key_and_shuffles():
    a = feistel_permute(np.arange(1000), 1000, key=1)
    b = feistel_permute(np.arange(1000), 1000, key=2)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.arange(1000))
    # Index by index gives the same as all at once (no hidden state).
    assert [int(feistel_permute(np.array([i]), 1000, key=1)[0]) for i in range(5)] == a[:5].tolist()


def test_one_epoch_visits_every_window_once():
    s = WindowSampler(num_tokens=1001, seq_len=10, seed=3)
    starts = s.take(100)
    assert sorted(starts.tolist()) == list(range(0, 1000, 10))
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["position"] == 0


def test_later_epochs_shift_the_window_grid_and_stay_in_bounds():
    s = WindowSampler(num_tokens=1000, seq_len=10, seed=5)
    s.take(s.windows_in_epoch(0))
    offsets = {s.epoch_offset(e) for e in range(1, 20)}
    assert offsets - {0}, "some later epoch should start at another offset"
    for _ in range(5):
        n = s.windows_in_epoch(s.epoch)
        starts = s.take(n)
        assert len(set(starts.tolist())) == n
        assert starts.min() >= 0 and starts.max() + 10 + 1 <= 1000


def test_order_is_deterministic_under_a_seed():
    a = WindowSampler(50_000, 64, seed=1).take(300)
    b = WindowSampler(50_000, 64, seed=1).take(300)
    c = WindowSampler(50_000, 64, seed=2).take(300)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resume_from_state_continues_exactly_across_epochs():
    whole = WindowSampler(5_000, 16, seed=7)
    expected = whole.take(1000)  # about three epochs
    first = WindowSampler(5_000, 16, seed=7)
    head = first.take(437)
    state = first.state_dict()
    second = WindowSampler(5_000, 16, seed=7)
    second.load_state_dict(state)
    assert np.array_equal(np.concatenate([head, second.take(563)]), expected)


def test_resume_state_for_other_windows_is_refused():
    state = WindowSampler(5_000, 16, seed=7).state_dict()
    with pytest.raises(DataError, match="--seq-len"):
        WindowSampler(5_000, 32, seed=7).load_state_dict(state)


def test_memory_does_not_depend_on_dataset_size():
    # A terabyte-sized split: taking windows is instant and the sampler holds only integers.
    s = WindowSampler(num_tokens=10**13, seq_len=1024, seed=0)
    starts = s.take(4096)
    assert len(np.unique(starts)) == 4096 and starts.max() < 10**13
    assert all(isinstance(v, (int, bool)) for v in vars(s).values())


def test_split_shorter_than_a_window_is_an_error():
    with pytest.raises(DataError, match="lower --seq-len"):
        WindowSampler(num_tokens=64, seq_len=64, seed=0)


def test_fixed_windows_are_spread_and_bounded():
    starts = fixed_windows(num_tokens=1001, seq_len=10, count=7)
    assert len(starts) == 7 and starts[0] == 0 and starts[-1] == 990
    assert np.array_equal(starts, fixed_windows(1001, 10, 7))
    assert len(fixed_windows(101, 10, 50)) == 10  # only 10 windows exist
    assert len(fixed_windows(5, 10, 3)) == 0


def test_token_windows_read_shifted_pairs_from_the_file(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    windows = TokenWindows(path, np.uint16, seq_len=8)
    x, y = windows.batch(np.array([0, 50, 91]))
    assert x.dtype == torch.int64 and x.shape == (3, 8)
    assert x[1].tolist() == list(range(50, 58))
    assert y[1].tolist() == list(range(51, 59))
    assert y[2].tolist()[-1] == 99
    with pytest.raises(DataError, match="past the end"):
        windows.batch(np.array([92]))
    windows.close()


def test_reading_windows_does_not_map_the_file_into_memory(tmp_path):
    # RSS must not grow with the dataset: reading windows all over a 64 MB file leaves no
    # file pages mapped in this process (a memory map would keep megabytes mapped per window).
    path = tmp_path / "train.bin"
    np.zeros(32 << 20, dtype=np.uint16).tofile(path)
    windows = TokenWindows(path, np.uint16, seq_len=64)
    windows.batch(np.random.default_rng(0).integers(0, (32 << 20) - 65, 2000))
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(path) not in maps.read_text()
    windows.close()


def test_token_windows_read_several_files_as_one(tmp_path):
    # A corpus in shards: windows that cross from one file into the next are read from both.
    files = []
    for i, (lo, hi) in enumerate(((0, 30), (30, 31), (31, 75))):
        path = tmp_path / f"{i}.bin"
        np.arange(lo, hi, dtype=np.uint16).tofile(path)
        files.append((path, None))
    (tmp_path / "empty.bin").write_bytes(b"")
    windows = TokenWindows([files[0], (tmp_path / "empty.bin", None), *files[1:]], np.uint16, seq_len=8)
    assert windows.num_tokens == 75
    starts = np.array([0, 25, 29, 30, 66])
    x, y = windows.batch(starts)
    for row, start in zip(x.tolist(), starts.tolist(), strict=True):
        assert row == list(range(start, start + 8))
    assert y[1].tolist() == list(range(26, 34))  # three files in one window
    with pytest.raises(DataError, match="past the end"):
        windows.batch(np.array([67]))
    windows.close()
