"""The CLI frame, `sample` and `inspect`, through Typer's runner."""

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from gpt2es_cli import __version__
from gpt2es_cli.cli import app

runner = CliRunner()


def invoke(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"gpt2es {__version__}"
    r = invoke("--help")
    assert r.exit_code == 0
    for name in ("prepare", "train", "eval", "sample", "inspect", "export"):
        assert name in r.stdout


def test_usage_error_exits_2():
    assert invoke("sample", "--max-new-tokens", "x").exit_code == 2
    assert invoke("sample", "x.pth", "--num-samples", "many").exit_code == 2


def test_sample_streams_into_panels(tiny_checkpoint):
    r = invoke("sample", tiny_checkpoint, "--prompt", "Había una vez", "-n", "2", "--max-new-tokens", "8", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("Había una vez") == 2
    assert "sample 1/2" in r.stdout and "sample 2/2" in r.stdout and "tokens/s" in r.stdout


def test_sample_json_is_reproducible(tiny_checkpoint):
    args = ("sample", tiny_checkpoint, "--json", "--max-new-tokens", "12", "--seed", "7", "--ignore-eos", "-n", "2")
    a, b = invoke(*args), invoke(*args)
    assert a.exit_code == 0, a.output
    data = json.loads(a.stdout)
    assert data == {**json.loads(b.stdout), "seconds": data["seconds"], "tokens_per_second": data["tokens_per_second"]}
    assert [s["tokens"] for s in data["samples"]] == [12, 12]
    assert {s["finish_reason"] for s in data["samples"]} == {"length"}


def test_sample_dtype_and_quantize(tiny_checkpoint):
    base = ("sample", tiny_checkpoint, "--json", "--max-new-tokens", "10", "--temperature", "0", "--ignore-eos")
    fp32 = ("--dtype", "float32")
    variants = (fp32, (*fp32, "--no-cache"), ("--dtype", "bf16"), ("--quantize", "int8"))
    runs = {args: invoke(*base, *args) for args in variants}
    for args, r in runs.items():
        assert r.exit_code == 0, (args, r.output)
    data = {args: json.loads(r.stdout) for args, r in runs.items()}
    assert data[fp32]["precision"] == "float32"
    assert data[("--dtype", "bf16")]["precision"] == "bfloat16"
    assert data[("--quantize", "int8")]["precision"] == "bfloat16 int8"
    assert {d["samples"][0]["tokens"] for d in data.values()} == {10}
    # fp32 greedy is exact: the KV cache changes nothing.
    assert data[fp32]["samples"] == data[(*fp32, "--no-cache")]["samples"]
    r = invoke("sample", tiny_checkpoint, "--max-new-tokens", "4", "--quantize", "int8")
    assert r.exit_code == 0 and "tokens/s, bfloat16 int8)" in r.stdout


def test_sample_prompt_file_and_long_prompt_warning(tmp_path, tiny_checkpoint):
    f = tmp_path / "prompt.txt"
    f.write_text("Había una vez " * 40, encoding="utf-8")
    r = invoke("sample", tiny_checkpoint, "--prompt-file", f, "--json", "--max-new-tokens", "3")
    assert r.exit_code == 0, r.output
    assert "warning: the prompt is longer than the context" in r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] == 64


def test_sample_bad_input_is_one_line(tmp_path, tiny_checkpoint):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Había una vez".encode("latin-1"))
    cases = [
        (("sample", tmp_path / "missing.pth"), "does not exist"),
        (("sample", tiny_checkpoint, "--prompt-file", bad), "not UTF-8"),
        (("sample", tiny_checkpoint, "--temperature", "-1"), "temperature must be >= 0"),
        (("sample", tiny_checkpoint, "--top-p", "1.5"), "--top-p must be > 0 and <= 1 (got 1.5)"),
        (("sample", tiny_checkpoint, "--temperature", "inf"), "--temperature must be a finite number"),
        (("sample", tiny_checkpoint, "--repetition-penalty", "nan"), "--repetition-penalty must be a finite number"),
        (("sample", tiny_checkpoint, "--num-samples", str(10**9)), "--num-samples must be >= 1 and <= 4096"),
        (("sample", tiny_checkpoint, "--device", "tpu"), "unknown device"),
        (("sample", tiny_checkpoint, "--dtype", "float64"), "unknown dtype 'float64'"),
        (("sample", tiny_checkpoint, "--quantize", "int4"), "unknown quantization 'int4'"),
        (("sample", tiny_checkpoint, "--quantize", "int8", "--dtype", "float32"), "int8 computes in bfloat16"),
    ]
    for args, message in cases:
        r = invoke(*args)
        assert r.exit_code == 1, (args, r.output)
        assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_debug_shows_the_exception(tmp_path):
    r = invoke("--debug", "sample", tmp_path / "missing.pth")
    assert r.exit_code == 1 and type(r.exception).__name__ == "CheckpointError"


def test_interactive_loop(tiny_checkpoint):
    r = invoke("sample", tiny_checkpoint, "-i", "--max-new-tokens", "4", "--seed", "0", input="Había una vez\n\nEl niño\n")
    assert r.exit_code == 0, r.output
    assert "Había una vez" in r.stdout and "El niño" in r.stdout
    assert r.stdout.endswith("prompt> \n")  # the last prompt's line ends at the end of input


def test_inspect_checkpoint(tiny_checkpoint, tiny_model):
    r = invoke("inspect", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    for text in ("Model config", "Parameters", "feed-forward", f"{tiny_model.num_parameters():,}", "byte-level BPE", "<|endoftext|>"):
        assert text in r.stdout
    r = invoke("inspect", tiny_checkpoint, "--json")
    data = json.loads(r.stdout)
    assert data["parameters"]["total"] == tiny_model.num_parameters()
    assert data["model_config"]["n_layer"] == 2


def test_inspect_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all" * 10)
    r = invoke("inspect", bad)
    assert r.exit_code == 1 and "truncated or corrupt" in r.stderr


@pytest.mark.parametrize("name", ["prepare", "train", "sample", "eval", "inspect", "export"])
def test_every_command_help_has_examples_and_flags_take_no_metavar(name):
    assert "<bool>" not in runner.invoke(app, ["--help"], terminal_width=120).stdout
    result = runner.invoke(app, [name, "--help"], terminal_width=120)
    assert result.exit_code == 0
    examples = result.stdout.split("Examples:")[-1]
    assert "Examples:" in result.stdout and examples.count(f"gpt2es {name}") >= 3
    assert "<bool>" not in result.stdout  # flags, --help included, take no value
    assert "--no-no-" not in result.stdout


def test_export_dtype_auto_keeps_the_checkpoints_own(tmp_path, tiny_model, tiny_config, tiny_tokenizer):
    from safetensors.torch import load_file

    from gpt2es_cli.checkpoint import save_model

    for dtype in (torch.float32, torch.bfloat16):
        source = tmp_path / f"{dtype}.pth"
        save_model(source, copy.deepcopy(tiny_model).to(dtype), tiny_config, tiny_tokenizer)  # the fixture stays fp32
        out = tmp_path / f"hf-{dtype}"
        r = invoke("export", source, out, "--dtype", "auto")
        assert r.exit_code == 0, r.output
        assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {dtype}
        plain = tmp_path / f"plain-{dtype}"
        assert invoke("export", source, plain).exit_code == 0  # unset: float32, the trained weights
        assert {t.dtype for t in load_file(plain / "model.safetensors").values()} == {torch.float32}
