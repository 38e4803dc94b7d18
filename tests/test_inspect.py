"""`gpt2es inspect`: training history, the tokenizer view, JSON everywhere."""

import json

import pytest
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import TrainingState, load_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.cli.inspect import sparkline
from gpt2es_cli.data.dataset import DatasetWriter

runner = CliRunner()


@pytest.fixture
def trained_checkpoint(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    """A checkpoint with a training state shaped like the trainer's."""
    metrics = [{"type": "train", "step": s, "tokens": s * 64, "loss": 6.0 - s * 0.05} for s in range(1, 41)]
    metrics += [
        {"type": "eval", "step": 20, "tokens": 1280, "val_loss": 5.1, "val_perplexity": 164.0},
        {"type": "eval", "step": 40, "tokens": 2560, "val_loss": 4.7, "val_perplexity": 109.9},
        {"type": "recovery", "step": 33, "restored_step": 30},
    ]
    training = {
        "step": 40,
        "total_steps": 100,
        "tokens_seen": 2560,
        "elapsed": 75.5,
        "best_val_loss": 4.7,
        "dataset": {"path": "data/demo", "train_sha256": "abc"},
        "metrics": metrics,
        "optimizer": {"state": {}, "param_groups": []},
    }
    path = tmp_path / "last.pth"
    save_model(path, tiny_model, tiny_config, tiny_tokenizer, training=TrainingState.from_dict(training))
    return path


def test_training_history(trained_checkpoint):
    summary = load_checkpoint(trained_checkpoint).summary()["training"]
    assert summary["best_val"] == {"val_loss": 4.7, "step": 40, "tokens": 2560}
    assert summary["dataset"] == "data/demo" and summary["recoveries"] == 1
    assert len(summary["train_loss"]) == 40 and "optimizer" not in summary
    r = runner.invoke(app, ["inspect", str(trained_checkpoint)])
    assert r.exit_code == 0, r.output
    for text in ("Training", "40 / 100", "1m 15s", "4.7000 at step 40", "data/demo", "Validation history", "109.90", "train loss"):
        assert text in r.stdout, text
    assert any(c in r.stdout for c in "▁▂▃▄▅▆▇█")
    data = json.loads(runner.invoke(app, ["inspect", str(trained_checkpoint), "--json"]).stdout)
    assert data["training"]["evals"][1]["val_loss"] == 4.7


def test_sparkline_shape():
    line = sparkline([float(x) for x in range(100, 0, -1)], width=10)
    assert len(line) == 10 and line[0] == "█" and line[-1] == "▁"
    assert sparkline([]) == "" and len(sparkline([1.0, 1.0])) == 2


def test_tokenizer_view(tiny_checkpoint, tiny_tokenizer):
    text = "¡Había una vez un niño!"
    r = runner.invoke(app, ["inspect", "--tokenizer", str(tiny_checkpoint), "--text", text, "--json"])
    assert r.exit_code == 0, r.output
    view = json.loads(r.stdout)
    assert [t["id"] for t in view["tokens"]] == tiny_tokenizer.encode(text)
    assert "".join(t["text"] for t in view["tokens"]) == text
    r = runner.invoke(app, ["inspect", "--tokenizer", str(tiny_checkpoint), "--text", text])
    assert r.exit_code == 0 and "tokens for" in r.stdout


def test_tokenizer_view_shows_bytes_of_split_characters(gpt2_tokenizer_dir):
    r = runner.invoke(app, ["inspect", "--tokenizer", str(gpt2_tokenizer_dir), "--text", "¿Qué?", "--json"])
    view = json.loads(r.stdout)
    assert view["tokens"][0]["text"] == "<0xC2>" and view["tokens"][1]["text"] == "<0xBF>"
    assert [t["id"] for t in view["tokens"]][:2] == [126, 123]


def test_tokenizer_view_of_a_dataset(tmp_path, tiny_tokenizer):
    out = tmp_path / "data"
    with DatasetWriter(out, tiny_tokenizer) as w:
        w.write("train", [*tiny_tokenizer.encode("hola"), tiny_tokenizer.eos_id], nbytes=4)
        w.write("val", [*tiny_tokenizer.encode("adiós"), tiny_tokenizer.eos_id], nbytes=6)
        w.finish()
    r = runner.invoke(app, ["inspect", "--tokenizer", str(out), "--text", "El niño", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count"] == len(tiny_tokenizer.encode("El niño"))


def test_missing_target(tmp_path):
    r = runner.invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "does not exist" in r.stderr


def _dataset(path, tok):
    with DatasetWriter(path, tok) as w:
        for split, text in (("train", "Había una vez un niño. " * 20), ("val", "El niño leyó un libro. " * 5)):
            w.write(split, [*tok.encode(text), tok.eos_id], nbytes=len(text.encode()))
        w.finish()
    return path


def test_verify_a_dataset(tmp_path, tiny_tokenizer):
    data = _dataset(tmp_path / "data", tiny_tokenizer)
    r = runner.invoke(app, ["inspect", str(data), "--verify"])
    assert r.exit_code == 0, r.output
    assert "checksums" in r.stdout and "ok" in r.stdout
    r = runner.invoke(app, ["inspect", str(data), "--verify", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["bad_checksums"] == []
    assert json.loads(runner.invoke(app, ["inspect", str(data), "--json"]).stdout)["bad_checksums"] is None


def test_verify_a_damaged_dataset_fails_in_one_line(tmp_path, tiny_tokenizer):
    data = _dataset(tmp_path / "data", tiny_tokenizer)
    raw = bytearray((data / "val.bin").read_bytes())
    raw[0] ^= 1  # same size, another token id: only the checksum tells
    (data / "val.bin").write_bytes(bytes(raw))
    assert runner.invoke(app, ["inspect", str(data)]).exit_code == 0  # not verified: not noticed
    for extra in ([], ["--json"]):
        r = runner.invoke(app, ["inspect", str(data), "--verify", *extra])
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "is damaged: the checksums of val.bin differ from meta.json" in r.stderr
    assert "MISMATCH: val" in runner.invoke(app, ["inspect", str(data), "--verify"]).stdout


def test_verify_is_for_datasets(tiny_checkpoint):
    r = runner.invoke(app, ["inspect", str(tiny_checkpoint), "--verify"])
    assert r.exit_code == 1 and "--verify checks a prepared dataset" in r.stderr


def test_inspect_a_run_directory_shows_the_run_from_last_pth(train_dataset, tmp_path):
    import json as json_module

    from conftest import tiny_run
    from typer.testing import CliRunner

    from gpt2es_cli.cli import app
    from gpt2es_cli.training import train

    train(tiny_run(train_dataset, tmp_path / "run", max_steps=4, eval_interval=2))
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "run")], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "last.pth" in result.stdout and "best.pth" in result.stdout and "at step" in result.stdout
    shown = json_module.loads(CliRunner().invoke(app, ["inspect", str(tmp_path / "run"), "--json"]).stdout)
    assert shown["path"].endswith("last.pth") and shown["training"]["evals"]  # the history is there
    assert shown["run"]["best"].endswith("best.pth")


def test_piped_tokenizer_view_keeps_token_boundaries(tiny_checkpoint):
    from typer.testing import CliRunner

    from gpt2es_cli.cli import app

    result = CliRunner().invoke(app, ["inspect", str(tiny_checkpoint), "--tokenizer", "--text", "Hola, señor"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert "|" in first and first.replace("|", "").replace("·", " ") == "Hola, señor"
    id_lines = [line.split() for line in result.stdout.splitlines()[1:] if line.startswith("    ")]
    assert len(id_lines) == first.count("|") + 1  # one line per token, its id first


def test_inspect_shows_the_position_encoding_head_schedule_and_clipping_of_a_run(train_dataset, tmp_path):
    from conftest import tiny_run

    from gpt2es_cli.training import train

    config = tiny_run(train_dataset, tmp_path / "run", max_steps=4, eval_interval=2, position="rope",
                      untied_head=True, schedule="onecycle", grad_clip="auto")
    train(config)
    result = runner.invoke(app, ["inspect", str(tmp_path / "run")], terminal_width=160)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "rope (rotary, theta 10000)" in out and "untied (its own matrix)" in out
    assert "onecycle, warmup" in out and "of 4 steps" in out
    assert "auto (twice the moving average of the norms)" in out and "muon, lr 0.003" in out
    data = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "run"), "--json"]).stdout)
    assert data["training"]["recipe"]["schedule"] == "onecycle" and data["training"]["recipe"]["grad_clip"] == "auto"
