"""A run killed (-9) at random points, some while a checkpoint's temp file exists, and resumed
each time, ends with the weights and the metrics of a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from gpt2es_cli.checkpoint import load_checkpoint

TIMING = ("elapsed", "tokens_per_second", "mfu", "eta")
"""Record fields that measure the machine, not the training."""
KILLS = 10
STEPS = 40


def gpt2es_train(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "gpt2es_cli", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def settings(dataset, out):
    return ["-d", str(dataset), "-o", str(out), "-p", "tiny", "-b", "2", "--global-batch", "4", "--dropout", "0.1",
            "--max-steps", str(STEPS), "--save-interval", "1", "--eval-interval", "10", "--eval-batches", "1",
            "--log-interval", "3", "--sample-tokens", "0", "--device", "cpu", "--lr", "3e-3"]


def records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def kill_soon(proc, run_dir, rng, during_save):
    """Kill -9 once training has started: at a random moment, or the moment a temp file of a save
    shows up. Returns whether the kill happened while such a temp file existed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        temps = list(run_dir.glob(".last.pth.*.tmp")) if run_dir.is_dir() else []
        if temps and (during_save or rng.random() < 0.05):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return bool(temps)
        if not during_save and (run_dir / "metrics.jsonl").exists() and rng.random() < 0.02:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return False
        time.sleep(0.002)
    proc.wait()
    return False


def test_random_kills_and_resumes_end_as_the_uninterrupted_run(train_dataset, tmp_path):
    whole = tmp_path / "whole"
    proc = gpt2es_train(*settings(train_dataset, whole))
    assert proc.wait() == 0, proc.stderr.read().decode()

    rng = random.Random(0)
    cut = tmp_path / "cut"
    kills = during_saves = 0
    finished = False
    for _attempt in range(4 * KILLS):
        resume = (cut / "last.pth").exists()
        args = ["--resume", str(cut)] if resume else settings(train_dataset, cut)
        proc = gpt2es_train(*args)
        if kills < KILLS:
            during_save = kills % 2 == 0
            during_saves += kill_soon(proc, cut, rng, during_save)
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                continue
        code = proc.wait()
        assert code == 0, proc.stderr.read().decode()
        checkpoint = load_checkpoint(cut / "last.pth")
        if checkpoint.training.step == STEPS:
            finished = True
            break
    assert finished and kills == KILLS and during_saves >= 3
    assert not list(cut.glob(".*.tmp"))  # the next start cleaned what the kills left

    a, b = load_checkpoint(whole / "last.pth"), load_checkpoint(cut / "last.pth")
    for key, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[key], value, rtol=1e-6, atol=1e-7)
    got, want = records(cut), records(whole)
    assert [r["type"] for r in got] == [r["type"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in w:
            if isinstance(w[key], float):
                assert g[key] == pytest.approx(w[key], rel=1e-6, abs=1e-7), (w, key)
            else:
                assert g[key] == w[key], (w, key)
