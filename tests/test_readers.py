"""File formats: every suffix in FORMATS has a reader, the messages list them, a new format is one entry."""

import gzip

import pytest

from gpt2es_cli.data.readers import COMPRESSIONS, FORMATS, Format, OpenFile, format_names, format_of
from gpt2es_cli.data.sources import FilesSource, resolve_source
from gpt2es_cli.errors import DataError


def test_every_suffix_has_a_reader(tmp_path):
    for suffix, fmt in FORMATS.items():
        assert suffix.startswith(".") and suffix == suffix.lower()
        assert callable(fmt.read)
        assert format_of(tmp_path / f"x{suffix.upper()}") == (fmt, None)
        for compressed, compression in COMPRESSIONS.items():
            expected = (fmt, compression) if fmt.compressible else (None, None)
            assert format_of(tmp_path / f"x{suffix}{compressed}") == expected


def test_messages_list_every_format(tmp_path):
    assert format_names() == ".txt, .jsonl, .json, .csv or .parquet (.gz/.zst ok)"
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError) as unsupported:
        resolve_source(str(tmp_path / "notes.pdf"))
    for fmt in FORMATS.values():  # each format by (at least) one of its suffixes
        assert any(s in str(unsupported.value) for s, other in FORMATS.items() if other.read is fmt.read)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as empty:
        resolve_source(str(tmp_path / "empty"))
    for suffix in [*FORMATS, *COMPRESSIONS]:
        assert suffix in str(empty.value)


def test_a_new_format_is_one_reader_and_one_entry(tmp_path, monkeypatch):
    def read_shouting(file: OpenFile):
        for line in file.decode(file.byte_lines()):
            if line.strip():
                yield line.strip().upper()

    monkeypatch.setitem(FORMATS, ".shout", Format(read_shouting))
    (tmp_path / "a.shout.gz").write_bytes(gzip.compress(b"hola\n\nadios\n"))
    source = resolve_source(str(tmp_path))
    assert isinstance(source, FilesSource)
    assert list(source.documents()) == ["HOLA", "ADIOS"]
    assert source.position == source.total_bytes
    (tmp_path / "notes.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match=r"\.shout \(\.gz/\.zst ok\)"):
        resolve_source(str(tmp_path / "notes.pdf"))
