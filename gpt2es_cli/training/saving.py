"""The run's files on disk: config.yaml, last.pth (with the training state), best.pth and the
numbered copies, written atomically by the main process (a LoRA run's checkpoints hold its adapter alone).

A `Checkpointer` holds the run directory (rundir.py) from the start of an invocation: until its
first last.pth is written, `restore` puts back what the directory held before.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from gpt2es_cli.checkpoint import AdapterRecord, Checkpoint, TrainingState, save_checkpoint
from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.fileio import atomic_write
from gpt2es_cli.tokenizer import Tokenizer
from gpt2es_cli.training.rundir import RunDirectory

LAST, BEST = "last.pth", "best.pth"


class Checkpointer:
    """Writes one run's checkpoints into `run_dir`."""

    def __init__(self, run_dir: Path, model_config: ModelConfig, tokenizer: Tokenizer, keep_last: int,
                 adapter: AdapterRecord | None = None):
        self.run_dir = run_dir
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.keep_last = keep_last
        self.adapter = adapter
        """A LoRA run's adapter: the weights written are its tensors, saved with this record."""
        self.directory: RunDirectory | None = None
        """The hold on the run directory (main process only; None on the others)."""
        self.saved = False
        """last.pth was written in this invocation."""

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
        """best.pth: the weights alone."""
        path = self.run_dir / BEST
        self._write(path, weights, None, extra)
        return path

    def write_last(self, weights: dict[str, torch.Tensor], training: TrainingState, extra: dict[str, Any]) -> Path:
        """last.pth, and with --keep-last its numbered copy (the oldest beyond N deleted); the first
        one of an invocation commits the run directory (what it replaced can go)."""
        path = self.run_dir / LAST
        self._write(path, weights, training, extra)
        if self.keep_last:
            numbered = self.run_dir / f"step-{training.step:07d}.pth"
            numbered.unlink(missing_ok=True)
            try:
                os.link(path, numbered)  # last.pth is replaced by rename later, so the link stays
            except OSError:
                shutil.copyfile(path, numbered)
            for old in sorted(self.run_dir.glob("step-*.pth"))[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def committed(self) -> None:
        """This invocation's state is on disk: what the run directory held before can go."""
        if not self.saved and self.directory is not None:
            self.directory.commit()
        self.saved = True

    def restore(self) -> None:
        """Nothing of this invocation is kept: the run directory goes back to what it held."""
        if self.directory is not None:
            self.directory.restore()

    def _write(self, path: Path, weights: dict[str, torch.Tensor], training: TrainingState | None,
               extra: dict[str, Any]) -> None:
        save_checkpoint(path, Checkpoint(
            model_config=self.model_config, model_state=weights, tokenizer_json=self.tokenizer.to_json(),
            training=training, extra=extra, adapter=self.adapter,
        ))
