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


def replace_dir(new: Path, target: Path) -> None:
    """Put directory `new` at `target`, replacing what is there with two renames; if the second
    fails, the previous directory is put back."""
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
