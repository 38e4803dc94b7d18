"""The run's files on disk: config.yaml, last.pth (with the training state), best.pth and the
numbered copies, written atomically by the main process (a LoRA run's checkpoints hold its adapter alone).

A `Checkpointer` holds the run directory (rundir.py) from the start of an invocation: until its
first last.pth is written, `restore` puts back what the directory held before.

A sharded run's (--parallel fsdp) last.pth and its step copies are records beside a DCP
directory, step-NNNNNNN.dcp/ (the format is checkpoint.py's): every process writes its part into
.step-NNNNNNN.dcp.tmp/; once that is whole the main process renames it, writes the record (one
atomic rename: the commit) and deletes the directories no record points to any more, so a kill
at any moment leaves the previous record and its directory loadable. The directory is written in
the background (dcp.async_save: training goes on once every tensor is copied to CPU memory, the
record follows when the write is whole), except at the end of a run, which waits for it. best.pth
is a single file in every run (the weights gathered on the main process).
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from gpt2es_cli.checkpoint import (
    AdapterRecord,
    Checkpoint,
    Shards,
    TrainingState,
    save_checkpoint,
    split_tensors,
    write_shards,
)
from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.errors import CheckpointError, first_line
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.tokenizer import Tokenizer
from gpt2es_cli.training.parallel import Parallel, SingleProcess
from gpt2es_cli.training.rundir import SHARDS_SUFFIX, RunDirectory, remove, unreferenced_shards

LAST, BEST = "last.pth", "best.pth"


@dataclass
class _Pending:
    """A sharded last.pth whose directory is being written in the background."""

    future: Future
    written: Path
    """The temporary directory the processes write into."""
    record: Checkpoint
    """What last.pth will hold, its shards at their final name."""
    done: threading.Event
    error: BaseException | None = None


class Checkpointer:
    """Writes one run's checkpoints into `run_dir`."""

    def __init__(self, run_dir: Path, model_config: ModelConfig, tokenizer: Tokenizer, keep_last: int,
                 adapter: AdapterRecord | None = None, parallel: Parallel | None = None):
        self.run_dir = run_dir
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.keep_last = keep_last
        self.adapter = adapter
        """A LoRA run's adapter: the weights written are its tensors, saved with this record."""
        self.parallel = parallel if parallel is not None else SingleProcess()
        self.directory: RunDirectory | None = None
        """The hold on the run directory (main process only; None on the others)."""
        self.saved = False
        """last.pth was written in this invocation (or is being written)."""
        self._pending: _Pending | None = None
        self._commit_directory = False
        """The run directory is to be committed once the pending last.pth is written."""
        self._lock = threading.Lock()
        """Between the main thread and the background commit of a pending last.pth."""

    def open(self, config: TrainConfig, continuing: bool) -> None:
        """Take the run directory (main process) and write config.yaml, every setting resolved."""
        self.directory = RunDirectory.open(self.run_dir, continuing=continuing)
        text = (
            "# gpt2es train settings, every default resolved. Reuse with:\n"
            f"#   gpt2es train --config {self.run_dir / 'config.yaml'} --out runs/NEW\n"
            + yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)
        )
        atomic_write(self.run_dir / "config.yaml", lambda f: f.write(text.encode("utf-8")))

    def write_best(self, weights: dict[str, torch.Tensor], extra: dict[str, Any]) -> Path:
        """best.pth: the weights alone (main process)."""
        path = self.run_dir / BEST
        self._write(path, weights, None, extra)
        return path

    def write_last(self, weights: dict[str, torch.Tensor], training: TrainingState, extra: dict[str, Any],
                   wait: bool = True) -> Path:
        """last.pth, and with --keep-last its numbered copy (the oldest beyond N deleted); the first
        one of an invocation commits the run directory (what it replaced can go). Every process calls
        it: a sharded state is written by all (without `wait`, in the background), a whole one by the
        main process alone."""
        path = self.run_dir / LAST
        if self.parallel.sharded:
            self._write_sharded(weights, training, extra, wait)
        elif self.parallel.is_main:
            self._write(path, weights, training, extra)
            self._after_last(training.step)
        return path

    def committed(self) -> None:
        """This invocation's state is on disk (or on its way, written in the background): what the run
        directory held before can go once it is."""
        if not self.saved and self.directory is not None:
            with self._lock:
                pending = self._pending
                if pending is None:
                    self.directory.commit()
                elif not pending.done.is_set():
                    self._commit_directory = True  # by the background commit, once last.pth is written
                elif pending.error is None and pending.future.exception() is None:
                    self.directory.commit()
        self.saved = True

    def wait(self) -> None:
        """Wait for a last.pth being written in the background, and commit it (every process)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.future.result()
        except Exception as e:
            raise CheckpointError(f"saving {self.run_dir / LAST} failed ({first_line(e, 160)})") from None
        pending.done.wait()
        if pending.error is not None:
            raise CheckpointError(f"saving {self.run_dir / LAST} failed ({first_line(pending.error, 160)})")

    def restore(self) -> None:
        """Nothing of this invocation is kept: the run directory goes back to what it held (a last.pth
        being written in the background is finished first: then it is kept)."""
        try:
            self.wait()
        except CheckpointError:
            pass  # the previous checkpoint stays
        if self.directory is not None:
            self.directory.restore()

    def _write(self, path: Path, weights: dict[str, torch.Tensor], training: TrainingState | None,
               extra: dict[str, Any]) -> None:
        save_checkpoint(path, Checkpoint(
            model_config=self.model_config, model_state=weights, tokenizer_json=self.tokenizer.to_json(),
            training=training, extra=extra, adapter=self.adapter,
        ))

    def _after_last(self, step: int) -> None:
        """The numbered copy of the last.pth just written, the oldest copies beyond N deleted, and the
        shard directories no record points to any more (main process)."""
        path = self.run_dir / LAST
        if self.keep_last:
            numbered = self.run_dir / f"step-{step:07d}.pth"
            numbered.unlink(missing_ok=True)
            try:
                os.link(path, numbered)  # last.pth is replaced by rename later, so the link stays
            except OSError:
                shutil.copyfile(path, numbered)
            for old in sorted(self.run_dir.glob("step-*.pth"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
        for stale in unreferenced_shards(self.run_dir):
            remove(stale)

    # --- sharded ------------------------------------------------------------------------------------

    def _write_sharded(self, weights: dict[str, torch.Tensor], training: TrainingState, extra: dict[str, Any],
                       wait: bool) -> None:
        parallel = self.parallel
        self.wait()  # one save at a time, in order
        name = self._shard_name(training.step) if parallel.is_main else None
        name = parallel.all_gather(name)[0]  # the main process's choice, for every process
        final, written = self.run_dir / name, self.run_dir / f".{name}.tmp"
        aliases = {"lm_head.weight": "wte.weight"} if (
            self.model_config.tie_word_embeddings and "lm_head.weight" in weights and self.adapter is None) else {}
        skeleton, paths, tensors = split_tensors(training.optimizer)
        shards = Shards(directory=final, model_keys=tuple(k for k in weights if k not in aliases),
                        optimizer_paths=tuple(paths), aliases=aliases, world_size=parallel.world_size)
        everything = {shards.model_key(k): weights[k] for k in shards.model_keys}
        everything.update({shards.optimizer_key(p): t for p, t in zip(paths, tensors, strict=True)})
        record = Checkpoint(
            model_config=self.model_config, model_state={}, tokenizer_json=self.tokenizer.to_json(),
            training=replace(training, optimizer=skeleton), extra=extra, adapter=self.adapter, shards=shards,
        )
        background = not wait and parallel.save_group is not None
        future = write_shards(written, everything, process_group=parallel.save_group, asynchronous=background)
        if future is None:  # written: commit now
            if parallel.is_main:
                self._commit(written, record)
            return
        pending = _Pending(future, written, record, threading.Event())
        if parallel.is_main:
            future.add_done_callback(lambda f: self._commit_in_background(pending))
        else:
            pending.done.set()
        self._pending = pending

    def _shard_name(self, step: int) -> str:
        """A directory name for this step's shards that nothing on disk has (a second save at the same step
        must not write into the directory the current last.pth points to)."""
        base = f"step-{step:07d}"
        name, n = base + SHARDS_SUFFIX, 1
        while (self.run_dir / name).exists():
            name, n = f"{base}.{n}{SHARDS_SUFFIX}", n + 1
        stale = self.run_dir / f".{name}.tmp"
        if stale.exists():
            remove(stale)  # a killed save's part
        return name

    def _commit(self, written: Path, record: Checkpoint) -> None:
        """The shards are whole: put them in place, then the record that points to them (main process)."""
        assert record.shards is not None and record.training is not None
        written.rename(record.shards.directory)
        save_checkpoint(self.run_dir / LAST, record)
        self._after_last(record.training.step)

    def _commit_in_background(self, pending: _Pending) -> None:
        with self._lock:
            try:
                if pending.future.exception() is None:
                    self._commit(pending.written, pending.record)
                    if self._commit_directory and self.directory is not None:
                        self.directory.commit()
                        self._commit_directory = False
            except BaseException as e:  # said by wait(); the previous last.pth stays
                pending.error = e
            finally:
                pending.done.set()
