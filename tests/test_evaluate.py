import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import load_checkpoint, save_model
from gpt2es_cli.cli import app
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.data.dataset import DatasetWriter
from gpt2es_cli.errors import DataError
from gpt2es_cli.evaluate import evaluate_ids, window_starts
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

    from gpt2es_cli.export import export_hf

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
            w.write_document("val" if i % 2 else "train", tiny_tokenizer.encode(doc), len(doc.encode()))
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
        ([str(tiny_checkpoint)], "give exactly one of --data"),
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
