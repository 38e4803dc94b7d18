"""prepare --shard I/N: N disjoint parts whose union is the unsharded dataset, and `train -d DIR` on a
directory of shards as one dataset (complete, consistent, resumable exactly).

"Merged" here is what `train` reads: the shards' splits one after another, in shard order. It holds
exactly the unsharded dataset's documents, token for token, in another order: the unsharded
documents stably sorted by their shard (their text's fingerprint modulo N). That is what is checked.
"""

import json
import os
import random
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_run
from typer.testing import CliRunner

from gpt2es_cli.checkpoint import load_checkpoint
from gpt2es_cli.cli import app
from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data import passes
from gpt2es_cli.data.batches import TokenWindows
from gpt2es_cli.data.clean import digest
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.data.mixture import open_sources
from gpt2es_cli.data.prepare import prepare
from gpt2es_cli.data.shards import MergedDataset, open_dataset
from gpt2es_cli.errors import ConfigError, DataError
from gpt2es_cli.evaluate import EvalText
from gpt2es_cli.training import StepReport, load_resume_checkpoint, resume_config, train

runner = CliRunner()
WORDS = "casa perro gato luna sol mar río monte árbol flor camino noche día viento niña señor".split()


def write_corpus(path, lines, seed, tag=""):
    """Lines of words (one document each, --txt-mode line), with exact duplicates, duplicates that
    differ only before cleaning (spaces, control characters) and lines too short for --min-chars 12."""
    r = random.Random(seed)
    docs = [f"{tag}{' '.join(r.choice(WORDS) for _ in range(r.randint(4, 30)))} {i}" for i in range(lines)]
    for i in range(0, lines, 7):
        docs.insert(r.randrange(len(docs)), docs[i])  # exact copies, later in the stream
        docs.insert(r.randrange(len(docs)), docs[i].replace(" ", "  \t", 2) + "\x07")  # the same after cleaning
        docs.insert(r.randrange(len(docs)), f"sol {i}")  # too short
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    return write_corpus(tmp_path / "corpus" / "text.txt", 240, seed=0)


def options(tmp_path, dataset, out, **kw):
    settings = dict(dataset=dataset, out=tmp_path / out, txt_mode="line", min_chars=12, num_proc=1,
                    tokenizer=str(tmp_path / "tokenizer.json"))
    return PrepareConfig(**{**settings, **kw})


def run(opts):
    return prepare(open_sources(opts), opts)


def documents(tokens, eos):
    tokens = np.asarray(tokens)
    return np.split(tokens, np.flatnonzero(tokens == eos)[:-1] + 1) if len(tokens) else []


def by_shard(dataset, split, count):
    """The unsharded split's documents stably sorted by their shard: what the merged shards must hold."""
    tok = dataset.tokenizer()
    docs = documents(dataset.tokens(split), tok.eos_id)
    shard = [digest(tok.decode(d[:-1].tolist()).encode("utf-8")) % count for d in docs]
    order = sorted(range(len(docs)), key=shard.__getitem__)
    return np.concatenate([docs[i] for i in order])


# 0.02: the first batches have no validation document, and one is held back until one comes (in some shard);
# 1e-6: none ever comes, and the one held back goes to validation at the end.
@pytest.mark.parametrize("val_fraction", [0.2, 0.02, 1e-6])
def test_the_shards_hold_the_unsharded_documents_token_for_token(tmp_path, corpus, val_fraction, monkeypatch):
    monkeypatch.setattr(passes, "BATCH_DOCS", 16)  # many batches: decisions that span batches are taken alike
    whole = run(options(tmp_path, str(corpus), "whole", val_fraction=val_fraction))
    for i in range(3):
        shard = run(options(tmp_path, str(corpus), "shards", val_fraction=val_fraction, shard=f"{i}/3"))
        assert shard.path == tmp_path / "shards" / f"shard-{i:04d}-of-0003"
        assert shard.meta["shard"] == {"index": i, "count": 3}
    merged = open_dataset(tmp_path / "shards")
    unsharded = PreparedDataset.open(whole.path)
    assert isinstance(merged, MergedDataset) and len(merged.parts) == 3
    hygiene = whole.meta["hygiene"]
    assert hygiene["duplicates"] > 0 and hygiene["too_short"] > 0 and hygiene["control_chars_removed"] > 0
    assert merged.meta["hygiene"] == hygiene  # each shard counts its own documents
    for split in ("train", "val"):
        got = np.concatenate([np.asarray(p.tokens(split)) for p in merged.parts])
        assert np.array_equal(got, by_shard(unsharded, split, 3)), split
        for key in ("documents", "bytes", "tokens"):
            assert merged.meta["splits"][split][key] == whole.meta["splits"][split][key]
        windows = TokenWindows.open(merged, split, seq_len=16)  # windows read across the shards' files
        starts = np.arange(0, len(got) - 17, 5)
        x, y = windows.batch(starts)
        windows.close()
        assert all(np.array_equal(x[k].numpy(), got[s : s + 16]) for k, s in enumerate(starts))
        assert np.array_equal(y[-1].numpy(), got[starts[-1] + 1 : starts[-1] + 17])
    if val_fraction < 1e-3:  # the document held back went to validation, in its shard only
        assert whole.meta["splits"]["val"]["documents"] == merged.meta["splits"]["val"]["documents"] == 1

    result = runner.invoke(app, ["inspect", str(tmp_path / "shards"), "--verify"])
    assert result.exit_code == 0, result.output
    assert "Shards (read one after another)" in result.stdout and "checksums" in result.stdout


def test_a_mixture_keeps_its_weights_in_every_shard(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tokenizer.json")
    big = write_corpus(tmp_path / "big" / "text.txt", 900, seed=1, tag="GRANDE ")
    small = write_corpus(tmp_path / "small" / "text.txt", 400, seed=2, tag="PEQUEÑO ")
    mix = (f"{big}:0.75", f"{small}:0.25")
    whole = run(options(tmp_path, mix, "whole", max_bytes=60_000))
    for i in range(3):
        meta = run(options(tmp_path, mix, "shards", max_bytes=60_000, shard=f"{i}/3")).meta
        written = [sum(p["written"][s]["bytes"] for s in ("train", "val")) for p in meta["source"]["parts"]]
        assert written[0] / sum(written) == pytest.approx(0.75, abs=0.05), i  # each shard takes its share of each
        assert [p["read"] for p in meta["source"]["parts"]] == [p["read"] for p in whole.meta["source"]["parts"]]
    merged = open_dataset(tmp_path / "shards")
    assert [p["written"] for p in merged.meta["source"]["parts"]] == [p["written"] for p in whole.meta["source"]["parts"]]
    assert merged.num_tokens("train") + merged.num_tokens("val") == whole.tokens  # the cap is of the whole corpus


def test_missing_or_mismatched_shards_are_refused_in_one_line(tmp_path, corpus):
    for i in (0, 2):
        run(options(tmp_path, str(corpus), "s", shard=f"{i}/3"))
    shards = tmp_path / "s"
    with pytest.raises(DataError, match=r"has 2 of its 3 shards: 1 is missing; prepare it with .*--shard 1/3"):
        open_dataset(shards)
    result = runner.invoke(app, ["train", "-d", str(shards), "-p", "tiny", "--max-steps", "1"])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "1 is missing" in result.stderr

    run(options(tmp_path, str(corpus), "s", shard="1/3", min_chars=13))
    with pytest.raises(DataError, match=r"shard-0001-of-0003 was prepared with other settings .*--min-chars 13"):
        open_dataset(shards)
    other = tmp_path / "other.json"
    from gpt2es_cli.tokenizer import Tokenizer

    Tokenizer.train(["otro texto, otras palabras"] * 8, vocab_size=300, min_frequency=1).save(other)
    run(options(tmp_path, str(corpus), "s", shard="1/3", tokenizer=str(other), force=True))
    with pytest.raises(DataError, match="another tokenizer"):
        open_dataset(shards)

    run(options(tmp_path, str(corpus), "s", shard="1/3", force=True))
    assert isinstance(open_dataset(shards), MergedDataset)
    (shards / "shard-0000-of-0003").rename(shards / "shard-0000-of-0004")  # another split's shard among them
    with pytest.raises(DataError, match="shards of 3 and of 4 parts"):
        open_dataset(shards)
    with pytest.raises(DataError, match="holds shards of another split"):
        run(options(tmp_path, str(corpus), "s", shard="0/3"))
    with pytest.raises(DataError, match="holds a prepared dataset, not shards"):
        run(options(tmp_path, str(corpus), "s/shard-0001-of-0003", shard="0/2"))
    with pytest.raises(DataError, match="holds the shards of a dataset"):
        PreparedDataset.open(shards)  # `eval`, `--tokenizer`: one dataset, with a hint


def test_a_shard_needs_a_fixed_tokenizer_and_a_valid_part(tmp_path):
    result = runner.invoke(app, ["prepare", "--shard", "0/2", "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "--shard needs a fixed --tokenizer" in result.stderr and "--tokenizer data/tok" in result.stderr
    for bad, message in (("2/2", "counts from 0 to N-1"), ("x", "is not I/N"), ("0/0", "counts from 0")):
        result = runner.invoke(app, ["prepare", "--shard", bad, "--tokenizer", "gpt2", "-o", str(tmp_path / "x")])
        assert result.exit_code == 1 and message in result.stderr, result.stderr
    with pytest.raises(ConfigError, match="counts from 0 to N-1"):
        PrepareConfig(shard="3/3", tokenizer="gpt2").validate()
    assert not (tmp_path / "x").exists()


def test_training_on_a_directory_of_shards_resumes_exactly(tmp_path, corpus, one_thread):
    for i in range(2):
        run(options(tmp_path, str(corpus), "shards", val_fraction=0.2, shard=f"{i}/2"))
    data = tmp_path / "shards"
    config = tiny_run(data, tmp_path / "whole", max_steps=6, batch_size=2, seq_len=32, eval_interval=3,
                      save_interval=100, sample_tokens=0)
    whole = train(config)
    assert whole.step == 6

    def ctrl_c_at_step_2(event):
        if isinstance(event, StepReport) and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    assert train(replace(config, out=str(cut)), subscribers=[ctrl_c_at_step_2]).step == 3
    checkpoint = load_resume_checkpoint(cut)
    assert checkpoint.training.dataset.path == str(data)
    train(resume_config(checkpoint, {}), resume=checkpoint)
    losses = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in resumed if r["type"] == "train"] == pytest.approx(
        [r.get("loss") for r in losses if r["type"] == "train"], rel=1e-6)
    a, b = load_checkpoint(tmp_path / "whole" / "last.pth"), load_checkpoint(cut / "last.pth")
    for key, value in a.model_state.items():
        torch.testing.assert_close(b.model_state[key], value, rtol=1e-6, atol=1e-7)

    # eval finds the directory of shards the checkpoint was trained on, and scores every shard's val tokens
    scored = runner.invoke(app, ["eval", str(tmp_path / "whole" / "last.pth"), "--max-tokens", "64"])
    assert scored.exit_code == 0, scored.stderr
    val = EvalText.from_dataset(data).ids
    parts = [PreparedDataset.open(data / f"shard-000{i}-of-0002").tokens("val") for i in range(2)]
    assert val.tolist() == [*parts[0].tolist(), *parts[1].tolist()]

    meta_file = data / "shard-0001-of-0002" / "meta.json"  # a shard prepared again, differently
    meta = json.loads(meta_file.read_text())
    meta["splits"]["train"]["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    result = runner.invoke(app, ["train", "--resume", str(cut), "--max-steps", "8"])
    assert result.exit_code == 1 and "is not the dataset" in result.stderr and "train tokens differ" in result.stderr
