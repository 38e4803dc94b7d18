"""Promised invocations: commands taking a CHECKPOINT default to the newest run under ./runs/."""

import json

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import save_model
from gpt2es_cli.cli import app

runner = CliRunner()
NOTE = "using runs/demo/best.pth (the newest run under runs/)"


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture
def in_project(tmp_path, monkeypatch, tiny_model, tiny_config, tiny_tokenizer):
    """A working directory with one trained run, runs/demo (best.pth and last.pth)."""
    monkeypatch.chdir(tmp_path)
    for name in ("last.pth", "best.pth"):
        save_model(tmp_path / "runs" / "demo" / name, tiny_model, tiny_config, tiny_tokenizer)
    return tmp_path


@pytest.fixture
def empty_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sample_without_a_checkpoint_uses_the_newest_run(in_project):
    r = invoke("sample", "--prompt", "Había una vez", "--max-new-tokens", "4", "--seed", "0", "--json")
    assert r.exit_code == 0, r.output
    assert NOTE in r.stderr
    data = json.loads(r.stdout)
    assert data["prompt"] == "Había una vez" and len(data["samples"]) == 1
    # The same as naming the file.
    named = json.loads(invoke("sample", "runs/demo/best.pth", "--prompt", "Había una vez",
                              "--max-new-tokens", "4", "--seed", "0", "--json").stdout)
    assert named["samples"] == data["samples"]


def test_sample_streams_without_a_checkpoint(in_project):
    r = invoke("sample", "--prompt", "Había una vez", "--max-new-tokens", "4", "--seed", "0")
    assert r.exit_code == 0, r.output
    assert NOTE in r.stderr and "Había una vez" in r.stdout


@pytest.mark.parametrize("command", [("sample",), ("eval",), ("inspect",), ("export", "out")])
def test_no_run_says_train_first_in_one_line(empty_project, command):
    r = invoke(*command)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "gpt2es train" in r.stderr and "pass a checkpoint" in r.stderr
    assert "Traceback" not in r.output


def test_inspect_without_a_target_uses_the_newest_run(in_project, tiny_model):
    r = invoke("inspect", "--json")
    assert r.exit_code == 0, r.output
    assert NOTE in r.stderr
    assert json.loads(r.stdout)["parameters"]["total"] == tiny_model.num_parameters()
    r = invoke("inspect", "--tokenizer", "--text", "hola", "--json")
    assert r.exit_code == 0 and NOTE in r.stderr and json.loads(r.stdout)["text"] == "hola"


def test_export_with_only_out_dir_exports_the_newest_run(in_project):
    r = invoke("export", "hf", "--dtype", "bf16")
    assert r.exit_code == 0, r.output
    assert NOTE in r.stderr
    assert {t.dtype.__repr__() for t in load_file(in_project / "hf" / "model.safetensors").values()} == {"torch.bfloat16"}
    # Both positionals still mean CHECKPOINT OUT_DIR, and no note is printed.
    r = invoke("export", "runs/demo/last.pth", "hf2")
    assert r.exit_code == 0, r.output
    assert "using" not in r.stderr and (in_project / "hf2" / "config.json").is_file()


def test_export_usage(in_project):
    r = invoke("export", "--help")
    assert r.exit_code == 0
    assert "[CHECKPOINT]" in r.stdout and "OUT_DIR" in r.stdout and "newest run" in r.stdout
    assert invoke("export").exit_code == 2  # OUT_DIR is required
    assert invoke("export", "a", "b", "c").exit_code == 2
