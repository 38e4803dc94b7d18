"""prepare: hygiene counts, splits, tokenizers, fertility, atomicity, bad input; the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpt2es_cli.cli import app
from gpt2es_cli.config import PrepareConfig
from gpt2es_cli.data.clean import normalize
from gpt2es_cli.data.dataset import PreparedDataset
from gpt2es_cli.data.prepare import prepare
from gpt2es_cli.data.sources import Source, resolve_source
from gpt2es_cli.errors import ConfigError, DataError, TokenizerError
from gpt2es_cli.tokenizer import Tokenizer

SPANISH_ROUND_TRIP = "¿Dónde está la señora Muñoz? ¡Está en el jardín, comiendo piñones con el niño!"


@pytest.fixture
def corpus(tmp_path, spanish_texts) -> tuple[Path, list[str]]:
    """A JSON Lines corpus: 40 distinct documents plus duplicates, blanks, a short one, bad bytes.
    Returns the file and the cleaned texts that should be kept."""
    n = len(spanish_texts)
    unique = list(spanish_texts)
    unique += [f"{spanish_texts[i]} {spanish_texts[(i + k) % n]}" for k in (1, 2) for i in range(n)]
    unique += [f"{spanish_texts[i]}\n\n{spanish_texts[(i + 3) % n]}" for i in range(n)]
    assert len(unique) == len(set(unique)) == 40
    lines = [json.dumps({"text": t}, ensure_ascii=False).encode() for t in unique]
    lines += [json.dumps({"text": unique[0]}).encode()]  # exact duplicate
    lines += [json.dumps({"text": unique[1].replace(" ", "  ") + "  "}).encode()]  # duplicate once cleaned
    lines += [b'{"text": "   \\u0000 "}', b'{"text": ""}']  # empty after cleaning
    lines += [b'{"text": "S\\u00ed."}']  # shorter than --min-chars 5
    lines += [b'{"text": "Una l\xednea con un byte roto y un \\u0007 timbre."}']  # bad byte, control char
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    kept = [*unique, "Una l\ufffdnea con un byte roto y un timbre."]
    return path, kept


def options(out: Path, **kw) -> PrepareConfig:
    defaults = dict(vocab_size=300, num_proc=1, min_chars=5, val_fraction=0.1)
    return PrepareConfig(out=out, **{**defaults, **kw})


def documents(ds: PreparedDataset, split: str) -> list[str]:
    tok = ds.tokenizer()
    ids = ds.tokens(split)
    ends = np.flatnonzero(ids == tok.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(ids[s:e].tolist()) for s, e in zip(starts, ends, strict=True)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_prepare_cleans_dedups_splits_and_round_trips(tmp_path, corpus):
    path, kept = corpus
    result = prepare(resolve_source(str(path)), options(tmp_path / "out"))
    h = result.meta["hygiene"]
    assert (h["documents_read"], h["documents_kept"], h["duplicates"], h["empty"], h["too_short"]) == (46, 41, 2, 2, 1)
    assert (h["undecodable_bytes"], h["control_chars_removed"]) == (1, 2)  # NUL in a blank one, BEL

    ds = PreparedDataset.open(tmp_path / "out")
    train, val = documents(ds, "train"), documents(ds, "val")
    assert sorted(train + val) == sorted(normalize(t)[0] for t in kept)  # every kept document, exactly once
    assert val and train and not set(train) & set(val)
    assert ds.meta["splits"]["val"]["documents"] == len(val)
    assert ds.meta["seed"] == 0 and ds.meta["val_fraction"] == 0.1
    assert ds.meta["source"]["kind"] == "local" and ds.meta["arguments"]["min_chars"] == 5
    assert ds.meta["tokenizer"]["origin"] == "trained" and ds.dtype == np.uint16
    assert ds.verify() == []
    assert leftovers(tmp_path) == []


def test_trained_tokenizer_round_trips_spanish(tmp_path, corpus):
    path, _ = corpus
    prepare(resolve_source(str(path)), options(tmp_path / "out"))
    tok = Tokenizer.from_path(tmp_path / "out" / "tokenizer.json")
    assert tok.vocab_size <= 300 and tok.special_tokens == ["<|endoftext|>"]
    for text in (SPANISH_ROUND_TRIP, "ÁÉÍÓÚ áéíóú Ññ ü ¿¡ «comillas» — 1.234,5 €", "emoji 🙂 y 中文 también"):
        assert tok.decode(tok.encode(text)) == text


def test_gpt2_tokenizer_gives_the_known_ids(tmp_path, gpt2_tokenizer_dir):
    src = tmp_path / "en.txt"
    src.write_text("Hello world\n\nHello world again\n\nAnother document here\n", encoding="utf-8")
    result = prepare(
        resolve_source(str(src)), options(tmp_path / "out", tokenizer=str(gpt2_tokenizer_dir), min_chars=1)
    )
    ds = PreparedDataset.open(result.path)
    assert ds.vocab_size == 50257 and ds.meta["eos_id"] == 50256
    ids = np.concatenate([ds.tokens("train"), ds.tokens("val")]).tolist()
    assert "15496,995,50256" in ",".join(map(str, ids))  # "Hello world" + <|endoftext|>
    assert ds.tokenizer().encode("Hello world") == [15496, 995]
    fertility = result.meta["fertility"]["tokenizers"]
    assert [row["name"] for row in fertility] == [f"{gpt2_tokenizer_dir} (50257 tokens)"]


def test_fertility_compares_with_gpt2(tmp_path, corpus, gpt2_tokenizer_dir):
    path, _ = corpus
    result = prepare(resolve_source(str(path)), options(tmp_path / "out", gpt2_tokenizer=gpt2_tokenizer_dir))
    fertility = result.meta["fertility"]
    sample = fertility["sample"]
    ours, gpt2 = fertility["tokenizers"]
    assert gpt2["name"] == "GPT-2" and sample["documents"] == result.meta["splits"]["val"]["documents"]
    assert ours["tokens"] == result.meta["splits"]["val"]["tokens"] - sample["documents"]  # all of val, minus eos
    assert ours["bytes_per_token"] == round(sample["bytes"] / ours["tokens"], 4)
    assert gpt2["tokens_per_word"] == round(gpt2["tokens"] / sample["words"], 4)
    assert gpt2["tokens_per_word"] > 1


def test_split_is_deterministic_and_the_same_with_workers(tmp_path, corpus):
    path, _ = corpus
    shas = []
    for name, kw in (("a", {}), ("b", {}), ("c", {"num_proc": 2}), ("d", {"seed": 1})):
        meta = prepare(resolve_source(str(path)), options(tmp_path / name, **kw)).meta
        shas.append((meta["splits"]["train"]["sha256"], meta["splits"]["val"]["sha256"]))
    assert shas[0] == shas[1] == shas[2]
    assert shas[3] != shas[0]


def test_tiny_corpus_still_gets_a_validation_document(tmp_path):
    src = tmp_path / "two.txt"
    src.write_text("El primer cuento corto.\n\nEl segundo cuento corto.\n", encoding="utf-8")
    meta = prepare(resolve_source(str(src)), options(tmp_path / "out", val_fraction=0.001)).meta
    assert meta["splits"]["train"]["documents"] == 1 and meta["splits"]["val"]["documents"] == 1
    one = tmp_path / "one.txt"
    one.write_text("Un solo documento.\n", encoding="utf-8")
    with pytest.raises(DataError, match="only 1 document"):
        prepare(resolve_source(str(one)), options(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists() and leftovers(tmp_path) == []


def test_caps_and_a_vocabulary_the_text_cannot_fill(tmp_path, corpus):
    path, _ = corpus
    result = prepare(resolve_source(str(path)), options(tmp_path / "out", max_docs=20, vocab_size=5000))
    assert result.meta["hygiene"]["documents_read"] == 20
    tok = result.meta["tokenizer"]
    assert tok["requested_vocab_size"] == 5000 and tok["vocab_size"] < 5000
    capped = prepare(resolve_source(str(path)), options(tmp_path / "out2", max_bytes=1000))
    assert 1000 <= sum(s["bytes"] for s in capped.meta["splits"].values()) < 1400


class Boom(Exception):
    pass


@pytest.mark.parametrize("phase", ["sample", "train", "tokenize"])
def test_interrupted_run_leaves_nothing(tmp_path, corpus, phase):
    path, _ = corpus

    def stop(p):
        if p.phase == phase:
            raise Boom(phase)

    with pytest.raises(Boom):
        prepare(resolve_source(str(path)), options(tmp_path / "out"), stop)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


class FailingSource(Source):
    """A source that breaks after a few documents (a dropped connection, a damaged disk)."""

    name = "failing"

    def documents(self):
        for i in range(50):
            if i == 30:
                raise OSError("disk went away")
            yield f"Documento número {i} con algo de texto."

    def describe(self):
        return {"kind": "test"}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_failing_source_leaves_nothing(tmp_path, num_proc, monkeypatch):
    monkeypatch.setattr("gpt2es_cli.data.passes.BATCH_DOCS", 8)  # several batches in flight
    with pytest.raises(OSError, match="disk went away"):
        prepare(FailingSource(), options(tmp_path / "out", num_proc=num_proc))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_existing_output_and_force(tmp_path, corpus):
    path, _ = corpus
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="use --force"):
        prepare(resolve_source(str(path)), options(out))
    assert (out / "keep.txt").exists()
    prepare(resolve_source(str(path)), options(out, force=True))
    assert not (out / "keep.txt").exists() and (out / "meta.json").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        prepare(resolve_source(str(path)), options(afile))


def test_bad_settings_are_reported_together(tmp_path, corpus):
    path, _ = corpus
    with pytest.raises(ConfigError) as e:
        prepare(resolve_source(str(path)), options(tmp_path / "out", val_fraction=1.0, vocab_size=100))
    assert "--val-fraction" in str(e.value) and "--vocab-size must be >= 257" in str(e.value)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="--val-fraction"):
            options(tmp_path / "out", val_fraction=bad).validate()


def test_empty_inputs(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents: the input is empty"):
        prepare(resolve_source(str(empty)), options(tmp_path / "out"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": " "}\n{"text": "\\u0000"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no text left .* after cleaning: of 2 documents, 2 were empty"):
        prepare(resolve_source(str(blank)), options(tmp_path / "out"))
    assert leftovers(tmp_path) == []


def test_lossy_tokenizer_is_refused(tmp_path, corpus):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    backend = HFTokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1, "Había": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(tmp_path / "words.json"))
    path, _ = corpus
    with pytest.raises(TokenizerError, match="cannot reproduce the text exactly"):
        prepare(resolve_source(str(path)), options(tmp_path / "out", tokenizer=str(tmp_path / "words.json")))
    assert leftovers(tmp_path) == []
    with pytest.raises(TokenizerError, match="neither 'train', 'gpt2', a Hub model id"):
        prepare(resolve_source(str(path)), options(tmp_path / "out", tokenizer="nope.json"))


# --- CLI --------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["prepare", "--out", str(out), "--max-bytes", "150KB", "--vocab-size", "20000"])
    assert result.exit_code == 0, result.output
    assert f"Prepared {out}" in result.stdout
    for heading in ("Splits", "Text hygiene", "Tokenizer fertility", "trained BPE", "20000 asked, the text supports"):
        assert heading in result.stdout
    assert "tokenizer sample..." in result.stderr and "tokenizing..." in result.stderr  # no live display
    assert "\x1b[" not in result.output
    ds = PreparedDataset.open(out)
    assert ds.meta["source"]["kind"] == "demo" and ds.meta["arguments"]["max_bytes"] == 150_000
    assert "Había una vez" in "".join(documents(ds, "train"))


def test_cli_local_file_and_gpt2(tmp_path, corpus, gpt2_tokenizer_dir):
    path, _ = corpus
    out = tmp_path / "out"
    args = ["prepare", "-d", str(path), "-o", str(out), "--tokenizer", str(gpt2_tokenizer_dir), "--min-chars", "5"]
    result = runner.invoke(app, [*args, "--gpt2-tokenizer", str(gpt2_tokenizer_dir), "--num-proc", "1"])
    assert result.exit_code == 0, result.output
    assert "exact duplicates dropped" in result.stdout and PreparedDataset.open(out).vocab_size == 50257
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "use --force" in again.stderr


def test_cli_gpt2_tokenizer_offline_without_cache(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["prepare", "-o", str(tmp_path / "out"), "--tokenizer", "gpt2", "--max-bytes", "5KB"])
    assert result.exit_code == 1
    assert "cannot fetch the GPT-2 tokenizer" in result.stderr and "local directory" in result.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["-d", "missing/dir/file.txt"], "does not exist"),
        (["-d", "not-a-dataset"], "unknown dataset"),
        (["--val-fraction", "1.5"], "--val-fraction must be > 0 and < 1 (got 1.5)"),
        (["--val-fraction", "0"], "--val-fraction must be > 0 and < 1"),
        (["--val-fraction", "nan"], "--val-fraction must be a finite number"),
        (["--min-chars", "-1"], "--min-chars must be >= 0"),
        (["--num-proc", "0"], "--num-proc must be >= 1"),
        (["--txt-mode", "page"], "--txt-mode must be one of blank, line, file"),
        (["--vocab-size", "100"], "--vocab-size must be >= 257"),
        (["--max-bytes", "lots"], "is not a size"),
        (["-d", "someone/corpus"], "cannot reach the Hugging Face Hub"),
        (["-d", "wikipedia"], "cannot reach the Hugging Face Hub"),
        (["--text-column", "body", "-d", "{corpus}"], "no column 'body'"),
        (["-o", "{afile}"], "is a file"),
        (["-d", "{empty_dir}"], "no readable text files"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, corpus, args, message):
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "empty_dir").mkdir()
    fill = {"corpus": str(corpus[0]), "afile": str(afile), "empty_dir": str(tmp_path / "empty_dir")}
    args = [a.format(**fill) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out")]
    result = runner.invoke(app, ["prepare", "--max-bytes", "20KB", "--vocab-size", "300", *args])  # last one wins
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_sizes_and_default_out():
    from gpt2es_cli.settings import parse_size

    assert [parse_size(v, "--max-bytes") for v in ("4MB", "1.5GB", "500k", "2GiB", "123")] == [
        4_000_000,
        1_500_000_000,
        500_000,
        2 * 2**30,
        123,
    ]
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size("lots", "--max-bytes")
    for dataset, out in (
        ("demo", "demo"),
        ("../shared/corpus/es", "es"),
        ("someone/news", "news"),
        ("d/**/*.zst", "d"),
    ):
        assert PrepareConfig(dataset=dataset).output_dir == Path("data") / out
    assert PrepareConfig(dataset="demo", out=Path("x")).output_dir == Path("x")


def test_checkpoint_tokenizer_is_reused(tmp_path, corpus, tiny_checkpoint, tiny_tokenizer):
    """Preparing data to fine-tune a checkpoint: --tokenizer takes the checkpoint itself."""
    path, _ = corpus
    result = prepare(resolve_source(str(path)), options(tmp_path / "out", tokenizer=str(tiny_checkpoint)))
    assert PreparedDataset.open(result.path).tokenizer().to_json() == tiny_tokenizer.to_json()
