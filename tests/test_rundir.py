"""A run directory is never damaged by a run that fails: --force replaces only once the new run
has saved, a resume that never makes a good step leaves every file as it was, a failed new run
leaves nothing behind, and stale temp files of a killed save are cleaned on the next start."""

import hashlib
import math
import os

import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.training import load_resume_checkpoint, resume_config, train
from gpt2es_cli.training import loop as loop_module
from gpt2es_cli.training.rundir import ASIDE, MOVED_MARK, RunDirectory, run_files

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def snapshot(directory):
    """Every file under `directory` (hidden ones included) and its sha256."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def finished_run(train_dataset, tmp_path):
    out = tmp_path / "run"
    train(tiny_run(train_dataset, out, max_steps=4, eval_interval=2, save_interval=2, keep_last=2))
    return out


@pytest.fixture
def failing_step(monkeypatch):
    """Training passes that raise (a bug, a device error) from the first step on."""
    def fail(model, x, y):
        raise RuntimeError("device lost")

    monkeypatch.setattr(loop_module, "compute_loss", fail)


@pytest.fixture
def nan_loss(monkeypatch):
    """Training passes whose loss is NaN (a bad setting diverging at once)."""
    real = loop_module.compute_loss

    def nan(model, x, y):
        return real(model, x, y) * math.nan

    monkeypatch.setattr(loop_module, "compute_loss", nan)


def test_force_keeps_the_old_run_when_the_new_one_fails_before_saving(train_dataset, finished_run, failing_step):
    before = snapshot(finished_run)
    with pytest.raises(RuntimeError):
        train(tiny_run(train_dataset, finished_run, max_steps=4), force=True)
    assert snapshot(finished_run) == before  # every file as it was, nothing set aside left over


def test_force_replaces_the_old_run_once_the_new_one_has_saved(train_dataset, finished_run):
    before = snapshot(finished_run)
    train(tiny_run(train_dataset, finished_run, max_steps=3, seed=7, eval_interval=0), force=True)
    after = snapshot(finished_run)
    assert after["last.pth"] != before["last.pth"]
    assert not any(name.startswith(ASIDE) for name in after)
    assert "best.pth" not in after and not any(n.startswith("step-") for n in after)  # the old run's files went


def test_a_resume_that_never_makes_a_good_step_changes_nothing(finished_run, nan_loss):
    before = snapshot(finished_run)
    checkpoint = load_resume_checkpoint(finished_run)
    summary = train(resume_config(checkpoint, {"max_steps": 8, "lr": 5.0}), resume=checkpoint)
    assert summary.stop_reason == "diverged" and summary.step == 4
    assert snapshot(finished_run) == before  # last.pth, config.yaml, metrics.jsonl, loss.png, best.pth


def test_a_plain_resume_after_a_diverged_one_trains_on(finished_run, monkeypatch):
    real = loop_module.compute_loss
    monkeypatch.setattr(loop_module, "compute_loss", lambda m, x, y: real(m, x, y) * math.nan)
    checkpoint = load_resume_checkpoint(finished_run)
    train(resume_config(checkpoint, {"max_steps": 8, "lr": 5.0}), resume=checkpoint)
    monkeypatch.setattr(loop_module, "compute_loss", real)
    checkpoint = load_resume_checkpoint(finished_run)
    assert checkpoint.training.config["lr"] == 3e-3 and checkpoint.training.lr_scale == 1.0
    summary = train(resume_config(checkpoint, {"max_steps": 6}), resume=checkpoint)
    assert summary.stop_reason == "max_steps" and summary.step == 6


def test_a_new_run_that_diverges_at_once_leaves_nothing_and_blocks_nothing(train_dataset, tmp_path, nan_loss):
    out = tmp_path / "new"
    summary = train(tiny_run(train_dataset, out, max_steps=4))
    assert summary.stop_reason == "diverged" and summary.last_checkpoint is None
    assert snapshot(out) == {}
    assert run_files(out) == []


def test_the_cli_says_a_new_run_diverged_before_saving(train_dataset, tmp_path, nan_loss):
    out = tmp_path / "new"
    result = runner.invoke(app, ["train", "-d", str(train_dataset), "-o", str(out), "-p", "tiny", "-b", "2",
                                 "--max-steps", "3", "--device", "cpu", "--sample-tokens", "0"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "before its first good step" in errors[0] and "--lr" in errors[0]
    assert "Traceback" not in result.output


def test_leftovers_of_a_run_that_never_saved_do_not_block_a_restart(train_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("lr: 1\n")
    (out / "metrics.jsonl").write_text('{"type": "train"}\n')
    assert run_files(out) == []
    train(tiny_run(train_dataset, out, max_steps=2, eval_interval=0))  # no --force needed
    assert (out / "last.pth").exists() and "lr: 1" not in (out / "config.yaml").read_text()


def test_stale_temp_files_of_a_killed_save_are_cleaned_on_the_next_start(finished_run):
    stale = [finished_run / ".last.pth.k2j3l4.tmp", finished_run / ".step-0000002.pth.x.tmp",
             finished_run / ".metrics.jsonl.abc.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    foreign = finished_run / ".notes.tmp"
    foreign.write_text("mine")
    checkpoint = load_resume_checkpoint(finished_run)
    train(resume_config(checkpoint, {"max_steps": 5}), resume=checkpoint)
    assert not any(p.exists() for p in stale)
    assert foreign.read_text() == "mine"


def test_a_killed_replacement_is_recovered_and_still_counts_as_the_run(finished_run):
    # A --force run killed (-9) before its first save: the old run is in the aside directory,
    # the new run's config.yaml beside it.
    before = snapshot(finished_run)
    aside = finished_run / ASIDE
    aside.mkdir()
    for path in list(finished_run.iterdir()):
        if path.is_file():
            path.rename(aside / path.name)
    (aside / MOVED_MARK).write_text("moved\n")
    (finished_run / "config.yaml").write_text("lr: 1\n")
    assert "last.pth" in run_files(finished_run)  # a new run without --force is refused
    RunDirectory.open(finished_run, continuing=True).commit()
    assert snapshot(finished_run) == before


def test_a_resume_refuses_a_bad_option_before_touching_anything(finished_run):
    before = snapshot(finished_run)
    result = runner.invoke(app, ["train", "--resume", str(finished_run), "--lr", "inf"])
    assert result.exit_code != 0 and snapshot(finished_run) == before
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if line.strip()
    ][:1]


def test_an_interrupted_run_restores_on_a_second_ctrl_c(train_dataset, finished_run, monkeypatch):
    before = snapshot(finished_run)

    def interrupted(model, x, y):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "compute_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(train_dataset, finished_run, max_steps=4), force=True)
    assert snapshot(finished_run) == before
    assert torch.load(finished_run / "last.pth", weights_only=True)  # still a checkpoint


# --- prepared data and exports: temp directories of killed writers -----------------------------------


def dead_pid():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temp_directory_is_deleted_and_a_live_ones_kept(tmp_path):
    from gpt2es_cli.fileio import OWNER_FILE, replace_dir, temp_dir_for

    target = tmp_path / "data"
    killed = tmp_path / ".data.abc.tmp"
    killed.mkdir()
    (killed / "train.bin").write_bytes(b"x" * 100)
    (killed / OWNER_FILE).write_text(f"{dead_pid()}\n")
    alive = tmp_path / ".data.def.tmp"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{os.getppid()}\n")  # a process that runs
    fresh = temp_dir_for(target)
    assert not killed.exists() and alive.exists() and fresh.is_dir()
    (fresh / "meta.json").write_text("{}")
    replace_dir(fresh, target)
    assert sorted(p.name for p in target.iterdir()) == ["meta.json"]  # the owner mark does not stay


def test_a_kill_between_the_two_renames_puts_the_previous_directory_back(tmp_path):
    from gpt2es_cli.fileio import temp_dir_for

    target = tmp_path / "data"
    old = tmp_path / ".data.xyz.old"
    (old / "data").mkdir(parents=True)
    (old / "data" / "meta.json").write_text('{"kept": true}')
    temp_dir_for(target)
    assert (target / "meta.json").read_text() == '{"kept": true}' and not old.exists()


def test_prepare_cleans_what_a_killed_prepare_left(tmp_path, tiny_tokenizer, spanish_texts):
    from conftest import make_dataset

    from gpt2es_cli.fileio import OWNER_FILE

    killed = tmp_path / ".data.k1.tmp"
    killed.mkdir()
    (killed / OWNER_FILE).write_text(f"{dead_pid()}\n")
    make_dataset(tmp_path / "data", tiny_tokenizer, spanish_texts, repeats=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
