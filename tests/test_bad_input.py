"""Hostile input, for every number option and every path argument of every command: each is a
non-zero exit with exactly one `error:` line on stderr (naming the option where a value was
wrong), no traceback, and the run, dataset and checkpoint already on disk byte-identical after.

The values tried for every number option are NaN, inf, -inf, 0, -1, 10**12 and a non-number,
those outside the field's declared range; the paths are missing, a file where a directory is
expected and the reverse, empty, truncated, wrong-shaped and (not as root) unreadable.
"""

import dataclasses
import hashlib
import os

import pytest
import torch
from conftest import make_dataset, tiny_run
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import EvalConfig, GenerationConfig, PrepareConfig, TrainConfig
from gpt2es_cli.settings import option_name, spec_of
from gpt2es_cli.training import train

runner = CliRunner()
COMMANDS = {"train": TrainConfig, "prepare": PrepareConfig, "sample": GenerationConfig, "eval": EvalConfig}
VALUES = ("nan", "inf", "-inf", "0", "-1", "1000000000000", "abc")


def numeric(f: dataclasses.Field) -> type | None:
    """int or float for a number setting (optional, or 'auto'-able), else None."""
    text = str(f.type)  # the annotation as written: "int | None", "float", "int | str"
    if "float" in text:
        return float
    if "int" in text and "bool" not in text:
        return int
    return None


def invalid(f: dataclasses.Field, kind: type, value: str) -> bool:
    """Whether `value` is outside what the field declares (independently of the code under test)."""
    try:
        number = float(value)
    except ValueError:
        return True
    if number != number or number in (float("inf"), float("-inf")):
        return True
    spec = spec_of(f)
    return any((
        spec.gt is not None and not number > spec.gt,
        spec.ge is not None and not number >= spec.ge,
        spec.lt is not None and not number < spec.lt,
        spec.le is not None and not number <= spec.le,
    ))


def number_cases():
    for command, cls in COMMANDS.items():
        for f in dataclasses.fields(cls):
            kind = numeric(f)
            if kind is None or not spec_of(f).cli:
                continue
            for value in VALUES:
                if spec_of(f).parse is not None and value in ("0", "-1", "1000000000000"):
                    value += "s" if f.name == "max_time" else ""  # a duration or a size, in its own words
                if invalid(f, kind, value.rstrip("s")):
                    yield pytest.param(command, option_name(f), value, id=f"{command}{option_name(f)}={value}")


def snapshot(*directories):
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in directories for p in sorted(d.rglob("*")) if p.is_file()
    }


def one_error(result, naming=None):
    """The invocation failed with exactly one 'error:' line (and at most a hint), no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert len(lines) <= 2 and lines[0] == errors[0], result.stderr
    if naming is not None:
        assert naming in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_tokenizer, spanish_texts):
    """A dataset, a finished run and damaged files, shared by the module (read-only for tests)."""
    root = tmp_path_factory.mktemp("world")
    data = make_dataset(root / "data", tiny_tokenizer, spanish_texts)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        train(tiny_run(data, root / "run", max_steps=2, eval_interval=2, save_interval=2))
    last = (root / "run" / "last.pth").read_bytes()
    (root / "empty.pth").write_bytes(b"")
    (root / "truncated.pth").write_bytes(last[: len(last) // 2])
    state = torch.load(root / "run" / "last.pth", weights_only=True)
    state["model"]["wte.weight"] = torch.zeros(7, 3)
    torch.save(state, root / "wrong_shape.pth")
    (root / "notes.txt").write_text("just text\n")
    import json
    import shutil

    shutil.copytree(data, root / "bad_meta")
    meta = json.loads((root / "bad_meta" / "meta.json").read_text())
    del meta["splits"]
    (root / "bad_meta" / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(data, root / "oov")
    tokens = bytearray((root / "oov" / "train.bin").read_bytes())
    tokens[2:4] = b"\xff\xff"  # token 1 becomes 65535, beyond the tiny vocabulary
    (root / "oov" / "train.bin").write_bytes(bytes(tokens))
    (root / "somedir").mkdir()
    (root / "unreadable.pth").write_bytes(last)
    os.chmod(root / "unreadable.pth", 0)
    return root


@pytest.fixture
def guarded(world):
    """Asserts the shared run, dataset and files are byte-identical after the test."""
    before = snapshot(world)
    yield world
    assert snapshot(world) == before


def invoke(args, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args)
    finally:
        os.chdir(old)


@pytest.mark.parametrize(("command", "option", "value"), list(number_cases()))
def test_every_bad_number_is_one_line_naming_the_option(guarded, tmp_path, command, option, value):
    world = guarded
    where = {
        "train": ["--resume", str(world / "run")],  # validated before the run is touched
        "prepare": ["-d", str(world / "notes.txt"), "-o", str(world / "data"), "--force"],
        "sample": [str(world / "run"), "--max-new-tokens", "2"],
        "eval": [str(world / "run"), "--data", str(world / "data")],
    }[command]
    result = invoke([command, *where, option, value], tmp_path)
    one_error(result, naming=option)


def test_the_number_cases_cover_every_number_option():
    options = {(c, o) for c, o, _ in (p.values for p in number_cases())}
    for command, cls in COMMANDS.items():
        for f in dataclasses.fields(cls):
            if numeric(f) is not None and spec_of(f).cli:
                assert (command, option_name(f)) in options, (command, f.name)
    assert len(options) >= 45  # train 30, prepare 7, sample 7, eval 3 today


@pytest.mark.parametrize("args", [
    ["train", "--batch-size", "abc"], ["train", "--max-time", "soon"], ["train", "--frobnicate"],
    ["train", "--lr"], ["sample", "--top-k", "1.5"], ["eval", "--stride", "x"], ["inspect", "--seed", "-1"],
    ["inspect", "--seed", "nan"], ["export", "a", "b", "c"], ["bogus"], ["prepare", "--txt-mode", "paragraphs"],
    ["train", "--schedule", "sideways"], ["train", "--optimizer", "sgd"], ["train", "--preset", "huge"],
    ["sample", "--dtype", "float8"], ["eval", "--quantize", "int4"],
])
def test_usage_errors_are_one_line(guarded, tmp_path, args):
    one_error(invoke(args, tmp_path))


# --- paths -----------------------------------------------------------------------------------------

BAD_CHECKPOINTS = ("nope.pth", "empty.pth", "truncated.pth", "wrong_shape.pth", "notes.txt", "somedir",
                   "unreadable.pth", "data")


def path_cases():
    for bad in BAD_CHECKPOINTS:
        yield "sample", ["{bad}", "--max-new-tokens", "2"], bad
        yield "eval", ["{bad}", "--data", "{world}/data"], bad
        yield "inspect", ["{bad}"], bad
        yield "export", ["{bad}", "{tmp}/export"], bad
        yield "train --init-from", ["train", "-d", "{world}/data", "-o", "{tmp}/ft", "--init-from", "{bad}"], bad
        yield "train --resume", ["train", "--resume", "{bad}"], bad
    for bad in ("nope", "notes.txt", "empty.pth", "run", "somedir", "bad_meta", "oov"):
        yield "train --data", ["train", "-d", "{bad}", "-o", "{tmp}/new"], bad
        yield "eval --data", ["eval", "{world}/run", "--data", "{bad}"], bad
    for bad in ("bad_meta", "oov"):
        yield "inspect", ["{bad}"], bad
    for bad in ("nope.txt", "somedir", "empty.pth", "truncated.pth"):
        yield "eval --text", ["eval", "{world}/run", "--text", "{bad}"], bad
        yield "sample --prompt-file", ["sample", "{world}/run", "--prompt-file", "{bad}"], bad
        yield "train --config", ["train", "--config", "{bad}"], bad
    for bad in ("notes.txt", "run", "data"):
        yield "train --out", ["train", "-d", "{world}/data", "-o", "{bad}", "--max-steps", "1"], bad
        yield "export OUT_DIR", ["export", "{world}/run", "{bad}"], bad
        yield "prepare --out", ["prepare", "-d", "{world}/notes.txt", "--txt-mode", "file", "-o", "{bad}"], bad
    for bad in ("nope", "empty.pth", "somedir"):
        yield "prepare --dataset", ["prepare", "-d", "{bad}", "-o", "{tmp}/prepared"], bad
        yield "prepare --gpt2-tokenizer", ["prepare", "-d", "{world}/notes.txt", "--tokenizer", "gpt2",
                                           "--gpt2-tokenizer", "{bad}", "-o", "{tmp}/p"], bad
        yield "export --tokenizer", ["export", "{world}/run", "{tmp}/e", "--tokenizer", "{bad}"], bad


@pytest.mark.parametrize(("what", "args", "bad"), [
    pytest.param(w, a, b, id=f"{w}={b}") for w, a, b in path_cases()
])
def test_every_bad_path_is_one_line_and_damages_nothing(guarded, tmp_path, what, args, bad):
    world = guarded
    if bad == "unreadable.pth" and os.geteuid() == 0:
        pytest.skip("root reads any file")
    first = args[0] if args[0] in ("train", "prepare") else what.split()[0]
    rest = args[1:] if args[0] in ("train", "prepare") else args
    filled = [a.format(bad=world / bad, world=world, tmp=tmp_path) for a in rest]
    one_error(invoke([first, *filled], tmp_path))


# --- sizes that cannot fit ---------------------------------------------------------------------------


def test_more_windows_per_step_than_the_data_holds_is_refused(guarded, tmp_path):
    world = guarded
    error = one_error(invoke(["train", "-d", str(world / "data"), "-o", str(tmp_path / "r"), "-p", "tiny",
                              "--global-batch", "100000", "-b", "4"], tmp_path))
    assert "--global-batch asks for 100,000 windows" in error and "holds only" in error
    assert not (tmp_path / "r").exists()


def test_a_batch_too_big_for_memory_is_refused_before_anything_starts(guarded, tmp_path, monkeypatch):
    from gpt2es_cli.training import plan as plan_module

    monkeypatch.setattr(plan_module, "available_memory", lambda device: 64 << 20)  # a 64 MB machine
    world = guarded
    error = one_error(invoke(["train", "-d", str(world / "data"), "-o", str(tmp_path / "r"), "-p", "tiny",
                              "-b", "16", "--seq-len", "64", "--device", "cpu"], tmp_path))
    assert "--batch-size 16 x --seq-len 64 needs about" in error and "lower --batch-size" in error
    assert not (tmp_path / "r").exists()
