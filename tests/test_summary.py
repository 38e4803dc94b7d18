"""What `inspect DATA_DIR` computes (data/summary.py) and prints (cli/render_data.py)."""

import numpy as np
import pytest
from rich.console import Console

from gpt2es_cli.cli.render_data import render_dataset_summary
from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data import summary as summary_module
from gpt2es_cli.data.prepare import prepare
from gpt2es_cli.data.sources import resolve_source
from gpt2es_cli.data.summary import describe_dataset, document_lengths

EOS = 9


def test_document_lengths_exact():
    tokens = np.array([1, 2, EOS, 3, EOS, 4, 5, 6, EOS, EOS], dtype=np.uint16)
    stats = document_lengths(tokens, EOS, np.random.default_rng(0))
    assert (stats.documents, stats.minimum, stats.maximum, stats.sampled) == (4, 0, 3, False)
    assert stats.mean == pytest.approx(1.5) and stats.median == pytest.approx(1.5)
    assert document_lengths(np.zeros(0, dtype=np.uint16), EOS, np.random.default_rng(0)) is None


def test_document_lengths_across_chunks_and_sampled(monkeypatch):
    lengths = np.random.default_rng(1).integers(1, 30, size=2000)
    tokens = np.concatenate([np.concatenate([np.ones(n, dtype=np.uint16), [EOS]]) for n in lengths])
    monkeypatch.setattr(summary_module, "CHUNK_TOKENS", 1000)  # whole scan, documents crossing chunks
    whole = document_lengths(tokens, EOS, np.random.default_rng(0))
    assert whole.documents == 2000 and whole.maximum == lengths.max() and whole.mean == pytest.approx(lengths.mean())
    monkeypatch.setattr(summary_module, "SCAN_TOKENS", 8000)  # sampled: 8 chunks of 1000 tokens
    sampled = document_lengths(tokens, EOS, np.random.default_rng(0))
    assert sampled.sampled and 8 * 1000 / 40 < sampled.documents < 8 * 1000 / 10
    assert abs(sampled.mean - lengths.mean()) < 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("summary") / "demo"
    source = resolve_source("demo", max_bytes=60_000)
    prepare(source, PrepareConfig(out=out, vocab_size=400, num_proc=1, val_fraction=0.05))
    return out


def test_describe_dataset(dataset):
    s = describe_dataset(dataset, seed=1, window_tokens=50, verify=True)
    meta = s.meta
    assert s.bad_checksums == []
    assert s.lengths["train"].documents == meta["splits"]["train"]["documents"]
    assert s.lengths["val"].documents == meta["splits"]["val"]["documents"]
    mean_tokens = (meta["splits"]["train"]["tokens"] - meta["splits"]["train"]["documents"]) / s.lengths[
        "train"
    ].documents
    assert s.lengths["train"].mean == pytest.approx(mean_tokens)
    assert s.window.tokens == 50 and s.window.text
    assert describe_dataset(dataset, seed=1, window_tokens=50).window == s.window  # seeded
    assert describe_dataset(dataset, seed=2, window_tokens=50).window.start != s.window.start


def _rendered(summary) -> list[list[str]]:
    """The rendered summary, a list of cells per line (a title or the window's text: one cell)."""
    console = Console(record=True, width=140)
    render_dataset_summary(summary, console)
    lines = [line.strip() for line in console.export_text().splitlines()]
    return [[c.strip() for c in line.strip("│┃").split("│" if "│" in line else "┃")] for line in lines if line]


def _row(cells: list[list[str]], label: str) -> list[str]:
    """The cells after `label` on the one table row that starts with it."""
    found = [row[1:] for row in cells if row[0] == label]
    assert len(found) == 1, (label, cells)
    return found[0]


def test_render_dataset_summary(dataset):
    summary = describe_dataset(dataset, window_tokens=400, verify=True)
    cells = _rendered(summary)
    for title in ("Dataset", "Splits", "Document length (tokens)", "Tokenizer fertility", "Text hygiene", "Source",
                  "Arguments"):
        assert [title] in cells, title
    assert _row(cells, "checksums") == ["ok"]
    assert ["tokenizer", "trained BPE (400 tokens)"] in cells and ["tokenizer", "train"] in cells  # dataset; arguments
    assert _row(cells, "kind") == ["demo"] and _row(cells, "vocab_size") == ["400"]
    train = summary.meta["splits"]["train"]
    splits, lengths = [row for row in cells if row[0] == "train"]  # the Splits table, then Document length
    assert (splits[1], splits[3]) == (f"{train['documents']:,}", f"{train['tokens']:,}")
    assert lengths[1] == f"{train['documents']:,}"
    assert any(row[0].startswith("╭─ 400 tokens of train from position") for row in cells)


def test_a_changed_token_file_is_named_as_a_mismatch(dataset):
    data = (dataset / "val.bin").read_bytes()
    (dataset / "val.bin").write_bytes(bytes([data[0] ^ 1]) + data[1:])
    assert _row(_rendered(describe_dataset(dataset, verify=True)), "checksums") == ["MISMATCH: val"]  # the split whose file changed


def test_inspect_command_on_a_dataset(dataset):
    """`gpt2es inspect DATA_DIR` (cli/inspect.py) through describe_dataset and render_dataset_summary."""
    import json

    from typer.testing import CliRunner

    from gpt2es_cli.cli import app

    result = CliRunner().invoke(app, ["inspect", str(dataset), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Document length (tokens)" in result.stdout and "tokens of train from position" in result.stdout
    as_json = CliRunner().invoke(app, ["inspect", str(dataset), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["meta"]["format"] == "gpt2es-dataset" and data["lengths"]["val"]["documents"] >= 1
