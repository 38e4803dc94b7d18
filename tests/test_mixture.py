"""prepare -d SRC:WEIGHT -d ...: sources interleaved by bytes in their proportions, a --max-bytes
cap split by the weights, a source that runs out reported while the others go on, and per-source
documents, bytes and tokens in meta.json that add up to the splits."""

import json
import random

import pytest
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import PrepareConfig, parse_weighted
from gpt2es_cli.data.mixture import MixtureSource, mixture_weights, open_sources
from gpt2es_cli.data.prepare import prepare
from gpt2es_cli.data.sources import Source
from gpt2es_cli.errors import ConfigError

WORDS = "casa perro gato luna sol mar río monte árbol flor camino noche día viento".split()


def write_corpus(directory, tag, lines, seed):
    r = random.Random(seed)
    directory.mkdir(parents=True)
    text = "".join(f"{tag} {' '.join(r.choice(WORDS) for _ in range(30))} {i}\n" for i in range(lines))
    (directory / "text.txt").write_text(text, encoding="utf-8")


@pytest.fixture
def corpora(tmp_path):
    write_corpus(tmp_path / "big", "GRANDE", 2000, 0)  # ~400 kB
    write_corpus(tmp_path / "small", "PEQUEÑO", 150, 1)  # ~30 kB
    return tmp_path


def options(corpora, *datasets, **kw):
    settings = dict(dataset=tuple(str(corpora / d) for d in datasets), out=corpora / "out", txt_mode="line",
                    vocab_size=300, num_proc=1)
    return PrepareConfig(**{**settings, **kw})


def run(opts):
    return prepare(open_sources(opts), opts).meta


class ListSource(Source):
    def __init__(self, name, docs):
        super().__init__()
        self.name, self.docs = name, docs

    def documents(self):
        yield from self.docs

    def describe(self):
        return {"kind": "list", "name": self.name}


def test_documents_interleave_by_bytes_in_the_given_proportions():
    a = ListSource("a", ["a" * 10] * 100)
    b = ListSource("b", ["b" * 30] * 100)
    mix = MixtureSource([(a, 0.75), (b, 0.25)])
    docs = list(mix.documents())
    assert len(docs) == 200  # nothing lost, nothing repeated
    first = docs[:40]
    a_bytes = sum(len(d) for d in first if d[0] == "a")
    b_bytes = sum(len(d) for d in first if d[0] == "b")
    assert abs(a_bytes / (a_bytes + b_bytes) - 0.75) < 0.05  # by bytes, not by documents
    assert docs == list(mix.documents())  # deterministic, and each pass starts over
    assert mix.exhausted_at[0] is not None and mix.exhausted_at[1] is not None


def test_weights_parse_and_bad_ones_are_one_line_errors():
    assert parse_weighted("wikipedia:0.6") == ("wikipedia", 0.6)
    assert parse_weighted("owner/name") == ("owner/name", None)
    assert parse_weighted(r"C:\corpus") == (r"C:\corpus", None)
    assert mixture_weights(["a:3", "b:1"]) == [("a", 0.75), ("b", 0.25)]
    assert mixture_weights(["a", "b"]) == [("a", 0.5), ("b", 0.5)]
    for bad, message in ((["a:0.5", "b"], "every source a weight or none"), (["a:nan"], "finite number > 0"),
                         (["a:-1"], "finite number > 0"), (["a:0"], "finite number > 0"), (["a:inf"], "finite"),
                         (["a:1", "a:2"], "given twice")):
        with pytest.raises(ConfigError, match=message):
            mixture_weights(bad) if len(bad) > 1 else parse_weighted(bad[0])


def test_a_capped_mixture_takes_each_source_in_its_share_and_counts_tokens_per_source(corpora):
    meta = run(options(corpora, "big:0.7", "small:0.3", max_bytes=60_000))
    source = meta["source"]
    assert source["kind"] == "mixture" and [p["weight"] for p in source["parts"]] == [0.7, 0.3]
    read = [p["read"]["bytes"] for p in source["parts"]]
    assert sum(read) >= 60_000 and abs(read[0] / sum(read) - 0.7) < 0.01
    assert not any(p["ran_out"] for p in source["parts"])
    for split in ("train", "val"):
        written = [p["written"][split] for p in source["parts"]]
        for key in ("documents", "bytes", "tokens"):
            assert sum(w[key] for w in written) == meta["splits"][split][key]
    again = run(options(corpora, "big:0.7", "small:0.3", max_bytes=60_000, force=True))
    assert again["splits"]["train"]["sha256"] == meta["splits"]["train"]["sha256"]  # deterministic


def test_a_source_that_runs_out_is_reported_and_the_others_go_on(corpora):
    meta = run(options(corpora, "big:0.5", "small:0.5"))
    big, small = meta["source"]["parts"]
    assert small["ran_out"] and small["ran_out_after_bytes"] == pytest.approx(2 * small["read"]["bytes"], rel=0.02)
    assert big["ran_out"] and big["read"]["bytes"] == (corpora / "big" / "text.txt").stat().st_size
    assert small["read"]["bytes"] == (corpora / "small" / "text.txt").stat().st_size  # all of it, once


def test_one_source_keeps_the_plain_behaviour(corpora):
    single = run(options(corpora, "big", max_bytes=50_000))
    assert single["source"]["kind"] == "local" and "parts" not in single["source"]
    weighted = run(options(corpora, "big:1", max_bytes=50_000, force=True))  # a lone weight is no mixture
    assert weighted["splits"] == single["splits"]


def test_cli_mixture_summary_and_output_name(corpora, monkeypatch):
    monkeypatch.chdir(corpora)
    result = CliRunner().invoke(app, ["prepare", "-d", "big/:0.8", "-d", "small/:0.2", "--txt-mode", "line",
                                      "--vocab-size", "300", "--max-bytes", "50KB"])
    assert result.exit_code == 0, result.output
    assert "Sources (mixed by bytes)" in result.stdout and "0.80" in result.stdout, result.stdout
    meta = json.loads((corpora / "data" / "big-small" / "meta.json").read_text())
    assert meta["arguments"]["dataset"] == ["big/:0.8", "small/:0.2"]
    bad = CliRunner().invoke(app, ["prepare", "-d", "big/:0.8", "-d", "small/", "-o", "x"])
    assert bad.exit_code == 1 and bad.stderr.count("error:") == 1 and "every source a weight" in bad.stderr
    assert not (corpora / "x").exists()
