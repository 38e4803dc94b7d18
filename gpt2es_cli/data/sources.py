"""Where raw documents come from: the built-in demo tales, the Hugging Face Hub, or local files.

`resolve_source(name, ...)` turns what the user typed after `--dataset` into a `Source` without
touching the network; iterating `Source.documents()` streams raw document strings (each pass
starts over, so a source can be read twice: once to train a tokenizer, once to tokenize).

Local formats: .txt, .jsonl/.json, .csv, .parquet (the first three also as .gz or .zst), a glob,
a directory (searched recursively), or a dataset saved with `datasets`' `save_to_disk`.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, BinaryIO

from gpt2es_cli.config import TXT_MODES, parse_weighted
from gpt2es_cli.data.clean import HygieneCounts, decode_utf8
from gpt2es_cli.demo import DEFAULT_MAX_BYTES
from gpt2es_cli.errors import ConfigError, DataError

"""How a .txt file splits into documents: at blank lines, one per line, or one per file."""
FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
DEFAULT_TEXT_COLUMNS = ("text", "content")
"""Tried in order when --text-column is not given (OSCAR calls its text `content`)."""
MAX_DOC_CHARS = 16 * 2**20
"""A longer document (say, a 2 GB .txt in `file` mode) is cut at line breaks into pieces this
big, so memory stays bounded whatever the input."""


@dataclass(frozen=True)
class HubDataset:
    """How to stream one named corpus with `datasets.load_dataset(..., streaming=True)`."""

    path: str
    config: str | None = None
    data_files: str | None = None
    text_column: str | None = None
    page: str | None = None
    gated: bool = False


HUB_DATASETS = {
    # Spanish Wikipedia, Parquet, no login needed; --subset picks another dump, e.g. 20231101.ca.
    "wikipedia": HubDataset(
        "wikimedia/wikipedia",
        config="20231101.es",
        text_column="text",
        page="https://huggingface.co/datasets/wikimedia/wikipedia",
    ),
    # OSCAR 23.01's Spanish part. The repository still ships a loading script, which `datasets`
    # 4+ refuses to run, so its .jsonl.zst files are read with the packaged `json` builder.
    # Gated: accept the conditions on the page, then `hf auth login` (or set HF_TOKEN).
    "oscar": HubDataset(
        "json",
        data_files="hf://datasets/oscar-corpus/OSCAR-2301/es_meta/*.jsonl.zst",
        text_column="content",
        page="https://huggingface.co/datasets/oscar-corpus/OSCAR-2301",
        gated=True,
    ),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Source:
    """A stream of raw documents. `documents()` starts a new pass each call and resets `counts`;
    during a pass `position` / `total_bytes` tell how far it is (total None when unknown)."""

    name: str = ""
    total_bytes: int | None = None

    def __init__(self) -> None:
        self.counts = HygieneCounts()
        self.position = 0

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What this source is, for meta.json."""
        raise NotImplementedError

    def small(self) -> bool:
        """Known to be small enough that worker processes would cost more than they save."""
        return self.total_bytes is not None and self.total_bytes < 64 * 2**20


# --- resolution -------------------------------------------------------------------------------


def resolve_source(
    name: str,
    *,
    subset: str | None = None,
    split: str | None = None,
    text_column: str | None = None,
    txt_mode: str = "blank",
    seed: int = 0,
    max_bytes: int | None = None,
    max_docs: int | None = None,
) -> Source:
    """Turn a --dataset value into a Source (no network access here).

    `demo`, `wikipedia` and `oscar` are names; anything that exists on disk, has glob
    characters, starts with / . ~ or ends in a known suffix is a local path; `owner/name` is a
    Hub dataset. Write ./wikipedia to mean a local directory called wikipedia.
    """
    if txt_mode not in TXT_MODES:
        raise ConfigError(f"unknown --txt-mode {txt_mode!r}: use one of {', '.join(TXT_MODES)}")
    if name == "demo":
        _no_subset(name, subset)
        return DemoSource(seed=seed, max_bytes=max_bytes, max_docs=max_docs)
    if name in HUB_DATASETS:
        known = HUB_DATASETS[name]
        if subset is not None and known.data_files is not None:
            raise ConfigError(f"--subset does not apply to {name!r} (it reads {known.data_files})")
        return HubSource(
            name,
            known.path,
            config=subset or known.config,
            split=split or "train",
            text_column=text_column or known.text_column,
            data_files=known.data_files,
            page=known.page,
            gated=known.gated,
        )
    path = Path(name).expanduser()
    if _looks_local(name, path):
        _no_subset(name, subset)
        return _resolve_local(name, path, txt_mode=txt_mode, text_column=text_column, split=split)
    if _HUB_ID.match(name):
        return HubSource(
            name,
            name,
            config=subset,
            split=split or "train",
            text_column=text_column,
            page=f"https://huggingface.co/datasets/{name}",
        )
    raise DataError(
        f"unknown dataset {name!r}: use demo, wikipedia, oscar, a Hub dataset owner/name, "
        "or a local file, directory or glob"
    )


def _no_subset(name: str, subset: str | None) -> None:
    if subset is not None:
        raise ConfigError(f"--subset applies to Hub datasets only, not to {name!r}")


def _looks_local(name: str, path: Path) -> bool:
    return (
        path.exists()
        or glob.has_magic(name)
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
        or _format_of(path)[0] is not None
    )


def _format_of(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from the file name, e.g. ('jsonl', 'zstd') for x.jsonl.zst."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt == "parquet" and compression:
        return None, None  # Parquet compresses itself
    return fmt, compression


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _resolve_local(name: str, path: Path, *, txt_mode: str, text_column: str | None, split: str | None) -> Source:
    kinds = "/".join(sorted({*FORMATS, *COMPRESSIONS}))
    if glob.has_magic(name):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not matches:
            raise DataError(f"no files match {name}: check the pattern")
        files = [p for p in matches if _format_of(p)[0]]
        if not files:
            raise DataError(f"none of the {len(matches)} files matching {name} is a readable text file ({kinds})")
    elif path.is_dir():
        if _is_saved_dataset(path):
            return SavedDatasetSource(name, path, split=split, text_column=text_column)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _format_of(p)[0] and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"directory {name} has no readable text files ({kinds}) in it or below it")
    elif path.is_file():
        if _format_of(path)[0] is None:
            raise DataError(f"{name}: unsupported file type: use .txt, .jsonl, .json, .csv or .parquet (.gz/.zst ok)")
        files = [path]
    else:
        raise DataError(f"{name} does not exist: check the path (or pass demo, wikipedia, oscar or a Hub owner/name)")
    return FilesSource(name, files, txt_mode=txt_mode, text_column=text_column)


# --- demo -------------------------------------------------------------------------------------


class DemoSource(Source):
    """Simple Spanish tales written for this project (gpt2es_cli/demo.py), deterministic under seed."""

    def __init__(self, seed: int = 0, max_bytes: int | None = None, max_docs: int | None = None):
        super().__init__()
        self.name = "demo"
        self.seed = seed
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        self.max_docs = max_docs
        self.total_bytes = self.max_bytes

    def documents(self) -> Iterator[str]:
        from gpt2es_cli.demo import generate_tales

        self.counts = HygieneCounts()
        self.position = 0
        for tale in generate_tales(seed=self.seed, max_bytes=self.max_bytes, max_docs=self.max_docs):
            self.position += len(tale.encode("utf-8"))
            yield tale

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "demo",
            "name": "demo",
            "seed": self.seed,
            "max_bytes": self.max_bytes,
            "max_docs": self.max_docs,
        }


# --- Hugging Face Hub -------------------------------------------------------------------------


class HubSource(Source):
    """A Hugging Face Hub dataset, streamed (nothing is downloaded ahead)."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        config: str | None = None,
        split: str = "train",
        text_column: str | None = None,
        data_files: str | None = None,
        page: str | None = None,
        gated: bool = False,
    ):
        super().__init__()
        self.name, self.path, self.config, self.split = name, path, config, split
        self.text_column, self.data_files, self.page, self.gated = text_column, data_files, page, gated

    def label(self) -> str:
        what = self.data_files or self.path
        return what + (f" ({self.config})" if self.config else "")

    def documents(self) -> Iterator[str]:
        self.counts = HygieneCounts()
        self.position = 0
        rows = iter(self._open())
        column = None
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:
                raise self._error(e) from None
            if column is None:
                column = _pick_column(self.text_column, list(row), f"{self.name} ({self.split})")
            text = row.get(column)
            if not isinstance(text, str):
                self.counts.skipped_records += 1
                continue
            yield text

    def _open(self) -> Any:
        try:
            import datasets
            import huggingface_hub

            # No "Retrying in 4s" lines or progress bars from the libraries: errors end in one line.
            datasets.utils.logging.set_verbosity_error()
            huggingface_hub.utils.logging.set_verbosity_error()
            datasets.disable_progress_bars()
            return datasets.load_dataset(
                self.path, self.config, split=self.split, streaming=True, data_files=self.data_files
            )
        except Exception as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> DataError:
        """One line for whatever `datasets` / `huggingface_hub` raised."""
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = type(e).__name__
        if "gated" in text.lower() or kind == "GatedRepoError" or ("401" in text and self.gated):
            return DataError(
                f"{self.name} is gated on the Hub: accept its conditions at {self.page}, then log in "
                "with `hf auth login` (or set HF_TOKEN)"
            )
        if kind in ("DatasetNotFoundError", "RepositoryNotFoundError", "FileNotFoundError") and not _offline(e):
            return DataError(f"dataset {self.label()} was not found on the Hub ({text}): check the name")
        if _offline(e):
            local = "" if self.name in HUB_DATASETS else f" (if you meant a local path, {self.name} does not exist)"
            return DataError(
                f"cannot reach the Hugging Face Hub to stream {self.label()} ({kind}){local}: check the "
                "connection, or download the data and pass a local file or directory with --dataset PATH"
            )
        if (
            "BuilderConfig" in text
            or "Unknown split" in text
            or ("split" in text.lower() and "not found" in text.lower())
        ):
            return DataError(f"{self.label()}: {text}: check --subset / --split")
        return DataError(f"cannot stream {self.label()} from the Hub ({kind}: {text})")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "hub",
            "name": self.name,
            "path": self.path,
            "config": self.config,
            "split": self.split,
            "data_files": self.data_files,
            "text_column": self.text_column,
        }


def _offline(e: BaseException) -> bool:
    """Whether an exception (or its cause) means the Hub could not be reached."""
    while e is not None:
        name = type(e).__name__
        module = type(e).__module__ or ""
        if isinstance(e, (ConnectionError, TimeoutError)) or name in (
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
        ):
            return True
        if module.startswith(("httpx", "httpcore", "requests", "urllib3", "aiohttp")):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False


def _pick_column(wanted: str | None, columns: list[str], where: str) -> str:
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


# --- local files ------------------------------------------------------------------------------


class FilesSource(Source):
    """Local files (in a sorted, fixed order), each read as a stream in its own format."""

    def __init__(self, name: str, files: list[Path], *, txt_mode: str = "blank", text_column: str | None = None):
        super().__init__()
        self.name, self.files, self.txt_mode, self.text_column = name, files, txt_mode, text_column
        try:
            self.total_bytes = sum(p.stat().st_size for p in files)
        except OSError as e:
            raise DataError(f"cannot read {e.filename}: {e.strerror}") from None

    def documents(self) -> Iterator[str]:
        self.counts = HygieneCounts()
        self.position = 0
        done = 0
        for path in self.files:
            fmt, compression = _format_of(path)
            try:
                raw = open(path, "rb")
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror}") from None
            try:
                if fmt == "parquet":
                    docs = self._parquet(path, raw, done)
                else:
                    stream = _decompress(raw, compression)
                    lines = iter(lambda s=stream: s.readline(MAX_DOC_CHARS), b"")
                    docs = {"txt": self._txt, "jsonl": self._jsonl, "json": self._json, "csv": self._csv}[fmt](
                        path, lines
                    )
                for doc in docs:
                    if fmt != "parquet":
                        self.position = done + raw.tell()
                    yield doc
            except (OSError, EOFError, ValueError, zstd_error()) as e:  # bad gzip/zstd, truncated files
                raise DataError(f"cannot read {path}: {type(e).__name__}: {e} (is the file damaged?)") from None
            finally:
                raw.close()
            done += path.stat().st_size
            self.position = done

    def _lines(self, lines: Iterable[bytes]) -> Iterator[str]:
        for raw in lines:
            text, bad = decode_utf8(raw)
            if bad:
                self.counts.undecodable_bytes += bad
            yield text

    def _txt(self, path: Path, lines: Iterable[bytes]) -> Iterator[str]:
        mode = self.txt_mode
        buf: list[str] = []
        size = 0
        for line in self._lines(lines):
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
                self.counts.long_documents_split += 1
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)

    def _records(self, path: Path, records: Iterable[Any]) -> Iterator[str]:
        column = None
        for rec in records:
            if isinstance(rec, str) and self.text_column is None:
                yield rec
                continue
            if column is None:
                if not isinstance(rec, dict):
                    raise DataError(f"{path}: records are {type(rec).__name__}s, not objects with a text field")
                column = _pick_column(self.text_column, list(rec), str(path))
            text = rec.get(column) if isinstance(rec, dict) else None
            if isinstance(text, str):
                yield text
            else:
                self.counts.skipped_records += 1

    def _jsonl(self, path: Path, lines: Iterable[bytes]) -> Iterator[str]:
        def records() -> Iterator[Any]:
            parsed = 0
            for number, line in enumerate(self._lines(lines), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    if parsed == 0:
                        raise DataError(
                            f"{path} line {number} is not JSON ({e.msg}): use JSON Lines, one object a line"
                        ) from None
                    self.counts.skipped_records += 1  # e.g. a truncated last line
                    continue
                parsed += 1
                yield rec

        return self._records(path, records())

    def _json(self, path: Path, lines: Iterable[bytes]) -> Iterator[str]:
        """A JSON array of records (read whole: use JSON Lines for big files) or JSON Lines."""
        lines = iter(lines)
        head: list[bytes] = []
        for line in lines:
            head.append(line)
            if line.strip():
                break
        if head and head[-1].lstrip().startswith(b"["):
            text, bad = decode_utf8(b"".join([*head, *lines]))
            self.counts.undecodable_bytes += bad
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
            return self._records(path, data)
        return self._jsonl(path, _chain(head, lines))

    def _csv(self, path: Path, lines: Iterable[bytes]) -> Iterator[str]:
        csv.field_size_limit(MAX_DOC_CHARS)
        reader = csv.DictReader(self._lines(lines))
        try:
            yield from self._records(path, reader)
        except csv.Error as e:
            raise DataError(f"{path} is not valid CSV ({e})") from None

    def _parquet(self, path: Path, raw: BinaryIO, done: int) -> Iterator[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(raw)
        except pa.ArrowException as e:
            raise DataError(f"{path} is not a readable Parquet file ({e})") from None
        column = _pick_column(self.text_column, pf.schema_arrow.names, str(path))
        rows = max(pf.metadata.num_rows, 1)
        size = path.stat().st_size
        seen = 0
        for batch in pf.iter_batches(batch_size=1024, columns=[column]):
            for text in batch.column(0).to_pylist():
                seen += 1
                self.position = done + size * seen // rows
                if isinstance(text, str):
                    yield text
                else:
                    self.counts.skipped_records += 1

    def describe(self) -> dict[str, Any]:
        shown = [str(p) for p in self.files[:5]] + ([f"... {len(self.files) - 5} more"] if len(self.files) > 5 else [])
        return {
            "kind": "local",
            "name": self.name,
            "files": len(self.files),
            "paths": shown,
            "bytes": self.total_bytes,
            "txt_mode": self.txt_mode,
            "text_column": self.text_column,
        }


def _chain(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    yield from head
    yield from rest


def zstd_error() -> type[Exception]:
    import zstandard

    return zstandard.ZstdError


def _decompress(raw: BinaryIO, compression: str | None) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


class SavedDatasetSource(Source):
    """A dataset written by `datasets`' `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
    (memory-mapped Arrow, read in batches)."""

    def __init__(self, name: str, path: Path, *, split: str | None = None, text_column: str | None = None):
        super().__init__()
        self.name, self.path, self.split, self.text_column = name, path, split, text_column
        self.total_bytes = sum(p.stat().st_size for p in path.rglob("*.arrow"))

    def _dataset(self) -> Any:
        import datasets

        try:
            ds = datasets.load_from_disk(str(self.path))
        except Exception as e:
            raise DataError(f"cannot load the saved dataset {self.name} ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            splits = list(ds)
            split = self.split or ("train" if "train" in ds else splits[0] if len(splits) == 1 else None)
            if split not in ds:
                raise DataError(f"{self.name} has splits {', '.join(splits)}: choose one with --split")
            self.split = split
            ds = ds[split]
        return ds

    def documents(self) -> Iterator[str]:
        self.counts = HygieneCounts()
        self.position = 0
        ds = self._dataset()
        column = _pick_column(self.text_column, ds.column_names, self.name)
        rows = max(len(ds), 1)
        seen = 0
        for batch in ds.select_columns([column]).iter(batch_size=1000):
            for text in batch[column]:
                seen += 1
                self.position = (self.total_bytes or 0) * seen // rows
                if isinstance(text, str):
                    yield text
                else:
                    self.counts.skipped_records += 1

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "saved_dataset",
            "name": self.name,
            "path": str(self.path),
            "split": self.split,
            "text_column": self.text_column,
            "bytes": self.total_bytes,
        }


__all__ = [
    "HUB_DATASETS",
    "TXT_MODES",
    "DemoSource",
    "FilesSource",
    "HubDataset",
    "HubSource",
    "MixtureSource",
    "SavedDatasetSource",
    "Source",
    "open_sources",
    "resolve_source",
]


# --- mixtures ---------------------------------------------------------------------------------


def open_sources(options: Any) -> Source:
    """The Source of a PrepareConfig's --dataset: one source, or a MixtureSource of several
    (SRC:WEIGHT each), every one resolved with the same --subset, --split, --text-column, ..."""
    def one(name: str) -> Source:
        return resolve_source(
            name, subset=options.subset, split=options.split, text_column=options.text_column,
            txt_mode=options.txt_mode, seed=options.seed, max_bytes=options.max_bytes, max_docs=options.max_docs,
        )

    if len(options.dataset) == 1 and parse_weighted(options.dataset[0])[1] is None:
        return one(options.dataset[0])
    parts = mixture_weights(options.dataset)
    if len(parts) == 1:
        return one(parts[0][0])
    return MixtureSource([(one(name), weight) for name, weight in parts])


def mixture_weights(values: Sequence[str]) -> list[tuple[str, float]]:
    """The sources of repeated --dataset SRC[:WEIGHT] options with their shares (summing to 1).
    Either every source has a weight or none has (then each gets the same share)."""
    parsed = [parse_weighted(v) for v in values]
    weights = [w for _, w in parsed]
    if any(w is None for w in weights) and any(w is not None for w in weights) and len(parsed) > 1:
        missing = ", ".join(n for n, w in parsed if w is None)
        raise ConfigError(f"--dataset: give every source a weight or none ({missing} has none), e.g. -d {missing}:0.2")
    names = [n for n, _ in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--dataset {dupes[0]} is given twice: give each source once, with its weight")
    total = sum(w or 1.0 for w in weights)
    return [(n, (w or 1.0) / total) for n, w in parsed]


class MixtureSource(Source):
    """Several sources interleaved deterministically in given proportions of bytes.

    Each next document comes from the source furthest behind its share (the lowest bytes taken /
    weight; the first such on a tie), so at any point every source has given about its share of
    the bytes so far, and a --max-bytes cap on the total splits it by the weights. A source that
    runs out is recorded (`exhausted_at`: the total bytes taken when it did) and the others go on
    in their own proportions to each other; nothing is repeated. (In the terms of
    `datasets.interleave_datasets`: probabilities by bytes instead of by documents, and a
    stopping strategy of all sources exhausted, without oversampling.)
    """

    def __init__(self, parts: Sequence[tuple[Source, float]]):
        self.parts = [p for p, _ in parts]
        super().__init__()
        self.weights = [w for _, w in parts]
        self.name = " + ".join(p.name for p in self.parts)
        totals = [p.total_bytes for p in self.parts]
        self.total_bytes = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
        self._reset()

    def _reset(self) -> None:
        n = len(self.parts)
        self.taken_documents, self.taken_bytes = [0] * n, [0] * n
        self.exhausted_at: list[int | None] = [None] * n
        self.last = 0
        """Which source the document just yielded came from."""

    def small(self) -> bool:
        return all(p.small() for p in self.parts)

    def documents(self) -> Iterator[str]:
        self._reset()
        streams = [p.documents() for p in self.parts]
        live = list(range(len(streams)))
        while live:
            i = min(live, key=lambda j: (self.taken_bytes[j] / self.weights[j], j))
            try:
                doc = next(streams[i])
            except StopIteration:
                live.remove(i)
                self.exhausted_at[i] = sum(self.taken_bytes)
                continue
            self.taken_documents[i] += 1
            self.taken_bytes[i] += len(doc.encode("utf-8"))
            self.position = sum(p.position for p in self.parts)
            self.last = i
            yield doc

    @property  # type: ignore[override]
    def counts(self) -> HygieneCounts:
        """What the sources' readers counted, summed."""
        return _summed([p.counts for p in self.parts])

    @counts.setter
    def counts(self, value: HygieneCounts) -> None:
        pass  # each source counts its own

    def describe(self) -> dict[str, Any]:
        parts = []
        for i, part in enumerate(self.parts):
            parts.append({
                "weight": round(self.weights[i], 6),
                "source": part.describe(),
                "read": {"documents": self.taken_documents[i], "bytes": self.taken_bytes[i]},
                "ran_out": self.exhausted_at[i] is not None,
                "ran_out_after_bytes": self.exhausted_at[i],
            })
        return {"kind": "mixture", "name": self.name, "policy": "by bytes; a source that runs out is left out, the "
                "others go on in their proportions", "bytes": self.total_bytes, "parts": parts}


def _summed(counts: list[HygieneCounts]) -> HygieneCounts:
    total = HygieneCounts()
    for c in counts:
        for f in dataclass_fields(c):
            setattr(total, f.name, getattr(total, f.name) + getattr(c, f.name))
    return total
