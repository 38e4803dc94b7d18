"""AdamW with weight decay on matrices only, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch

from gpt2es_cli.errors import ConfigError


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices (weights, embeddings) decay; biases and LayerNorm gains do not.

    Decaying a bias or a norm's scale pulls it towards 0, which only hurts, so only parameters
    with two or more dimensions decay. A tied parameter is listed once.
    """
    params = [p for p in model.parameters() if p.requires_grad]  # parameters() skips repeats
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float = 1e-8
) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch and device support it, else foreach."""
    groups = parameter_groups(model, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def default_warmup(total_steps: int) -> int:
    """5% of the steps, at least 1, at most 1000."""
    return min(1000, max(1, total_steps // 20))


def learning_rate(
    step: int,
    *,
    lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    schedule: str = "cosine",
    decay_fraction: float = 0.2,
) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup to lr, then

    cosine: half a cosine down to min_lr at total_steps; linear: a straight line to min_lr;
    constant: lr; wsd (warmup-stable-decay): lr until the last `decay_fraction` of the steps,
    then a straight line to min_lr. Past total_steps it stays at the end value.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        decay_start = max(warmup_steps, total_steps - math.ceil(decay_fraction * total_steps))
        if step < decay_start:
            return lr
        span = max(1, total_steps - decay_start)
        return lr - (lr - min_lr) * min(1.0, (step - decay_start + 1) / span)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps + 1) / span)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
    if schedule == "linear":
        return lr - (lr - min_lr) * progress
    raise ConfigError(f"unknown schedule {schedule!r}: choose cosine, linear, constant or wsd")
