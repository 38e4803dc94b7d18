"""Atomic writes (a file or directory is either the old one or the new one, never half of each),
and reading the JSON files we write.

Kept free of torch so the data pipeline (and its worker processes) can use it cheaply.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gpt2es_cli.errors import Gpt2esError, first_line


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through `write(fileobj)` so that `path` is either the old file or the new
    one, never a partial one: temp file in the same directory, fsync, rename."""
    path = Path(path)
    if path.is_dir():
        raise Gpt2esError(f"cannot write {path}: it is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; a checkpoint is not
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # not supported on every platform/filesystem


OWNER_FILE = ".gpt2es-owner"
"""In a temp directory that will become `target`: the process id writing it."""


def temp_dir_for(target: Path) -> Path:
    """A new temp directory beside `target` (`.NAME.XXXX.tmp`, mode from the umask) that records its
    writer; stale ones of writers that no longer run (killed mid-write) are deleted first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        if stale.is_dir() and not _writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    for old in target.parent.glob(f".{target.name}.*.old"):  # a kill between replace_dir's two renames
        if old.is_dir() and (old / target.name).exists() and not target.exists():
            os.replace(old / target.name, target)
        shutil.rmtree(old, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; what it becomes is not
    (tmp / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return tmp


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that made this temp directory still runs (unknown owner: assume not)."""
    try:
        pid = int((tmp / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` at `target`, replacing what is there with two renames; if the second
    fails, the previous directory is put back."""
    (new / OWNER_FILE).unlink(missing_ok=True)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        if old is not None:  # put the previous one back
            os.replace(old / target.name, target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json_object(path: Path, error: type[Gpt2esError], fix: str) -> dict[str, Any]:
    """A JSON object from `path`; a file that is not one raises `error` in one line ending in `fix`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise error(f"{path} is damaged ({first_line(e)}): {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is damaged (not a JSON object): {fix}")
    return data
