"""`gpt2es train`: parse options, call the training loop, render its progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from gpt2es_cli.cli.app import command
from gpt2es_cli.cli.train_display import run_training
from gpt2es_cli.config import SCHEDULES, TrainConfig, load_config_file
from gpt2es_cli.training import load_resume_checkpoint, resume_config

DATA, MODEL, BUDGET, OPTIM, DEVICE, WATCH = (
    "Data and run", "Model", "Budget", "Optimizer", "Device and precision", "Evaluation, logs, checkpoints",
)


@command("train")
def train_command(
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Prepared dataset directory (from `gpt2es prepare`).", show_default="data/demo", rich_help_panel=DATA)] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Run directory for checkpoints and metrics.", show_default="runs/<dataset name>", rich_help_panel=DATA)] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML or YAML file of settings (the names of these options); options given here win.", rich_help_panel=DATA)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue a run: its directory (last.pth) or a checkpoint file.", rich_help_panel=DATA)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run already in --out.", rich_help_panel=DATA)] = False,
    seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Tokens per training window.", show_default="the model's context", rich_help_panel=DATA)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Windows per forward pass in each process.", show_default="8", rich_help_panel=DATA)] = None,
    global_batch: Annotated[Optional[int], typer.Option("--global-batch", help="Windows per optimizer step over all processes; gradient accumulation makes up the difference.", show_default="--batch-size x processes", rich_help_panel=DATA)] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the initial weights, data order and dropout.", show_default="1337", rich_help_panel=DATA)] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Model preset: tiny, small, gpt2, gpt2-medium, gpt2-large, gpt2-xl.", show_default="small", rich_help_panel=MODEL)] = None,
    n_layer: Annotated[Optional[int], typer.Option("--n-layer", help="Override the preset's number of blocks.", rich_help_panel=MODEL)] = None,
    n_head: Annotated[Optional[int], typer.Option("--n-head", help="Override the preset's attention heads.", rich_help_panel=MODEL)] = None,
    n_embd: Annotated[Optional[int], typer.Option("--n-embd", help="Override the preset's width.", rich_help_panel=MODEL)] = None,
    n_positions: Annotated[Optional[int], typer.Option("--n-positions", help="Override the preset's context length.", rich_help_panel=MODEL)] = None,
    dropout: Annotated[Optional[float], typer.Option("--dropout", help="Override the dropout (also with --init-from).", rich_help_panel=MODEL)] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Start from a checkpoint, run directory or Hugging Face GPT-2 directory (fine-tuning).", rich_help_panel=MODEL)] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.", rich_help_panel=BUDGET)] = None,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Stop after this many training tokens.", rich_help_panel=BUDGET)] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", help="Stop after this many passes over the data.", show_default="1 when no other step budget is given", rich_help_panel=BUDGET)] = None,
    max_time: Annotated[Optional[str], typer.Option("--max-time", help="Stop after this long in this invocation, e.g. 90s, 30m, 2h (the schedule still follows the step budget).", rich_help_panel=BUDGET)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.", show_default="6e-4", rich_help_panel=OPTIM)] = None,
    min_lr: Annotated[Optional[float], typer.Option("--min-lr", help="Floor the schedule decays to.", show_default="lr / 10", rich_help_panel=OPTIM)] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help=f"Learning-rate schedule after a linear warmup: {', '.join(SCHEDULES)} (wsd: warmup-stable-decay).", show_default="cosine", rich_help_panel=OPTIM)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", help="Linear warmup steps.", show_default="5% of the steps, at most 1000", rich_help_panel=OPTIM)] = None,
    decay_fraction: Annotated[Optional[float], typer.Option("--decay-fraction", help="wsd: the final fraction of steps that decays.", show_default="0.2", rich_help_panel=OPTIM)] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay on matrices only.", show_default="0.1", rich_help_panel=OPTIM)] = None,
    beta1: Annotated[Optional[float], typer.Option("--beta1", help="AdamW beta1.", show_default="0.9", rich_help_panel=OPTIM)] = None,
    beta2: Annotated[Optional[float], typer.Option("--beta2", help="AdamW beta2.", show_default="0.95", rich_help_panel=OPTIM)] = None,
    grad_clip: Annotated[Optional[float], typer.Option("--grad-clip", help="Clip the gradient norm to this; 0 disables.", show_default="1.0", rich_help_panel=OPTIM)] = None,
    nan_retries: Annotated[Optional[int], typer.Option("--nan-retries", help="Rollbacks allowed after a non-finite loss before stopping.", show_default="3", rich_help_panel=OPTIM)] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.", show_default="auto", rich_help_panel=DEVICE)] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision: bf16 where supported (CPU, Ampere+), else fp16 with loss scaling.", show_default="off", rich_help_panel=DEVICE)] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Force the compute dtype: float32, bfloat16 or float16.", rich_help_panel=DEVICE)] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model (slow to start, faster steps).", show_default="off", rich_help_panel=DEVICE)] = None,
    peak_tflops: Annotated[Optional[float], typer.Option("--peak-tflops", help="Peak TFLOP/s of one device, for MFU.", show_default="known GPUs only", rich_help_panel=DEVICE)] = None,
    log_interval: Annotated[Optional[int], typer.Option("--log-interval", help="Report progress every N steps.", show_default="10", rich_help_panel=WATCH)] = None,
    eval_interval: Annotated[Optional[int], typer.Option("--eval-interval", help="Validation loss and a sample every N steps and at the end; 0 disables.", show_default="200", rich_help_panel=WATCH)] = None,
    eval_batches: Annotated[Optional[int], typer.Option("--eval-batches", help="Fixed validation batches per evaluation.", show_default="20", rich_help_panel=WATCH)] = None,
    sample_prompt: Annotated[Optional[str], typer.Option("--sample-prompt", help="Prompt of the sample at each evaluation.", show_default="Había una vez", rich_help_panel=WATCH)] = None,
    sample_tokens: Annotated[Optional[int], typer.Option("--sample-tokens", help="New tokens in that sample; 0 disables.", show_default="40", rich_help_panel=WATCH)] = None,
    save_interval: Annotated[Optional[int], typer.Option("--save-interval", help="Write last.pth every N steps (and at the end).", show_default="500", rich_help_panel=WATCH)] = None,
    keep_last: Annotated[Optional[int], typer.Option("--keep-last", help="Also keep the newest N numbered checkpoints step-NNNNNNN.pth.", show_default="0", rich_help_panel=WATCH)] = None,
) -> None:
    """Train a GPT-2 model on a prepared dataset into a run directory.

    Writes config.yaml, metrics.jsonl, loss.png, last.pth and best.pth (lowest validation loss).
    Ctrl-C saves last.pth and stops; --resume RUN_DIR continues exactly where it stopped.
    For several GPUs or machines, launch it with torchrun.
    """
    given = dict(locals())
    explicit = {
        k: v for k, v in given.items()
        if v is not None and k not in ("config_file", "resume", "force")
    }
    file_settings = load_config_file(config_file) if config_file is not None else {}
    checkpoint = None
    if resume is not None:
        checkpoint = load_resume_checkpoint(resume)
        config = resume_config(checkpoint, {**file_settings, **explicit})
    else:
        config = TrainConfig.from_dict(file_settings, source=str(config_file)).updated(explicit, source="options")

    run_training(config, checkpoint, force)
