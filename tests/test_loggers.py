"""--log-to tensorboard,csv: event files TensorBoard's own reader reads back (steps, values, no
duplicate step after a resume), metrics.csv rows, and one-line errors for unknown loggers."""

import csv
from dataclasses import replace

import pytest
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.training import StepReport, load_resume_checkpoint, resume_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


def scalars(run_dir, tag):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)], events


def test_tensorboard_and_csv_log_the_run_and_a_resume_adds_no_duplicate_step(train_dataset, tmp_path):
    config = tiny_run(train_dataset, tmp_path / "run", max_steps=8, log_interval=1, eval_interval=4,
                      save_interval=4, log_to="tensorboard,csv")

    class Killed(Exception):
        pass

    def kill(event):  # after the loggers saw step 6: the checkpoint is at step 4
        if isinstance(event, StepReport) and event.step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(config, subscribers=[kill])
    checkpoint = load_resume_checkpoint(tmp_path / "run")
    assert checkpoint.training["step"] == 4
    train(resume_config(checkpoint, {}), resume=checkpoint)  # steps 5 and 6 are logged again

    loss, events = scalars(tmp_path / "run", "train/loss")
    assert [s for s, _ in loss] == list(range(1, 9))  # each step once, across the two invocations
    tags = events.Tags()
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "val/loss", "val/perplexity",
            "by_tokens/train_loss", "by_tokens/val_loss"} <= set(tags["scalars"])
    val, _ = scalars(tmp_path / "run", "val/loss")
    assert [s for s, _ in val] == [4, 8]
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open(encoding="utf-8")))
    train_rows = [r for r in rows if r["type"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 9))
    assert [pytest.approx(float(r["loss"])) for r in train_rows] == [v for _, v in loss]
    assert [int(r["step"]) for r in rows if r["type"] == "eval"] == [4, 8]


def test_unknown_loggers_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown logger"):
        TrainConfig.from_dict({"log_to": "tensorboard,wandb2"})
    assert TrainConfig.from_dict({"log_to": " CSV, tensorboard,csv"}).log_to == "csv,tensorboard"
    result = CliRunner().invoke(app, ["train", "--log-to", "spreadsheet"])
    assert result.exit_code == 1 and "--log-to: unknown logger(s) spreadsheet" in result.stderr


def test_a_missing_tensorboard_package_is_one_line_naming_the_extra(train_dataset, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'gpt2es\[tensorboard\]'"):
        train(replace(tiny_run(train_dataset, tmp_path / "run"), log_to="tensorboard"))
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_tqdm_progress_follows_the_run(train_dataset, tmp_path, capsys):
    from gpt2es_cli.training.subscribers.progress import TqdmProgress

    progress = TqdmProgress(disable=False, mininterval=0)
    train(tiny_run(train_dataset, tmp_path / "run", max_steps=4, eval_interval=2), subscribers=[progress])
    err = capsys.readouterr().err
    assert "4/4" in err and "val loss" in err and "loss=" in err
