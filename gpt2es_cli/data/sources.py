"""Where raw documents come from: the built-in demo tales, the Hugging Face Hub, or local files.

`resolve_source(name, ...)` turns what the user typed after `--dataset` into a `Source` without
touching the network; iterating `Source.documents()` streams raw document strings (each pass
starts over, so a source can be read twice: once to train a tokenizer, once to tokenize).

Local: a file in one of the formats of data/readers.py, a glob, a directory (searched
recursively), or a dataset saved with `datasets`' `save_to_disk`. Several sources mixed by weight
are a `MixtureSource` (data/mixture.py).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2es_cli.config import DEMO_MAX_BYTES, TXT_MODES
from gpt2es_cli.data.clean import HygieneCounts
from gpt2es_cli.data.readers import OpenFile, format_names, format_of, known_suffixes, pick_text_column, zstd_error
from gpt2es_cli.errors import ConfigError, DataError

__all__ = [
    "HUB_DATASETS",
    "DemoSource",
    "FilesSource",
    "HubDataset",
    "HubSource",
    "SavedDatasetSource",
    "Source",
    "resolve_source",
]


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
        or format_of(path)[0] is not None
    )


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _resolve_local(name: str, path: Path, *, txt_mode: str, text_column: str | None, split: str | None) -> Source:
    kinds = known_suffixes()
    if glob.has_magic(name):
        matches = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not matches:
            raise DataError(f"no files match {name}: check the pattern")
        files = [p for p in matches if format_of(p)[0]]
        if not files:
            raise DataError(f"none of the {len(matches)} files matching {name} is a readable text file ({kinds})")
    elif path.is_dir():
        if _is_saved_dataset(path):
            return SavedDatasetSource(name, path, split=split, text_column=text_column)
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and format_of(p)[0] and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"directory {name} has no readable text files ({kinds}) in it or below it")
    elif path.is_file():
        if format_of(path)[0] is None:
            raise DataError(f"{name}: unsupported file type: use {format_names()}")
        files = [path]
    else:
        raise DataError(f"{name} does not exist: check the path (or pass demo, wikipedia, oscar or a Hub owner/name)")
    return FilesSource(name, files, txt_mode=txt_mode, text_column=text_column)


# --- demo -------------------------------------------------------------------------------------


class DemoSource(Source):
    """Simple Spanish tales written for this project (gpt2es_cli/data/demo/), deterministic under seed."""

    def __init__(self, seed: int = 0, max_bytes: int | None = None, max_docs: int | None = None):
        super().__init__()
        self.name = "demo"
        self.seed = seed
        self.max_bytes = DEMO_MAX_BYTES if max_bytes is None else max_bytes
        self.max_docs = max_docs
        self.total_bytes = self.max_bytes

    def documents(self) -> Iterator[str]:
        from gpt2es_cli.data.demo import generate_tales

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

    def rows(self) -> Iterator[dict[str, Any]]:
        """The split's rows as dicts, streamed (the Hub's errors as one-line DataErrors)."""
        rows = iter(self._open())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:
                raise self._error(e) from None
            yield row

    def documents(self) -> Iterator[str]:
        self.counts = HygieneCounts()
        self.position = 0
        column = None
        for row in self.rows():
            if column is None:
                column = pick_text_column(self.text_column, list(row), f"{self.name} ({self.split})")
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
            fmt, compression = format_of(path)
            try:
                raw = open(path, "rb")
            except OSError as e:
                raise DataError(f"cannot read {path}: {e.strerror}") from None
            try:
                file = OpenFile(path, raw, compression, self.txt_mode, self.text_column, self.counts)
                for doc in fmt.read(file):
                    self.position = done + file.offset()
                    yield doc
            except (OSError, EOFError, ValueError, zstd_error()) as e:  # bad gzip/zstd, truncated files
                raise DataError(f"cannot read {path}: {type(e).__name__}: {e} (is the file damaged?)") from None
            finally:
                raw.close()
            done += path.stat().st_size
            self.position = done

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
        column = pick_text_column(self.text_column, ds.column_names, self.name)
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
