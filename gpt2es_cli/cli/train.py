"""`gpt2es train`: parse options, call the training loop, render its progress (cli/train_display.py).

The training settings are TrainConfig's fields: cli/options.py makes one option of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from gpt2es_cli.cli.app import command
from gpt2es_cli.cli.options import settings_options
from gpt2es_cli.cli.train_display import run_training, show_auto_resume, show_finished
from gpt2es_cli.config import DATA, TrainConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.settings import AUTO, load_config_file
from gpt2es_cli.training import RunFinished, find_resume, load_resume_checkpoint, resume_config
from gpt2es_cli.training.plan import run_directory


@command("train", epilog='Examples:\n\n  gpt2es train --batch-size 8 --amp\n\n  gpt2es train -d data/libros --amp --max-time 15m\n\n  gpt2es train --resume runs/libros --max-time 30m')
@settings_options(TrainConfig)
def train_command(
    given: dict[str, Any],
    config_file: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML or YAML file of settings (keys: the names of these options with underscores, e.g. batch_size); options given here win.", rich_help_panel=DATA)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", metavar="RUN|FILE|auto", help="Continue a run: its directory (last.pth) or a checkpoint file. auto: continue the run in --out from its newest checkpoint that loads (last.pth, else the newest step-NNNNNNN.pth), or start it there when there is none; a finished run exits 0. For commands re-run as they are (torchrun --max-restarts, Slurm --requeue).", rich_help_panel=DATA)] = None,
    force: Annotated[bool, typer.Option("--force", metavar="", help="Replace the run already in --out.", rich_help_panel=DATA)] = False,
) -> None:
    """Train a GPT-2 model on a prepared dataset into a run directory.

    Writes config.yaml, metrics.jsonl, loss.png, last.pth and best.pth (lowest validation loss).
    Ctrl-C saves last.pth and stops; --resume RUN_DIR continues exactly where it stopped, and
    --resume auto continues the run in --out if there is one, so a restarted command goes on by itself.
    For several GPUs or machines, launch it with torchrun.
    """
    file_settings = load_config_file(config_file) if config_file is not None else {}
    from_file = TrainConfig.from_dict(file_settings, source=str(config_file))  # bad keys or values: say so first
    checkpoint = None
    if resume is not None and resume.strip().lower() == AUTO:
        if force:
            raise ConfigError("--force replaces the run in --out that --resume auto would continue: use one or the other")
        config = from_file.updated(given, source="options")
        found = find_resume(run_directory(config))  # every process reads the same files: the same choice
        if found.checkpoint is not None:
            checkpoint = found.checkpoint
            config = resume_config(checkpoint, {**file_settings, **given})
        show_auto_resume(found)
        try:  # a run killed before its first save starts again, its files set aside until the new one saves
            run_training(config, checkpoint, force=bool(found.restart))
        except RunFinished as finished:  # a restart of a job that had finished: nothing to do, no failure
            show_finished(finished)
        return
    if resume is not None:
        checkpoint = load_resume_checkpoint(resume)
        config = resume_config(checkpoint, {**file_settings, **given})
    else:
        config = from_file.updated(given, source="options")
    run_training(config, checkpoint, force)
