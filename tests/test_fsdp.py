"""--parallel fsdp (FSDP2) with sharded checkpoints (torch.distributed.checkpoint), on the CPU with gloo.

Two processes under torchrun train like one process (Muon, activation checkpointing), killed while
writing a checkpoint resume exactly from the one before, and their checkpoint resumes on one process (resharded, or read whole with
no process group) and samples, evaluates and consolidates in one process. In one process fsdp is a
group of one: NaN rollbacks, a resume from a single-file checkpoint, and the run directory's
guarantees (a kill mid-save, --force) hold for sharded checkpoints.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import load_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.training import load_resume_checkpoint, plan_run, resume_config, train
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training.events import Recovery
from gpt2es_cli.training.rundir import RunDirectory

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available"),
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers in /proc (Linux)"),
    pytest.mark.usefixtures("one_thread"),
]
runner = CliRunner()
SETTINGS = dict(preset="tiny", batch_size=2, global_batch=4, max_steps=8, log_interval=1, eval_interval=4,
                eval_batches=3, sample_tokens=0, device="cpu", lr=3e-3, optimizer="muon", schedule="constant",
                warmup_steps=0)
"""A constant rate: a run planned for more steps trains its first ones alike."""


def losses(run_dir, kind="train"):
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    key = "loss" if kind == "train" else "val_loss"
    return {r["step"]: r[key] for r in map(json.loads, lines) if r["type"] == kind}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gpt2es_cli", "train"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}


def torchrun(tmp_path, *args):
    command = [*TORCHRUN, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=ENV, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


def kill_while_saving(tmp_path, *args):
    """Start a two-process run and SIGKILL both processes the moment a shard directory is being written
    (after two checkpoints); return the steps of the shards being written when they died (none: the
    kill came between two saves)."""
    run = tmp_path / str(args[args.index("--out") + 1])
    agent = subprocess.Popen([*TORCHRUN, *map(str, args)], env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and agent.poll() is None:
            if len(list(run.glob("step-*.pth"))) >= 2 and list(run.glob(".step-*.dcp.tmp")):
                workers = [int(pid) for task in Path(f"/proc/{agent.pid}/task").iterdir()
                           for pid in (task / "children").read_text().split()]
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                return [int(p.name[6:13]) for p in run.glob(".step-*.dcp.tmp")]  # .step-0000003.dcp.tmp
            time.sleep(0.001)
        pytest.fail("the run ended before a save could be interrupted")
    finally:
        agent.kill()
        agent.wait(timeout=60)


def options(settings):
    return [part for key, value in settings.items() for part in (f"--{key.replace('_', '-')}", value)]


def test_two_sharded_processes_train_resume_and_reshard_like_one(tmp_path, train_dataset):
    data = train_dataset
    one = tmp_path / "one"
    train(TrainConfig(data=str(data), out=str(one), **SETTINGS))

    # Two processes, sharded, every block recomputed in the backward pass, two accumulation passes a step
    # (each reduce-scattering into the shards): the same losses as one process.
    two = tmp_path / "two"
    accumulating = {**SETTINGS, "batch_size": 1, "eval_batches": 6}  # the same 6 validation windows
    started = torchrun(tmp_path, "--data", data, "--out", two, *options(accumulating), "--parallel", "fsdp",
             "--activation-checkpointing", "--save-interval", "4", "--keep-last", "2")
    assert "cpu x 2 processes sharded (FSDP), float32" in started.stdout
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses(two, "eval"), losses(one, "eval"), rtol=1e-5, atol=1e-6)

    # The layout: records beside their shard directories, best.pth a single file, nothing left over.
    names = sorted(p.name for p in two.iterdir())
    assert names == ["best.pth", "config.yaml", "last.pth", "loss.png", "metrics.jsonl",
                     "step-0000004.dcp", "step-0000004.pth", "step-0000008.dcp", "step-0000008.pth"]
    record = torch.load(two / "last.pth", weights_only=True)
    assert record["format_version"] == 2 and record["model"] == {} and record["shards"]["world_size"] == 2
    assert record["shards"]["directory"] == "step-0000008.dcp" and record["training"]["world_size"] == 2
    assert sorted(os.listdir(two / "step-0000008.dcp")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert "parallel: fsdp" in (two / "config.yaml").read_text()

    # Both processes killed (-9) while writing a checkpoint's shards: the previous checkpoint loads,
    # and resumed on as many processes the run trains exactly as the uninterrupted one.
    killed = tmp_path / "killed"
    writing = kill_while_saving(tmp_path, "--data", data, "--out", killed, *options(accumulating), "--parallel", "fsdp",
                                "--max-steps", 1000, "--save-interval", 1, "--keep-last", 2)
    saved_at = load_checkpoint(killed / "last.pth").training.step
    assert saved_at >= 2 and all(step == saved_at + 1 for step in writing)
    torchrun(tmp_path, "--resume", killed, "--max-steps", max(8, saved_at + 2))
    assert {step: loss for step, loss in losses(killed).items() if step <= 8} == losses(two)
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]

    # Resumed on one process: the shards resharded onto a group of one, or read whole without a group.
    for parallel in ("fsdp", "ddp"):
        checkpoint = load_resume_checkpoint(two / "step-0000004.pth")
        assert checkpoint.unread_shards is not None and checkpoint.model_state == {}
        out = tmp_path / f"alone-{parallel}"
        train(resume_config(checkpoint, {"out": str(out), "parallel": parallel}), resume=checkpoint)
        torch.testing.assert_close(losses(out), losses(two), rtol=1e-5, atol=1e-6)
        assert not torch.distributed.is_initialized()
    assert (tmp_path / "alone-fsdp" / "step-0000008.dcp").is_dir()
    assert torch.load(tmp_path / "alone-ddp" / "last.pth", weights_only=True)["format_version"] == 1

    # One process, no group: read whole, it samples, evaluates and consolidates into one file.
    whole = load_checkpoint(two / "last.pth")
    best = load_checkpoint(two / "best.pth")  # the lowest validation loss is the last step's
    assert whole.model_state.keys() == best.model_state.keys()
    for key, value in best.model_state.items():
        torch.testing.assert_close(whole.model_state[key], value, rtol=0, atol=0)
    assert "muon" in whole.training.optimizer and whole.training.step == 8
    sampled = runner.invoke(app, ["sample", str(two), "--max-new-tokens", "3", "--seed", "1"])
    assert sampled.exit_code == 0, sampled.output
    consolidated = tmp_path / "two.pth"
    done = runner.invoke(app, ["export", str(two), "--consolidate", str(consolidated)])
    assert done.exit_code == 0, done.output
    single = torch.load(consolidated, weights_only=True)
    assert single["format_version"] == 1 and "shards" not in single
    for key, value in whole.model_state.items():
        torch.testing.assert_close(single["model"][key], value, rtol=0, atol=0)
    evaluated = runner.invoke(app, ["eval", str(two / "last.pth"), str(consolidated), "--data", str(data), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    sharded_loss, single_loss = (r["loss"] for r in json.loads(evaluated.stdout)["results"])
    assert sharded_loss == single_loss
    shown = runner.invoke(app, ["inspect", str(two), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["sharded"]["world_size"] == 2


def test_one_sharded_process_rolls_back_resumes_a_single_file_and_keeps_the_run_directory_safe(
        tmp_path, train_dataset, nan_at, monkeypatch):
    data = train_dataset
    # --parallel auto on the CPU is a replica; --cpu-offload needs fsdp on a GPU.
    assert plan_run(tiny_run(data, tmp_path / "auto", parallel="auto")).config.parallel == "ddp"
    with pytest.raises(ConfigError, match="--cpu-offload offloads the shards"):
        tiny_run(data, tmp_path / "x", cpu_offload=True).validate()
    with pytest.raises(ConfigError, match="this run is on the CPU already"):
        plan_run(tiny_run(data, tmp_path / "x", parallel="fsdp", cpu_offload=True))

    # A single-file checkpoint (one process, a replica) resumed sharded: the whole optimizer state split.
    base = dict(max_steps=8, eval_interval=0, save_interval=4, keep_last=2, optimizer="muon", sample_tokens=0)
    whole = tmp_path / "whole"
    train(tiny_run(data, whole, **base))
    half = tmp_path / "half"
    checkpoint = load_resume_checkpoint(whole / "step-0000004.pth")
    train(resume_config(checkpoint, {"out": str(half), "parallel": "fsdp"}), resume=checkpoint)
    torch.testing.assert_close(losses(half), losses(whole), rtol=1e-5, atol=1e-6)

    # A non-finite loss rolls the sharded state back to the last save, at half the rate.
    nan_at(lambda n: n == 6)
    events = []
    nan_run = tmp_path / "nan"
    summary = train(tiny_run(data, nan_run, **{**base, "parallel": "fsdp"}), subscribers=[events.append])
    recoveries = [e for e in events if isinstance(e, Recovery)]
    assert len(recoveries) == 1 and recoveries[0].restored_step == 4 and summary.step == 8
    monkeypatch.undo()

    # A kill mid-save leaves shards being written and a directory whose record never came: the
    # previous checkpoint loads, and the next start cleans both away.
    shutil.copytree(nan_run / "step-0000008.dcp", nan_run / ".step-0000012.dcp.tmp")
    shutil.copytree(nan_run / "step-0000008.dcp", nan_run / "step-0000012.dcp")
    assert load_checkpoint(nan_run / "last.pth").training.step == 8
    RunDirectory.open(nan_run, continuing=True).commit()
    assert sorted(p.name for p in nan_run.iterdir() if "dcp" in p.name) == ["step-0000004.dcp", "step-0000008.dcp"]

    # --force over a sharded run that fails before its first save: every file comes back, shards too.
    before = sorted((p.relative_to(nan_run), p.stat().st_size) for p in nan_run.rglob("*") if p.is_file())

    def fail(model, x, y):
        raise RuntimeError("device lost")

    monkeypatch.setattr(loop_module, "compute_loss", fail)
    with pytest.raises(RuntimeError, match="device lost"):
        train(replace(tiny_run(data, nan_run, **{**base, "parallel": "fsdp"}), seed=7), force=True)
    after = sorted((p.relative_to(nan_run), p.stat().st_size) for p in nan_run.rglob("*") if p.is_file())
    assert after == before
    # A record whose shards are gone is a one-line error naming them.
    shutil.rmtree(nan_run / "step-0000008.dcp")
    with pytest.raises(Exception, match="missing or incomplete"):
        load_resume_checkpoint(nan_run)
