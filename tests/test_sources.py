"""Sources: name resolution (no network), every local format, the demo tales, Hub errors offline."""

import gzip
import json
import os

import pytest
import zstandard

from gpt2es_cli.data import readers
from gpt2es_cli.data.sources import (
    DemoSource,
    FilesSource,
    HubSource,
    SavedDatasetSource,
    resolve_source,
)
from gpt2es_cli.errors import ConfigError, DataError

TXT = "Había una vez un niño.\r\nVivía junto al río.\n\n¿Dónde está?\n   \n¡Aquí!\n"


def docs(source) -> list[str]:
    return list(source.documents())


# --- resolution -------------------------------------------------------------------------------


def test_named_hub_datasets_resolve_without_network():
    wiki = resolve_source("wikipedia")
    assert isinstance(wiki, HubSource)
    assert (wiki.path, wiki.config, wiki.split, wiki.text_column) == (
        "wikimedia/wikipedia",
        "20231101.es",
        "train",
        "text",
    )
    assert resolve_source("wikipedia", subset="20231101.ca").config == "20231101.ca"

    oscar = resolve_source("oscar")
    assert oscar.path == "json"  # OSCAR-2301 has a loading script: read its files with the json builder
    assert oscar.data_files == "hf://datasets/oscar-corpus/OSCAR-2301/es_meta/*.jsonl.zst"
    assert oscar.text_column == "content" and oscar.gated
    assert oscar.describe()["data_files"] == oscar.data_files

    other = resolve_source("someone/spanish-news", subset="es", split="validation", text_column="body")
    assert (other.path, other.config, other.split, other.text_column) == (
        "someone/spanish-news",
        "es",
        "validation",
        "body",
    )


def test_resolution_errors():
    with pytest.raises(DataError, match="unknown dataset 'wiki'"):
        resolve_source("wiki")
    with pytest.raises(DataError, match="does not exist"):
        resolve_source("./missing.txt")
    with pytest.raises(DataError, match="does not exist"):
        resolve_source("corpus.jsonl")  # a known suffix means a local path, not a Hub name
    with pytest.raises(ConfigError, match="--subset does not apply"):
        resolve_source("oscar", subset="ca")
    with pytest.raises(ConfigError, match="Hub datasets only"):
        resolve_source("demo", subset="x")
    with pytest.raises(ConfigError, match="--txt-mode"):
        resolve_source("demo", txt_mode="paragraph")


@pytest.mark.parametrize("name", ["wikipedia", "oscar", "someone/spanish-news"])
def test_unreachable_hub_says_so_and_suggests_a_local_path(name):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py: never the network
    with pytest.raises(DataError, match="cannot reach the Hugging Face Hub") as e:
        docs(resolve_source(name))
    assert "--dataset PATH" in str(e.value) and "\n" not in str(e.value)
    if name == "someone/spanish-news":
        assert "if you meant a local path" in str(e.value)


def test_hub_error_messages():
    from datasets.exceptions import DatasetNotFoundError

    oscar = resolve_source("oscar")
    gated = oscar._error(DatasetNotFoundError("Dataset 'x' is a gated dataset on the Hub. You must be authenticated."))
    assert "hf auth login" in str(gated) and "OSCAR-2301" in str(gated)
    missing = resolve_source("nobody/nothing")._error(DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist"))
    assert "not found on the Hub" in str(missing)


def test_hub_source_streams_oscar_like_records(tmp_path):
    """The code path of `--dataset oscar` (json builder, .jsonl.zst, 'content'), on a local file."""
    records = [{"content": "Primer documento.", "warc_headers": {"warc-type": "conversion"}}, {"content": "¿Segundo?"}]
    path = write(tmp_path / "es_meta_part_1.jsonl.zst", "\n".join(json.dumps(r) for r in records).encode(), "zst")
    source = HubSource("oscar-like", "json", data_files=str(path), text_column="content")
    assert docs(source) == ["Primer documento.", "¿Segundo?"]
    with pytest.raises(DataError, match="no column 'body'"):
        docs(HubSource("oscar-like", "json", data_files=str(path), text_column="body"))


# --- demo -------------------------------------------------------------------------------------


def test_demo_is_spanish_deterministic_and_sized():
    first = docs(resolve_source("demo", seed=3, max_bytes=30_000))
    assert first == docs(DemoSource(seed=3, max_bytes=30_000))
    assert first != docs(DemoSource(seed=4, max_bytes=30_000))
    size = sum(len(d.encode()) for d in first)
    assert 25_000 < size < 40_000
    text = " ".join(first)
    assert "Había una vez" in text and any(c in text for c in "ñáéíóú")


# --- local files ------------------------------------------------------------------------------


def write(path, data: bytes, compression: str | None = None):
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
def test_txt_modes_and_compression(tmp_path, compression):
    name = "a.txt" + (f".{compression}" if compression else "")
    path = write(tmp_path / name, TXT.encode(), compression)
    blank = docs(resolve_source(str(path)))
    assert [d.strip() for d in blank] == ["Había una vez un niño.\r\nVivía junto al río.", "¿Dónde está?", "¡Aquí!"]
    lines = docs(resolve_source(str(path), txt_mode="line"))
    assert [d.strip() for d in lines] == ["Había una vez un niño.", "Vivía junto al río.", "¿Dónde está?", "¡Aquí!"]
    assert docs(resolve_source(str(path), txt_mode="file")) == [TXT]
    source = resolve_source(str(path))
    docs(source)
    assert source.position == source.total_bytes == path.stat().st_size


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    path = write(tmp_path / "bad.txt", "niño ".encode() + b"\xff\xc3" + b" fin\n")
    source = resolve_source(str(path))
    assert docs(source) == ["niño \ufffd\ufffd fin\n"]
    assert source.counts.undecodable_bytes == 2


def test_overlong_documents_are_cut(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_DOC_CHARS", 10)
    path = write(tmp_path / "long.txt", b"uno dos tres\ncuatro\ncinco seis siete ocho\n")
    source = resolve_source(str(path), txt_mode="file")
    pieces = docs(source)
    assert "".join(pieces) == "uno dos tres\ncuatro\ncinco seis siete ocho\n"
    assert len(pieces) > 1 and source.counts.long_documents_split == len(pieces) - 1


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
def test_jsonl(tmp_path, compression):
    lines = [{"id": 1, "text": "uno"}, {"id": 2, "text": None}, {"id": 3, "text": "tres"}]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines) + '{"id": 4, "te'
    path = write(tmp_path / ("x.jsonl" + (f".{compression}" if compression else "")), data.encode(), compression)
    source = resolve_source(str(path))
    assert docs(source) == ["uno", "tres"]
    assert source.counts.skipped_records == 2  # the null and the truncated last line
    assert docs(resolve_source(str(path), text_column="id")) == []  # numbers are not text


def test_json_columns_and_errors(tmp_path):
    oscar_like = write(tmp_path / "o.jsonl", b'{"content": "hola", "warc_headers": {}}\n')
    assert docs(resolve_source(str(oscar_like))) == ["hola"]  # 'content' when there is no 'text'
    with pytest.raises(DataError, match=r"no column 'body' \(it has: content, warc_headers\)"):
        docs(resolve_source(str(oscar_like), text_column="body"))
    no_text = write(tmp_path / "n.jsonl", b'{"a": "x"}\n')
    with pytest.raises(DataError, match="pass --text-column"):
        docs(resolve_source(str(no_text)))
    broken = write(tmp_path / "b.jsonl", b"not json\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        docs(resolve_source(str(broken)))


def test_json_array(tmp_path):
    records = write(tmp_path / "r.json", json.dumps([{"text": "uno"}, {"text": "dos"}]).encode())
    assert docs(resolve_source(str(records))) == ["uno", "dos"]
    strings = write(tmp_path / "s.json.gz", json.dumps(["ñu", "¿sí?"], ensure_ascii=False).encode(), "gz")
    assert docs(resolve_source(str(strings))) == ["ñu", "¿sí?"]


def test_csv(tmp_path):
    data = 'id,text\n1,"Primera línea\nsegunda, con coma"\n2,¡Hola!\n'.encode()
    for name, compression in (("t.csv", None), ("t.csv.gz", "gz")):
        path = write(tmp_path / name, data, compression)
        assert docs(resolve_source(str(path))) == ["Primera línea\nsegunda, con coma", "¡Hola!"]
    with pytest.raises(DataError, match="no column 'body'"):
        docs(resolve_source(str(tmp_path / "t.csv"), text_column="body"))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["uno", None, "tres"], "n": [1, 2, 3]}), path)
    source = resolve_source(str(path))
    assert docs(source) == ["uno", "tres"]
    assert source.counts.skipped_records == 1 and source.position == source.total_bytes
    with pytest.raises(DataError, match=r"no column 'body' \(it has: text, n\)"):
        docs(resolve_source(str(path), text_column="body"))


def test_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["uno", "dos"]}).save_to_disk(tmp_path / "single")
    source = resolve_source(str(tmp_path / "single"))
    assert isinstance(source, SavedDatasetSource) and docs(source) == ["uno", "dos"]

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"body": ["a"]}), "test": datasets.Dataset.from_dict({"body": ["b"]})}
    )
    dd.save_to_disk(tmp_path / "dict")
    assert docs(resolve_source(str(tmp_path / "dict"), text_column="body")) == ["a"]
    assert docs(resolve_source(str(tmp_path / "dict"), split="test", text_column="body")) == ["b"]
    with pytest.raises(DataError, match="has splits train, test"):
        docs(resolve_source(str(tmp_path / "dict"), split="validation", text_column="body"))


def test_directory_glob_and_unsupported(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    write(root / "b.txt", b"bee\n")
    write(root / "sub" / "a.jsonl.gz", b'{"text": "aaa"}\n', "gz")
    write(root / "notes.pdf", b"%PDF")
    (root / ".hidden").mkdir()
    write(root / ".hidden" / "h.txt", b"hidden\n")
    source = resolve_source(str(root))
    assert isinstance(source, FilesSource)
    assert [p.name for p in source.files] == ["b.txt", "a.jsonl.gz"]
    assert docs(source) == ["bee\n", "aaa"]
    assert docs(resolve_source(str(root / "**" / "*.gz"))) == ["aaa"]

    with pytest.raises(DataError, match="no files match"):
        resolve_source(str(root / "*.csv"))
    with pytest.raises(DataError, match="unsupported file type"):
        resolve_source(str(root / "notes.pdf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable text files"):
        resolve_source(str(tmp_path / "empty"))


def test_damaged_compressed_file(tmp_path):
    path = write(tmp_path / "x.txt.gz", gzip.compress(b"hola\n" * 1000)[:-30])
    with pytest.raises(DataError, match="is the file damaged"):
        docs(resolve_source(str(path)))
