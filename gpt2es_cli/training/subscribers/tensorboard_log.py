"""--log-to tensorboard: the run's metrics as TensorBoard event files in RUN/tensorboard.

Scalars against the optimizer step (train/loss, train/smoothed_loss, train/lr, train/grad_norm,
train/grad_clip, train/tokens_per_second, train/mfu, val/loss, val/perplexity), the losses again
against tokens seen (by_tokens/..., in RUN/tensorboard/by_tokens: a run of its own, since its x
axis is not the step), each evaluation's sample as text, and the resolved settings
as hyperparameters (the HPARAMS tab) and as text. A resumed run writes on with `purge_step` at
its first new step, so TensorBoard drops what the stopped invocation wrote after the checkpoint:
no step appears twice. A new run (or --force) purges from step 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from gpt2es_cli.errors import ConfigError
from gpt2es_cli.training.events import Event, StepReport, TrainEnd, TrainStart, ValidationDone

EXTRA = "pip install 'gpt2es[tensorboard]'"


class TensorBoardLog:
    """TensorBoard event files in RUN/tensorboard (and RUN/tensorboard/by_tokens)."""

    @staticmethod
    def where(run_dir: Path) -> str:
        return f"{run_dir / 'tensorboard'} (tensorboard --logdir {run_dir / 'tensorboard'})"

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch needs the tensorboard package for its writer
            raise ConfigError(f"--log-to tensorboard needs the tensorboard package: {EXTRA}") from None
        self._writer_class = SummaryWriter
        self.writer: Any = None
        self.by_tokens: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, TrainStart):
            self._start(event)
        elif self.writer is None:
            return
        elif isinstance(event, StepReport) and event.logged:
            w, step = self.writer, event.step
            for name in ("loss", "smoothed_loss", "lr", "grad_norm", "grad_clip", "tokens_per_second", "mfu"):
                value = getattr(event, name)
                if value is not None and math.isfinite(value):
                    w.add_scalar(f"train/{name}", value, step)
            if math.isfinite(event.loss):
                self.by_tokens.add_scalar("by_tokens/train_loss", event.loss, event.tokens_seen)
        elif isinstance(event, ValidationDone):
            w, step = self.writer, event.step
            if math.isfinite(event.val_loss):
                w.add_scalar("val/loss", event.val_loss, step)
                w.add_scalar("val/perplexity", event.val_perplexity, step)
                self.by_tokens.add_scalar("by_tokens/val_loss", event.val_loss, event.tokens_seen)
            if event.sample is not None:
                w.add_text("sample", event.sample, step)
            w.flush()
            self.by_tokens.flush()
        elif isinstance(event, TrainEnd):
            self.writer.close()
            self.by_tokens.close()
            self.writer = self.by_tokens = None

    def _start(self, event: TrainStart) -> None:
        from torch.utils.tensorboard.summary import hparams

        first_step = event.start_step + 1 if event.start_step else 0  # what the stopped invocation wrote from here goes
        self.writer = self._writer_class(log_dir=str(event.run_dir / "tensorboard"), purge_step=first_step)
        # The losses by tokens seen, in a run of their own: their x axis is not the step, and a
        # resume purges them from its own token count.
        self.by_tokens = self._writer_class(log_dir=str(event.run_dir / "tensorboard" / "by_tokens"),
                                            purge_step=event.start_tokens + 1 if event.start_step else 0)
        settings = event.config.to_dict()
        self.writer.add_text("config", "```\n" + yaml.safe_dump(settings, sort_keys=False, allow_unicode=True) + "```",
                             event.start_step)
        plain = {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))}
        for summary in hparams(plain, {"val/loss": math.nan}):  # the HPARAMS tab lists the settings
            self.writer.file_writer.add_summary(summary)
