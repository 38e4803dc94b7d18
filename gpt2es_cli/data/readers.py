"""Local file formats: one reader per format, chosen by the file's suffix through `FORMATS`.

A reader turns one open file into a stream of raw document strings. Formats: .txt, .jsonl/.json,
.csv, .parquet (all but Parquet also as .gz or .zst). Adding a format is one reader function and
one `FORMATS` entry per suffix; the error messages list the formats from `FORMATS`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gpt2es_cli.data.clean import HygieneCounts, decode_utf8
from gpt2es_cli.errors import DataError

MAX_DOC_CHARS = 16 * 2**20
"""A longer document (say, a 2 GB .txt in `file` mode) is cut at line breaks into pieces this
big, so memory stays bounded whatever the input."""
DEFAULT_TEXT_COLUMNS = ("text", "content")
"""Tried in order when --text-column is not given (OSCAR calls its text `content`)."""


@dataclass
class OpenFile:
    """One local file as a reader gets it: the stored bytes, how to read them, where to count."""

    path: Path
    raw: BinaryIO
    """The file as stored (compressed or not)."""
    compression: str | None
    txt_mode: str
    text_column: str | None
    counts: HygieneCounts
    """Undecodable bytes, skipped records and cut documents are counted here."""
    read_bytes: int | None = None
    """How far into `raw` a reader that seeks on its own (Parquet) has got; None: `raw.tell()` says."""
    stream: io.BufferedIOBase = field(init=False, repr=False)
    """`raw` decompressed, open while the file is read (closing a decompressor closes `raw`)."""

    def __post_init__(self) -> None:
        self.stream = _decompress(self.raw, self.compression)

    def offset(self) -> int:
        """Bytes of the stored file read so far."""
        return self.raw.tell() if self.read_bytes is None else self.read_bytes

    def byte_lines(self) -> Iterator[bytes]:
        """The decompressed content a line at a time (at most MAX_DOC_CHARS bytes a piece)."""
        return iter(lambda: self.stream.readline(MAX_DOC_CHARS), b"")

    def decode(self, lines: Iterable[bytes]) -> Iterator[str]:
        """Lines as text; undecodable bytes are replaced and counted."""
        for raw in lines:
            text, bad = decode_utf8(raw)
            if bad:
                self.counts.undecodable_bytes += bad
            yield text


Reader = Callable[[OpenFile], Iterator[str]]


def read_txt(file: OpenFile) -> Iterator[str]:
    """How a .txt file splits into documents (--txt-mode): at blank lines, one per line, or one per file."""
    mode = file.txt_mode
    buf: list[str] = []
    size = 0
    for line in file.decode(file.byte_lines()):
        if mode == "line":
            if line.strip():
                yield line
            continue
        if mode == "blank" and not line.strip():
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            continue
        buf.append(line)
        size += len(line)
        if size >= MAX_DOC_CHARS:
            file.counts.long_documents_split += 1
            yield "".join(buf)
            buf, size = [], 0
    if buf:
        yield "".join(buf)


def read_jsonl(file: OpenFile) -> Iterator[str]:
    """JSON Lines: one record a line."""
    return _jsonl(file, file.byte_lines())


def read_json(file: OpenFile) -> Iterator[str]:
    """A JSON array of records (read whole: use JSON Lines for big files) or JSON Lines."""
    lines = file.byte_lines()
    head: list[bytes] = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    if head and head[-1].lstrip().startswith(b"["):
        text, bad = decode_utf8(b"".join([*head, *lines]))
        file.counts.undecodable_bytes += bad
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{file.path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return _records(file, data)
    return _jsonl(file, _chain(head, lines))


def read_csv(file: OpenFile) -> Iterator[str]:
    """CSV with a header row."""
    csv.field_size_limit(MAX_DOC_CHARS)
    reader = csv.DictReader(file.decode(file.byte_lines()))
    try:
        yield from _records(file, reader)
    except csv.Error as e:
        raise DataError(f"{file.path} is not valid CSV ({e})") from None


def read_parquet(file: OpenFile) -> Iterator[str]:
    """A Parquet file's text column, in batches of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file.raw)
    except pa.ArrowException as e:
        raise DataError(f"{file.path} is not a readable Parquet file ({e})") from None
    column = pick_text_column(file.text_column, pf.schema_arrow.names, str(file.path))
    rows = max(pf.metadata.num_rows, 1)
    size = file.path.stat().st_size
    seen = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[column]):
        for text in batch.column(0).to_pylist():
            seen += 1
            file.read_bytes = size * seen // rows
            if isinstance(text, str):
                yield text
            else:
                file.counts.skipped_records += 1


@dataclass(frozen=True)
class Format:
    """A file format: its reader, and whether .gz / .zst copies of such files are read too."""

    read: Reader
    compressible: bool = True


FORMATS: dict[str, Format] = {
    ".txt": Format(read_txt),
    ".text": Format(read_txt),
    ".jsonl": Format(read_jsonl),
    ".ndjson": Format(read_jsonl),
    ".json": Format(read_json),
    ".csv": Format(read_csv),
    ".parquet": Format(read_parquet, compressible=False),  # Parquet compresses itself
}
"""Each readable suffix (lower case) and its format; the first suffix of a format names it in messages."""
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}


def format_of(path: Path) -> tuple[Format | None, str | None]:
    """(format, compression) from the file name, e.g. (the JSON Lines format, 'zstd') for x.jsonl.zst."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is not None and compression and not fmt.compressible:
        return None, None
    return fmt, compression


def known_suffixes() -> str:
    """Every suffix a file can end in to be read, e.g. '.csv/.gz/.json/...'."""
    return "/".join(sorted({*FORMATS, *COMPRESSIONS}))


def format_names() -> str:
    """The formats by their first suffix, for a user: '.txt, .jsonl, ... or .parquet (.gz/.zst ok)'."""
    names: dict[Reader, str] = {}
    for suffix, fmt in FORMATS.items():
        names.setdefault(fmt.read, suffix)
    compressions: dict[str, str] = {}
    for suffix, compression in COMPRESSIONS.items():
        compressions.setdefault(compression, suffix)
    *most, last = names.values()
    return f"{', '.join(most)} or {last} ({'/'.join(compressions.values())} ok)"


def pick_text_column(wanted: str | None, columns: list[str], where: str) -> str:
    """The column or field that holds the text: `wanted` (--text-column), else the first of DEFAULT_TEXT_COLUMNS."""
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(f"{where} has no column {wanted!r} (it has: {', '.join(map(str, columns))}): fix --text-column")
    for c in DEFAULT_TEXT_COLUMNS:
        if c in columns:
            return c
    raise DataError(
        f"{where} has no 'text' or 'content' column (it has: {', '.join(map(str, columns))}): pass --text-column"
    )


def zstd_error() -> type[Exception]:
    """The exception a damaged .zst file raises (zstandard is imported only when needed)."""
    import zstandard

    return zstandard.ZstdError


def _records(file: OpenFile, records: Iterable[Any]) -> Iterator[str]:
    column = None
    for rec in records:
        if isinstance(rec, str) and file.text_column is None:
            yield rec
            continue
        if column is None:
            if not isinstance(rec, dict):
                raise DataError(f"{file.path}: records are {type(rec).__name__}s, not objects with a text field")
            column = pick_text_column(file.text_column, list(rec), str(file.path))
        text = rec.get(column) if isinstance(rec, dict) else None
        if isinstance(text, str):
            yield text
        else:
            file.counts.skipped_records += 1


def _jsonl(file: OpenFile, lines: Iterable[bytes]) -> Iterator[str]:
    def records() -> Iterator[Any]:
        parsed = 0
        for number, line in enumerate(file.decode(lines), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if parsed == 0:
                    raise DataError(
                        f"{file.path} line {number} is not JSON ({e.msg}): use JSON Lines, one object a line"
                    ) from None
                file.counts.skipped_records += 1  # e.g. a truncated last line
                continue
            parsed += 1
            yield rec

    return _records(file, records())


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def _decompress(raw: BinaryIO, compression: str | None) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]
