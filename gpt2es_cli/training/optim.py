"""The optimizers: AdamW, and Muon beside AdamW.

`build_optimizer` makes what --optimizer names: AdamW for every parameter (weight decay on
matrices only), or Muon for the hidden weight matrices beside AdamW for the rest, combined into
one torch Optimizer (`MuonWithAdamW`) so the loop, the GradScaler and the checkpoints treat both
alike. Every group follows one schedule (schedule.py): `set_learning_rate` gives each group the
scheduled rate times its `lr_ratio` (the Muon group's is --muon-lr / --lr).

Under --parallel fsdp every parameter, gradient and state is a DTensor holding this process's rows.
AdamW works row by row as it is. Muon's Newton-Schulz iteration needs the whole matrix: each
matrix's update is gathered whole on one process (round robin), orthogonalized there and its rows
sent back (`orthogonalize`), so the step equals one process's and each process does 1/N of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gpt2es_cli.config import TrainConfig
from gpt2es_cli.device import cpu_has_native_bf16
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.fsdp import is_sharded, map_whole, mesh_device

MUON_ADJUST_LR = "match_rms_adamw"
"""torch's Muon scales each matrix's step to AdamW's update size (0.2 sqrt(max(rows, cols))), so
--muon-lr and --weight-decay mean what they mean for AdamW (Moonshot, "Muon is Scalable for LLM
Training", 2025)."""


def hidden_matrices(model: GPT2) -> list[torch.nn.Parameter]:
    """What Muon trains: the weight of every linear layer inside the blocks (attention c_attn and
    c_proj, MLP c_fc and c_proj). The embeddings, the head tied to wte, norms and biases are not."""
    return [
        m.weight for block in model.h for m in block.modules()
        if isinstance(m, torch.nn.Linear) and m.weight.requires_grad
    ]


def parameter_groups(model: torch.nn.Module, weight_decay: float, skip: list[torch.Tensor] | None = None) -> list[dict]:
    """Two AdamW groups: matrices (weights, embeddings) decay; biases and LayerNorm gains do not.

    Decaying a bias or a norm's scale pulls it towards 0, which only hurts, so only parameters
    with two or more dimensions decay. A tied parameter is listed once; those in `skip` not at all.
    """
    skipped = {id(p) for p in skip or ()}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skipped]  # skips repeats
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where this torch and device support it, else foreach."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # device without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)


def build_optimizer(model: GPT2, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer --optimizer names, over the plain (unwrapped) model's trainable parameters.
    LoRA adapters (--lora-rank) always train with AdamW: Muon orthogonalizes whole weight
    matrices, and an adapter's are its low-rank factors."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw" or config.lora_rank is not None:
        adamw = _adamw(parameter_groups(model, config.weight_decay), config.peak_lr, betas)
        adamw.register_load_state_dict_pre_hook(_refuse_muon_state)
        return adamw
    if config.optimizer != "muon":
        raise ConfigError(f"unknown optimizer {config.optimizer!r}: choose adamw or muon")
    hidden = hidden_matrices(model)
    adamw = _adamw(parameter_groups(model, config.weight_decay, skip=hidden), config.peak_lr, betas)
    muon = Muon(
        [{"params": hidden, "lr_ratio": config.muon_lr / config.peak_lr}],
        lr=config.muon_lr, weight_decay=config.weight_decay, adjust_lr_fn=MUON_ADJUST_LR,
    )
    return MuonWithAdamW(adamw, muon)


def orthogonalize_dtype(device: torch.device) -> torch.dtype:
    """The dtype of Muon's Newton-Schulz iterations: bfloat16 (as torch's Muon) on accelerators and
    CPUs with native bf16, float32 on other CPUs, where emulated bfloat16 matmuls are tens of times
    slower."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        return torch.float32
    return torch.bfloat16


def newton_schulz(g: torch.Tensor, steps: int, coefficients: tuple[float, float, float], eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalization of torch's Muon (Keller Jordan's), in `dtype`."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def orthogonalize(updates: list[torch.Tensor], steps: int, coefficients: tuple[float, float, float],
                  eps: float) -> list[torch.Tensor]:
    """Muon's orthogonalized updates of some matrices: `newton_schulz` in `orthogonalize_dtype`. Sharded
    updates (DTensors of this process's rows) are spread over the processes: each orthogonalizes the
    whole of 1/N of the matrices (gathered on it alone) and sends every process its rows back, so the
    result is one process's, for 1/N of the work (fsdp.map_whole)."""
    if updates and is_sharded(updates[0]):
        device = mesh_device(updates[0])  # the GPU, with --cpu-offload too
        return map_whole(updates, lambda full: newton_schulz(full, steps, coefficients, eps, orthogonalize_dtype(device)))
    return [newton_schulz(u, steps, coefficients, eps, orthogonalize_dtype(u.device)) for u in updates]


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same hyperparameters, checks and state: a `momentum_buffer` per matrix)
    whose orthogonalization runs in `orthogonalize_dtype` of the parameter's device."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            lr, momentum = float(group["lr"]), group["momentum"]
            updates = []
            for grad, buf in zip(grads, buffers, strict=True):
                buf.lerp_(grad, 1 - momentum)
                updates.append(grad.lerp(buf, momentum) if group["nesterov"] else buf)
            updates = orthogonalize(updates, group["ns_steps"], group["ns_coefficients"], group["eps"])
            for param, update in zip(params, updates, strict=True):
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-lr * muon_lr_scale(group["adjust_lr_fn"], param.shape))
        return loss


def muon_lr_scale(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch's Muon's per-matrix learning-rate factor."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def _refuse_muon_state(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    if isinstance(state_dict, dict) and "muon" in state_dict:
        raise CheckpointError(
            "this optimizer state is Muon's with AdamW's (the run was trained with --optimizer muon): "
            "resume with --optimizer muon, or start a new run from it with --init-from"
        )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to `lr` times its `lr_ratio` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for the hidden matrices and AdamW for every other parameter, as one torch Optimizer.

    `param_groups` are the two optimizers' own group dicts (AdamW's, then Muon's): a learning
    rate set there reaches its optimizer, and `GradScaler.unscale_` / `step` see every gradient
    and skip both steps on an overflow. `step` and `zero_grad` call both; `state_dict` holds both
    states under "adamw" and "muon". The per-parameter state lives in `.adamw.state` and
    `.muon.state`.
    """

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Muon) -> None:
        self.adamw = adamw
        self.muon = muon
        # Optimizer's own checks run on the union: no parameter may be in two groups.
        super().__init__([*adamw.param_groups, *muon.param_groups], defaults={})
        self._link()

    def _link(self) -> None:
        # load_state_dict gives each optimizer new group dicts; point at them again.
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]

    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)
        self.muon.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load both states. Each group's lr_ratio stays the one these settings gave (--lr and
        --muon-lr may change on resume); the rest of the hyperparameters come from the state."""
        if not isinstance(state_dict, dict) or not {"adamw", "muon"} <= state_dict.keys():
            raise CheckpointError(
                "this optimizer state is not Muon's with AdamW's (the run was trained with --optimizer adamw): "
                "resume with --optimizer adamw, or start a new run from it with --init-from"
            )
        ratios = [group.get("lr_ratio") for group in self.param_groups]
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        self._link()
        for group, ratio in zip(self.param_groups, ratios, strict=True):
            if ratio is not None:
                group["lr_ratio"] = ratio
