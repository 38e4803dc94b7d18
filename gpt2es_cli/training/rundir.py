"""A run directory across one invocation of `train`: what it held is never lost to a failed start.

A run is in a directory as RUN_FILES (and `step-*.pth` copies; a sharded run's checkpoints also
have their `step-*.dcp` shard directories, which move and come back with them). A run *exists*
once it has a checkpoint (last.pth, best.pth or a step copy); config.yaml, metrics.jsonl and
loss.png alone are what a run leaves that failed before its first save, and they block nothing.

`RunDirectory.open` starts an invocation: it deletes stale temp files of our own atomic writes
(`.last.pth.XXXX.tmp`, left by a kill during a save; `.step-*.dcp.tmp/`, shards being written; and
shard directories no checkpoint points to, whose record a kill prevented) and puts what the directory holds in a
hidden ASIDE directory beside the new files, moved (a new run, `--force`) or, for a resumed run
continuing its own files, the ones it may replace before it saves (config.yaml, metrics.jsonl,
loss.png, best.pth) kept under a second name (hard links; every write is a rename). `commit()`,
called once the invocation has written its first last.pth, deletes the aside copy; `restore()`,
called when it ends without one (an error, a second Ctrl-C, a run that diverged from its first
step), deletes what it wrote and puts the old files back. A process killed in between leaves the
aside directory: the next `open` puts its files back when no last.pth was written since.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gpt2es_cli.checkpoint import record_shards

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pth", "best.pth", "loss.png", "wandb-run.json")
CHECKPOINT_FILES = ("last.pth", "best.pth")
ASIDE = ".gpt2es-previous"
"""The hidden directory that holds what an invocation replaced until it has saved."""
REWRITTEN = ("config.yaml", "metrics.jsonl", "loss.png", "best.pth", "wandb-run.json")
"""The files a resumed run may replace before it writes last.pth (each by an atomic rename)."""
MOVED_MARK = "moved"
"""A file in ASIDE saying its files were moved (a new run), not copied (a resumed one)."""
SHARDS_SUFFIX = ".dcp"
"""The suffix of a sharded checkpoint's DCP directories (step-NNNNNNN.dcp)."""


def run_files(run_dir: Path) -> list[str]:
    """The files of a run the directory holds (its own, or one set aside by a killed invocation):
    empty when there is no checkpoint, only what a run that never saved left."""
    if not run_dir.is_dir():
        return []
    found = _files(run_dir)
    aside = run_dir / ASIDE
    if aside.is_dir() and (aside / MOVED_MARK).exists() and not (run_dir / "last.pth").exists():
        found = sorted(set(found) | set(_files(aside)))  # a replaced run a killed invocation set aside
    has_checkpoint = any(n in CHECKPOINT_FILES or (n.startswith("step-") and n.endswith(".pth")) for n in found)
    return found if has_checkpoint else []


def _files(directory: Path) -> list[str]:
    names = [name for name in RUN_FILES if (directory / name).exists()]
    return (names + sorted(p.name for p in directory.glob("step-*.pth"))
            + sorted(p.name for p in directory.glob(f"step-*{SHARDS_SUFFIX}") if p.is_dir()))


def remove(path: Path) -> None:
    """Delete a run file, or a shard directory with everything in it."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of our atomic writes to run files, and shard directories being written (left by a
    process killed while saving)."""
    found = []
    for path in run_dir.glob(".*.tmp"):
        if path.is_dir():  # .step-0000100.dcp.tmp
            if path.name.startswith(".step-") and path.name.endswith(f"{SHARDS_SUFFIX}.tmp"):
                found.append(path)
            continue
        name = path.name[1:].rsplit(".", 2)[0]  # .last.pth.k2j3l4.tmp -> last.pth
        if path.is_file() and (name in RUN_FILES or (name.startswith("step-") and name.endswith(".pth"))):
            found.append(path)
    return found


def unreferenced_shards(run_dir: Path) -> list[Path]:
    """The shard directories (step-*.dcp) that neither last.pth nor a step-*.pth copy points to."""
    directories = [p for p in run_dir.glob(f"step-*{SHARDS_SUFFIX}") if p.is_dir()]
    if not directories:
        return []
    records = [run_dir / "last.pth", *run_dir.glob("step-*.pth")]
    used = {record_shards(p) for p in records if p.is_file()}
    return [p for p in directories if p.name not in used]


class RunDirectory:
    """One invocation's hold on a run directory (main process only)."""

    def __init__(self, path: Path, aside: Path | None, moved: bool):
        self.path = path
        self.aside = aside
        """What the directory held before this invocation (None: it held nothing)."""
        self.moved = moved
        self.done = False

    @classmethod
    def open(cls, path: Path, continuing: bool) -> RunDirectory:
        """Start an invocation in `path` (created if needed): stale temp files go, a killed
        invocation's aside files are recovered, and the current files are set aside."""
        path.mkdir(parents=True, exist_ok=True)
        for stale in stale_temp_files(path):
            remove(stale)
        _recover(path)
        for stale in unreferenced_shards(path):  # written, but a kill came before their record
            remove(stale)
        names = _files(path)
        if not names:
            return cls(path, None, moved=False)
        aside = path / ASIDE
        aside.mkdir()
        for name in names:
            if not continuing:
                (path / name).rename(aside / name)
            elif name in REWRITTEN:  # what a resumed run may replace before it saves
                _keep(path / name, aside / name)
        if not continuing:
            (aside / MOVED_MARK).write_text("the files of the run this directory held\n")
        return cls(path, aside, moved=not continuing)

    def commit(self) -> None:
        """This invocation saved its state: what it replaced is no longer needed."""
        if self.aside is not None and not self.done:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.done = True

    def restore(self) -> None:
        """This invocation saved nothing: put the directory back as it was."""
        if self.done:
            return
        self.done = True
        if self.aside is None or self.moved:  # a new run: its own files go
            for name in _files(self.path):
                remove(self.path / name)
        if self.aside is not None:
            _put_back(self.path, self.aside)


def _keep(source: Path, kept: Path) -> None:
    """A second name for the file (its content stays when `source` is replaced by a rename), else a copy."""
    try:
        os.link(source, kept)
    except OSError:
        shutil.copy2(source, kept)


def _put_back(path: Path, aside: Path) -> None:
    for item in aside.iterdir():
        if item.name != MOVED_MARK:
            item.replace(path / item.name)
    shutil.rmtree(aside, ignore_errors=True)


def _recover(path: Path) -> None:
    """A killed invocation's aside directory: its files go back unless it saved a last.pth since."""
    aside = path / ASIDE
    if not aside.is_dir():
        return
    if (aside / MOVED_MARK).exists() and not (path / "last.pth").exists():
        for name in _files(path):  # the killed new run's own files (it never saved)
            remove(path / name)
        _put_back(path, aside)
    else:
        shutil.rmtree(aside, ignore_errors=True)
