"""`--preset auto`: the model size (and learning rate) the time budget can train best.

A fixed budget of compute buys the lowest loss with a model neither too big (it sees too few
tokens) nor too small (it stops learning): Chinchilla's rule of thumb is ~20 tokens per
parameter. What a budget buys on this machine is measured, not assumed: `choose_model_size`
times a real training step (forward, backward, optimizer) of each candidate shape of `LADDER`,
smallest first, at the run's batch and sequence length, predicts the tokens each would train in
TRAIN_SHARE of --max-time, and takes the largest whose tokens per block parameter (the
embedding is left out: it costs a lookup, not a matrix product per token) reach
TOKENS_PER_PARAMETER. Larger candidates are not timed once the last one's speed (an upper bound
for them) already rules them out, so a laptop times two or three small shapes, a GPU the GPT-2
family.

TOKENS_PER_PARAMETER is calibrated with benchmarks/bench_quality.py (held-out bits per byte of
shapes side by side at fixed wall-clock budgets on the book corpus), and sits near Chinchilla's
rule.

The learning rate follows the width (unless --lr is given): AUTO_LR_BASE x 768 / n_embd, the
way muP scales Adam's rate for hidden matrices, so GPT-2's 6e-4 holds at 768 and narrower
models step faster.

Without --max-time there is no compute budget to fit (a step or token budget trains a bigger
model better, only slower), so auto is the `small` preset at --lr's default.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from gpt2es_cli.config import DEFAULT_LR, PRESETS, ModelConfig, TrainConfig
from gpt2es_cli.device import Precision
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.memory import ESTIMATE_SHARE, available_memory, estimate_training_memory, parameter_count
from gpt2es_cli.training.optim import build_optimizer

LADDER: tuple[tuple[int, int, int, int], ...] = (
    # n_layer, n_head, n_embd, n_positions
    (2, 2, 128, 256),
    (4, 4, 256, 256),
    (6, 6, 384, 256),  # small
    (8, 8, 512, 512),
    (12, 12, 768, 1024),  # gpt2
    (24, 16, 1024, 1024),  # gpt2-medium
    (36, 20, 1280, 1024),  # gpt2-large
    (48, 25, 1600, 1024),  # gpt2-xl
)
"""The shapes auto chooses from, smallest first: head width 64, depth growing with width."""
TOKENS_PER_PARAMETER = 10.0
"""The fewest training tokens per block parameter a chosen model gets (half Chinchilla's ~20)."""
TRAIN_SHARE = 0.85
"""Share of --max-time spent in training steps (the rest: evaluations, saves, start-up)."""
PROBE_SHARE = 0.05
"""Timing stops before it would take more than this share of --max-time."""
AUTO_LR_BASE = DEFAULT_LR
AUTO_LR_MAX = 4e-3
NO_TIME_PRESET = "small"


def shape_name(model: ModelConfig) -> str:
    """'small', 'gpt2', ... for a preset's shape, else '4x256' (blocks x width)."""
    for name, preset in PRESETS.items():
        if (preset.n_layer, preset.n_head, preset.n_embd) == (model.n_layer, model.n_head, model.n_embd):
            return name
    return f"{model.n_layer}x{model.n_embd}"


def auto_lr(n_embd: int) -> float:
    """The learning rate auto gives a model of this width."""
    return min(AUTO_LR_MAX, AUTO_LR_BASE * 768 / n_embd)


@dataclass(frozen=True)
class Candidate:
    """One shape auto considered."""

    name: str
    block_parameters: int
    tokens_per_second: float | None
    """Measured (None: not timed, as a smaller one already ruled it out, or it does not fit)."""
    tokens: float | None
    """Tokens it would train in the budget."""
    fits: bool = True


@dataclass(frozen=True)
class SizeChoice:
    """What --preset auto chose, and why."""

    model: ModelConfig
    lr: float | None
    """The learning rate for its width (None: --lr was given)."""
    reason: str
    """'time': fitted to --max-time; 'no_time': no time budget, the NO_TIME_PRESET."""
    candidates: tuple[Candidate, ...] = ()
    probe_seconds: float = 0.0
    tokens_per_parameter: float = TOKENS_PER_PARAMETER

    @property
    def name(self) -> str:
        return shape_name(self.model)

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.name == self.name), None)


def ladder(vocab_size: int, seq_len: int | None, dropout: float, **model: object) -> list[ModelConfig]:
    """The candidate models, each with a context of at least the run's --seq-len (`model`: the run's
    other model settings: head, position encoding)."""
    base = replace(PRESETS[NO_TIME_PRESET], **model)
    return [
        replace(base, vocab_size=vocab_size, n_layer=layers, n_head=heads, n_embd=width,
                n_positions=max(positions, seq_len or 0), dropout=dropout)
        for layers, heads, width, positions in LADDER
    ]


def choose_model_size(config: TrainConfig, vocab_size: int, dropout: float,
                      measure: Callable[[ModelConfig], float | None], world_size: int = 1,
                      clock: Callable[[], float] = time.perf_counter) -> SizeChoice:
    """Resolve --preset auto (see the module docstring). `measure(model)` returns one process's
    training tokens per second for that model, or None when it does not fit in memory."""
    if config.max_time is None:
        model = ladder(vocab_size, config.seq_len, dropout, **_model_fields(config))[LADDER.index((6, 6, 384, 256))]
        return SizeChoice(model=model, lr=None, reason="no_time")
    train_seconds = TRAIN_SHARE * config.max_time
    started = clock()
    candidates: list[Candidate] = []
    chosen: ModelConfig | None = None
    models = ladder(vocab_size, config.seq_len, dropout, **_model_fields(config))
    speed_bound = math.inf  # tokens/s of the last timed candidate: no larger one is faster
    for i, model in enumerate(models):
        params = parameter_count(model)[1]
        name = shape_name(model)
        out_of_time = clock() - started > PROBE_SHARE * config.max_time
        if chosen is not None and (speed_bound * train_seconds < TOKENS_PER_PARAMETER * params or out_of_time):
            candidates.append(Candidate(name, params, None, None))
            continue
        tps = measure(model)
        if tps is None:  # does not fit: neither does anything larger
            candidates.extend(Candidate(shape_name(m), parameter_count(m)[1], None, None, fits=False)
                              for m in models[i:])
            break
        tps *= world_size
        speed_bound = tps
        tokens = tps * train_seconds
        candidates.append(Candidate(name, params, tps, tokens))
        if chosen is None or tokens >= TOKENS_PER_PARAMETER * params:
            chosen = model  # the smallest always; a larger one when its tokens reach the rule
    assert chosen is not None, "the smallest candidate was not timed"
    if len(candidates) < len(models):
        candidates.extend(Candidate(shape_name(m), parameter_count(m)[1], None, None) for m in models[len(candidates):])
    return SizeChoice(
        model=chosen, lr=None if config.lr is not None else auto_lr(chosen.n_embd), reason="time",
        candidates=tuple(candidates), probe_seconds=clock() - started,
    )


def _model_fields(config: TrainConfig) -> dict[str, object]:
    """The model settings of the run that are not its size: head, position encoding."""
    return {k: v for k, v in config.model_overrides().items() if k in ("tie_word_embeddings", "position", "rope_theta")}


def measure_training_speed(model_config: ModelConfig, config: TrainConfig, seq_len: int, batch_size: int,
                           precision: Precision, steps: int = 2) -> float | None:
    """Tokens per second of real training steps (forward, backward, optimizer) of a fresh model on
    random windows, the fastest after the first; None when it does not fit in memory. The random
    streams are left as they were; everything is freed after."""
    device = precision.device
    speed = _time_steps(model_config, config, seq_len, batch_size, precision, steps)
    speed = _agree(speed or 0.0, device)  # every process joins, even one where it did not fit
    return speed if speed > 0 else None


def _time_steps(model_config: ModelConfig, config: TrainConfig, seq_len: int, batch_size: int,
                precision: Precision, steps: int) -> float | None:
    device = precision.device
    if device.type != "cuda":
        needed = estimate_training_memory(
            model_config, seq_len, batch_size, autocast_dtype=precision.autocast_dtype,
            activation_checkpointing=config.activation_checkpointing, optimizer=config.optimizer,
            device_type=device.type,
        ).total
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes sharing this machine's RAM
        if needed > ESTIMATE_SHARE * available_memory(device) // max(1, local):
            return None
    times: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = optimizer = None
        try:
            model = GPT2(model_config).to(device).train()
            model.activation_checkpointing = config.activation_checkpointing
            optimizer = build_optimizer(model, config)
            x = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), device=device)
            y = torch.randint(0, model_config.vocab_size, (batch_size, seq_len), device=device)
            for _ in range(steps):
                _synchronize(device)
                t0 = time.perf_counter()
                with precision.autocast():
                    loss = model(x, targets=y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _synchronize(device)
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError:
            return None
        finally:
            del model, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return batch_size * seq_len / min(times[1:] or times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _agree(tokens_per_second: float, device: torch.device) -> float:
    """Under torchrun every process times itself: all take the slowest, so all choose alike."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tokens_per_second
    value = torch.tensor([tokens_per_second], dtype=torch.float64,
                         device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return float(value.item())
