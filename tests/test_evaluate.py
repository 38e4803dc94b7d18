import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import TrainedOn, TrainingState, load_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.data.dataset import DatasetWriter
from gpt2es_cli.errors import DataError
from gpt2es_cli.evaluate import EvalText, evaluate_ids, window_starts
from gpt2es_cli.model import GPT2
from gpt2es_cli.tokenizer import Tokenizer

runner = CliRunner()
TEXT = "Había una vez un niño que vivía en un pueblo pequeño junto al río. ¿Dónde está? ¡Aquí! " * 12


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    return np.asarray(tiny_tokenizer.encode(TEXT))


def naive_nll(model, ids, start, end):
    """Summed loss of targets start+1..end given tokens start..end-1 (one forward)."""
    x = torch.as_tensor(ids[start : end + 1])[None]
    with torch.no_grad():
        return F.cross_entropy(model(x[:, :-1])[0], x[0, 1:], reduction="sum").item()


@pytest.mark.parametrize("stride", [1, 5, 32, 64])
def test_every_token_is_scored_once(tiny_model, tiny_tokenizer, ids, stride):
    r = evaluate_ids(tiny_model, ids, tiny_tokenizer, stride=stride, batch_size=3)
    assert r.tokens == len(ids) - 1
    starts = window_starts(len(ids) - 1, 64, stride)
    assert starts[0] == 0 and starts[-1] == len(ids) - 1 - 64


def test_non_overlapping_windows_match_a_naive_loop(tiny_model, tiny_tokenizer, ids):
    r = evaluate_ids(tiny_model, ids, tiny_tokenizer, stride=64, batch_size=4)
    n = len(ids) - 1
    total, done = 0.0, 0
    for s in window_starts(n, 64, 64):
        x = torch.as_tensor(ids[s : s + 65])[None]
        with torch.no_grad():
            nll = F.cross_entropy(tiny_model(x[:, :-1])[0], x[0, 1:], reduction="none")
        total += nll[max(done - s, 0) :].sum().item()
        done = s + 64
    assert r.loss == pytest.approx(total / n, rel=1e-5)
    nbytes = len(tiny_tokenizer.decode(ids[1:].tolist()).encode("utf-8"))
    assert r.bytes == nbytes
    assert r.bits_per_byte == pytest.approx(total / math.log(2) / nbytes, rel=1e-5)
    assert r.perplexity == pytest.approx(math.exp(r.loss))


def test_short_text_is_one_window(tiny_model, tiny_tokenizer, ids):
    r = evaluate_ids(tiny_model, ids[:30], tiny_tokenizer)
    assert r.loss == pytest.approx(naive_nll(tiny_model, ids, 0, 29) / 29, rel=1e-5)


def test_loss_equals_transformers_on_the_export(tmp_path, tiny_checkpoint, tiny_tokenizer, ids):
    from transformers import AutoModelForCausalLM

    from gpt2es_cli.hf import export_hf

    ckpt = load_checkpoint(tiny_checkpoint)
    out = export_hf(ckpt, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.as_tensor(ids[:64])[None]
    with torch.no_grad():
        hf_loss = hf(x, labels=x).loss.item()
    ours = evaluate_ids(ckpt.build_model(), ids[:64], tiny_tokenizer).loss
    assert abs(ours - hf_loss) <= 1e-4


def test_bad_input(tiny_model, tiny_tokenizer, ids):
    with pytest.raises(DataError, match="too short"):
        evaluate_ids(tiny_model, ids[:1], tiny_tokenizer)
    with pytest.raises(DataError, match="--stride must be between 1 and the context"):
        evaluate_ids(tiny_model, ids, tiny_tokenizer, stride=65)


@pytest.fixture
def dataset(tmp_path, tiny_tokenizer):
    out = tmp_path / "data"
    with DatasetWriter(out, tiny_tokenizer) as w:
        for i, doc in enumerate(TEXT.split(". ")):
            ids = [*tiny_tokenizer.encode(doc), tiny_tokenizer.eos_id]  # each document ends in <|endoftext|>
            w.write("val" if i % 2 else "train", ids, nbytes=len(doc.encode()))
        w.finish()
    return out


def test_cli_compares_checkpoints_sorted_by_bits_per_byte(tmp_path, dataset, tiny_checkpoint, tiny_config, tiny_tokenizer):
    # A second model with another tokenizer: the val text is re-tokenized for it.
    other_tok = Tokenizer.train([TEXT], vocab_size=300, min_frequency=1)
    torch.manual_seed(1)
    cfg = ModelConfig.from_preset("tiny", vocab_size=other_tok.vocab_size)
    other = tmp_path / "other.pth"
    save_model(other, GPT2(cfg), cfg, other_tok)
    r = runner.invoke(app, ["eval", str(tiny_checkpoint), str(other), "--data", str(dataset), "--json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert len(results) == 2
    assert results[0]["bits_per_byte"] <= results[1]["bits_per_byte"]
    by_name = {x["name"]: x for x in results}
    # Same text, so nearly the same bytes (only the first scored token differs), different token counts.
    assert abs(by_name[str(other)]["bytes"] - by_name[str(tiny_checkpoint)]["bytes"]) < 20
    assert by_name[str(other)]["tokens"] != by_name[str(tiny_checkpoint)]["tokens"]
    r = runner.invoke(app, ["eval", str(tiny_checkpoint), "--data", str(dataset), "--max-tokens", "50"])
    assert r.exit_code == 0, r.output
    assert "bits/byte" in r.stdout and "perplexity" in r.stdout


def test_cli_bad_input(tmp_path, tiny_checkpoint, tiny_model, tiny_config):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    one = tmp_path / "one.txt"
    one.write_text("a")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("año".encode("latin-1"))
    no_tok = tmp_path / "notok.pth"
    save_model(no_tok, tiny_model, tiny_config, None)
    good = tmp_path / "good.txt"
    good.write_text(TEXT)
    cases = [
        ([str(tiny_checkpoint)], "does not record the dataset it was trained on: pass --data"),
        ([str(tiny_checkpoint), "--data", str(tmp_path), "--text", str(good)], "give exactly one of --data"),
        ([str(tiny_checkpoint), "--text", str(good), "--max-tokens", "1"], "--max-tokens must be >= 2"),
        ([str(tiny_checkpoint), "--text", str(good), "--dtype", "float64"], "unknown dtype 'float64'"),
        ([str(tiny_checkpoint), "--text", str(good), "--quantize", "int4"], "unknown quantization 'int4'"),
        ([str(tiny_checkpoint), "--text", str(good), "--amp", "--dtype", "fp32"], "--amp is short for --dtype auto"),
        ([str(tiny_checkpoint), "--text", str(empty)], "is empty"),
        ([str(tiny_checkpoint), "--text", str(one)], "too short"),
        ([str(tiny_checkpoint), "--text", str(latin)], "not UTF-8"),
        ([str(tiny_checkpoint), "--text", str(good), "--stride", "500"], "--stride must be"),
        ([str(no_tok), "--text", str(good)], "carries no tokenizer"),
        ([str(tiny_checkpoint), "--data", str(tmp_path / "nodata")], "does not exist"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["eval", *args])
        assert r.exit_code == 1, (args, r.output)
        assert message in r.stderr and "Traceback" not in r.output, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


# --- EvalText: the text to score, in each model's ids -------------------------------------------
def test_eval_text_from_a_dataset_keeps_or_retokenizes_ids(dataset, tiny_tokenizer):
    source = EvalText.from_dataset(dataset, "val")
    assert source.label == f"{dataset} (val)"
    from gpt2es_cli.data.dataset import PreparedDataset

    val = np.asarray(PreparedDataset.open(dataset).tokens("val"))
    assert np.array_equal(source.ids_for(tiny_tokenizer), val)  # the dataset's tokenizer: as is
    other = Tokenizer.train([TEXT], vocab_size=300, min_frequency=1)
    again = source.ids_for(other)
    assert other.decode(again.tolist()) == tiny_tokenizer.decode(val.tolist())
    assert len(EvalText.from_dataset(dataset, "train", max_tokens=10).ids_for(tiny_tokenizer)) == 10
    with pytest.raises(DataError, match="--split must be train or val"):
        EvalText.from_dataset(dataset, "test")


def test_eval_text_from_files(tmp_path, tiny_tokenizer):
    (tmp_path / "a.txt").write_text(TEXT)
    source = EvalText.open(None, tmp_path / "a.txt", max_tokens=20)
    ids = source.ids_for(tiny_tokenizer)
    assert source.label == str(tmp_path / "a.txt") and len(ids) == 20
    with pytest.raises(DataError, match="give exactly one of"):
        EvalText.open(None, None)


# --- precision: one loader, float32 loss --------------------------------------------------------
def test_cross_entropy_is_float32_with_bfloat16_weights(tiny_model, tiny_tokenizer, ids):
    import copy

    half = copy.deepcopy(tiny_model).to(torch.bfloat16)
    r = evaluate_ids(half, ids[:30], tiny_tokenizer)
    x = torch.as_tensor(ids[:30])[None]
    with torch.no_grad():
        exact = F.cross_entropy(half(x[:, :-1])[0].float(), x[0, 1:], reduction="mean").item()
        rounded = F.cross_entropy(half(x[:, :-1])[0], x[0, 1:], reduction="mean").float().item()
    assert r.loss == pytest.approx(exact, rel=1e-5)
    assert math.isfinite(r.loss) and (rounded == exact or r.loss != pytest.approx(rounded, rel=1e-7))


@pytest.mark.parametrize(
    ("options", "precision"),
    [
        (("--dtype", "bfloat16"), "bfloat16"),
        (("--dtype", "bf16"), "bfloat16"),
        (("--quantize", "int8"), "bfloat16 int8"),
    ],
)
def test_cli_dtype_and_quantize_stay_close_to_float32(dataset, tiny_checkpoint, options, precision):
    base = ["eval", str(tiny_checkpoint), "--data", str(dataset), "--json"]
    exact = runner.invoke(app, base)
    assert exact.exit_code == 0, exact.output
    assert json.loads(exact.stdout)["precision"] == "float32"  # the default: exact scores
    r = runner.invoke(app, [*base, *options])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["precision"] == precision
    loss, ref = data["results"][0]["loss"], json.loads(exact.stdout)["results"][0]["loss"]
    assert math.isfinite(loss) and loss == pytest.approx(ref, rel=0.02)


def test_cli_amp_is_dtype_auto(dataset, tiny_checkpoint):
    from gpt2es_cli.device import dtype_name, select_inference_dtype

    auto = dtype_name(select_inference_dtype(torch.device("cpu"), "auto"))
    for options in (("--amp",), ("--dtype", "auto"), ("--amp", "--dtype", "auto")):
        r = runner.invoke(app, ["eval", str(tiny_checkpoint), "--data", str(dataset), "--json", "--device", "cpu", *options])
        assert r.exit_code == 0, (options, r.output)
        assert json.loads(r.stdout)["precision"] == auto


# --- no --data or --text: the dataset the checkpoint was trained on -----------------------------
def _run_checkpoints(run, dataset, model, config, tokenizer, *, best=True, last=True):
    run.mkdir(parents=True, exist_ok=True)
    if last:
        save_model(run / "last.pth", model, config, tokenizer,
                   training=TrainingState(step=1, dataset=TrainedOn(str(dataset), "x")))
    if best:
        save_model(run / "best.pth", model, config, tokenizer, extra={"dataset": str(dataset)})


@pytest.mark.parametrize("which", ["best.pth", "last.pth"])
def test_cli_eval_uses_the_recorded_dataset(tmp_path, monkeypatch, dataset, tiny_model, tiny_config, tiny_tokenizer, which):
    monkeypatch.chdir(tmp_path)
    _run_checkpoints(tmp_path / "runs" / "demo", "data", tiny_model, tiny_config, tiny_tokenizer,
                     best=which == "best.pth", last=which == "last.pth")
    ckpt = f"runs/demo/{which}"
    r = runner.invoke(app, ["eval", ckpt, "--json"])
    assert r.exit_code == 0, r.output
    assert f"evaluating on data (val), the dataset {ckpt} was trained on" in r.stderr
    assert json.loads(r.stdout)["text"] == "data (val)"
    explicit = runner.invoke(app, ["eval", ckpt, "--data", "data", "--json"])
    assert json.loads(explicit.stdout)["results"] == [
        {**res, "seconds": e["seconds"], "tokens_per_second": e["tokens_per_second"]}
        for res, e in zip(json.loads(r.stdout)["results"], json.loads(explicit.stdout)["results"], strict=True)
    ]
    # --split applies to the recorded dataset too.
    r = runner.invoke(app, ["eval", ckpt, "--split", "train", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["text"] == "data (train)"


def test_cli_eval_with_nothing_given_uses_the_newest_run_and_its_dataset(tmp_path, monkeypatch, dataset, tiny_model, tiny_config, tiny_tokenizer):
    monkeypatch.chdir(tmp_path)
    _run_checkpoints(tmp_path / "runs" / "demo", "data", tiny_model, tiny_config, tiny_tokenizer)
    r = runner.invoke(app, ["eval", "--max-tokens", "50"])
    assert r.exit_code == 0, r.output
    assert "using runs/demo/best.pth (the newest run under runs/)" in r.stderr
    assert "evaluating on data (val), the dataset runs/demo/best.pth was trained on" in r.stderr
    assert "bits/byte" in r.stdout


def test_cli_eval_fails_in_one_line_when_the_recorded_dataset_is_gone(tmp_path, monkeypatch, tiny_model, tiny_config, tiny_tokenizer):
    monkeypatch.chdir(tmp_path)
    _run_checkpoints(tmp_path / "runs" / "demo", "data/gone", tiny_model, tiny_config, tiny_tokenizer)
    (tmp_path / "notdata").mkdir()
    _run_checkpoints(tmp_path / "runs" / "moved", "notdata", tiny_model, tiny_config, tiny_tokenizer)
    for ckpt, message in (
        ("runs/demo/best.pth", "was trained on data/gone, which is no longer there: pass --data DATA_DIR or --text"),
        ("runs/moved", "was trained on notdata, which is no longer a prepared dataset"),
    ):
        r = runner.invoke(app, ["eval", ckpt])
        assert r.exit_code == 1, r.output
        assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
