"""Data parallelism: 2 CPU processes under torchrun (gloo) train exactly like 1 process, with AdamW or Muon."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_dataset

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.training import train


def metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_processes_give_the_same_losses_as_one(tmp_path, tiny_tokenizer, spanish_texts, optimizer):
    data = make_dataset(tmp_path / "data", tiny_tokenizer, spanish_texts)
    settings = dict(preset="tiny", batch_size=2, global_batch=4, max_steps=6, log_interval=1, eval_interval=3,
                    eval_batches=3, sample_tokens=0, device="cpu", lr=3e-3, optimizer=optimizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # one process: 2 micro-batches of 2 accumulated per step
        train(TrainConfig(data=str(data), out=str(tmp_path / "one"), **settings))
    finally:
        torch.set_num_threads(threads)

    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gpt2es_cli", "train", "--data", str(data), "--out", str(tmp_path / "two")]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "x 2 processes" in done.stdout
    assert done.stdout.count("step 6/6") == 1  # only the main process reports
    assert "broadcast_buffers" not in done.stderr and "Warning" not in done.stderr, done.stderr[-2000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["type"] for r in two] == [r["type"] for r in one]  # written once, by the main process
    train_one = [r["loss"] for r in one if r["type"] == "train"]
    train_two = [r["loss"] for r in two if r["type"] == "train"]
    assert len(train_one) == 6
    torch.testing.assert_close(train_two, train_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        [r["val_loss"] for r in two if r["type"] == "eval"], [r["val_loss"] for r in one if r["type"] == "eval"],
        rtol=1e-5, atol=1e-6,
    )
    raw = torch.load(tmp_path / "two" / "last.pth", weights_only=True)
    assert raw["training"]["world_size"] == 2 and len(raw["training"]["rng"]) == 2
    assert ("muon" in raw["training"]["optimizer"]) == (optimizer == "muon")  # Muon with AdamW's state, or AdamW's
