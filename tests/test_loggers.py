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
    directory = run_dir if run_dir.name == "by_tokens" else run_dir / "tensorboard"
    events = accumulator.EventAccumulator(str(directory))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)], events


def killed_at_step_6_then_resumed(config, run_dir, after_kill=lambda: None):
    """Train `config`, stopped by an exception once the loggers saw step 6 (its checkpoint is at
    step 4), then resume it to the end."""

    class Killed(Exception):
        pass

    def kill(event):
        if isinstance(event, StepReport) and event.step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(config, subscribers=[kill])
    after_kill()
    checkpoint = load_resume_checkpoint(run_dir)
    assert checkpoint.training.step == 4
    train(resume_config(checkpoint, {}), resume=checkpoint)


def test_tensorboard_and_csv_log_the_run_and_a_resume_adds_no_duplicate_step(train_dataset, tmp_path):
    config = tiny_run(train_dataset, tmp_path / "run", max_steps=8, log_interval=1, eval_interval=4,
                      save_interval=4, log_to="tensorboard,csv")

    killed_at_step_6_then_resumed(config, tmp_path / "run")  # steps 5 and 6 are logged again

    loss, events = scalars(tmp_path / "run", "train/loss")
    assert [s for s, _ in loss] == list(range(1, 9))  # each step once, across the two invocations
    tags = events.Tags()
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "val/loss", "val/perplexity"} <= set(
        tags["scalars"])
    by_tokens, _ = scalars(tmp_path / "run" / "tensorboard" / "by_tokens", "by_tokens/train_loss")
    rows_tokens = [int(r["tokens"]) for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open(encoding="utf-8"))
                   if r["type"] == "train"]
    assert [s for s, _ in by_tokens] == rows_tokens  # each token count once, in its own run
    assert [v for _, v in by_tokens] == [v for _, v in loss]
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


# --- W&B ----------------------------------------------------------------------------------------


def wandb_records(run_dir):
    """Every record W&B wrote in offline mode, per invocation: its .wandb files read back (the
    LevelDB-style log wandb-core writes: a 7-byte header, then 32 KiB blocks of records, each
    with a 7-byte header: checksum, length, type) and parsed with W&B's own protobuf classes."""
    import struct

    wandb = pytest.importorskip("wandb")
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    # run.finish() returns before W&B's service process has flushed and closed the .wandb file;
    # teardown, which a CLI process runs at exit, waits for the service to finish writing.
    wandb.teardown()
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data, records, pos, chunk = path.read_bytes(), [], 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0 and length == 0:
                break
            chunk += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(chunk)
                records.append(record)
                chunk = b""
        runs.append(records)
    return runs


def history(records):
    import json

    rows = []
    for r in records:
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_wandb_offline_logs_the_run_and_a_resume_continues_the_same_run_without_duplicate_steps(
    train_dataset, tmp_path, wandb_offline
):
    import json

    config = tiny_run(train_dataset, tmp_path / "run", max_steps=8, log_interval=1, eval_interval=4,
                      save_interval=4, log_to="wandb", wandb_project="gpt2es-tests")

    def close_the_open_run():  # the exception left the W&B run open, as a crashed process would
        import wandb

        if wandb.run is not None:
            wandb.run.finish(exit_code=1)

    killed_at_step_6_then_resumed(config, tmp_path / "run", after_kill=close_the_open_run)

    invocations = wandb_records(tmp_path / "run")
    assert len(invocations) == 2
    ids = {r.run.run_id for records in invocations for r in records if r.WhichOneof("record_type") == "run"}
    assert len(ids) == 1 and json.loads((tmp_path / "run" / "wandb-run.json").read_text())["id"] in ids
    projects = {r.run.project for records in invocations for r in records if r.WhichOneof("record_type") == "run"}
    assert projects == {"gpt2es-tests"}
    rows = [row for records in invocations for row in history(records)]
    train_steps = [row["_step"] for row in rows if "train/loss" in row]
    assert train_steps == list(range(1, 9))  # each step once, across the two invocations
    assert [row["_step"] for row in rows if "val/loss" in row] == [4, 8]
    first = next(row for row in rows if "train/loss" in row)
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "tokens"} <= set(first)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert first["tokens"] == next(m["tokens"] for m in metrics if m["type"] == "train")
    losses = {m["step"]: m["loss"] for m in metrics if m["type"] == "train"}
    assert [pytest.approx(losses[row["_step"]]) for row in rows if "train/loss" in row] == [
        row["train/loss"] for row in rows if "train/loss" in row
    ]
    assert any("sample/path" in row for row in rows)  # the evaluation's sample, as HTML
    config_keys = {i.key for records in invocations for r in records if r.WhichOneof("record_type") == "run"
                   for i in r.run.config.update}
    assert {"lr", "batch_size", "n_layer"} <= config_keys


def test_wandb_online_without_an_api_key_is_refused_before_any_work(train_dataset, tmp_path, monkeypatch,
                                                                      wandb_offline):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ConfigError, match="no W&B API key.*WANDB_MODE=offline"):
        train(replace(tiny_run(train_dataset, tmp_path / "run"), log_to="wandb"))
    assert not (tmp_path / "run").exists()


def test_a_missing_wandb_package_is_one_line_naming_the_extra(train_dataset, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    result = CliRunner().invoke(app, ["train", "-d", str(train_dataset), "-o", str(tmp_path / "run"),
                                      "--preset", "tiny", "--log-to", "wandb"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: --log-to wandb needs the wandb package: "
                                                  "pip install 'gpt2es[wandb]'"]
