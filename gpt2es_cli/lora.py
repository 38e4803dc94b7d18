"""LoRA: fine-tuning a frozen GPT2 through small adapters, with the `peft` library.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") leaves every weight
of a trained model as it is and learns, for each adapted Linear layer of weight W (out, in), two
small matrices A (rank, in) and B (out, rank); the layer computes W x + (alpha / rank) B A x. B
starts at zero, so training starts from the base model exactly, and only A and B have gradients
and optimizer state: a fraction of a percent of the parameters at rank 16.

The adapters come from peft (`inject_adapter_in_model`, its API for any torch module): it puts a
`lora.Linear` in place of each targeted nn.Linear of our GPT2, which stays our GPT2 (the same
forward, fused loss, KV cache and activation checkpointing). Which layers: --lora-targets names
(config.LORA_LAYERS) resolved to module paths by `target_modules`.

What a run saves is the adapter alone, in plain names (`adapter_state`): h.0.attn.c_attn.lora_A
(rank, in) and h.0.attn.c_attn.lora_B (out, rank), beside an `AdapterRecord` that names the base
and its `weights_sha256` (checkpoint.py defines both, and `merge`). Opening such a checkpoint
(artifacts.open_checkpoint, through artifacts.open_base) finds the base again, refuses one whose
hash differs (`check_base`) and merges, so every command takes an adapter run as a full model.

peft is imported only by the functions that build adapters (`require_peft` says how to install it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from gpt2es_cli.checkpoint import (
    LORA_PARTS,
    AdapterBase,
    AdapterRecord,
    Checkpoint,
    adapted_modules,
    clean_state_dict,
    merge_adapter,
    weights_sha256,
)
from gpt2es_cli.config import ModelConfig, lora_targets_problem
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.model import GPT2

ADAPTER_NAME = "default"
"""peft's name for the one adapter each layer holds."""
INSTALL = "pip install 'gpt2es[lora]'"
_PEFT_KEY = re.compile(rf"^(?P<module>.+)\.(?P<part>{'|'.join(LORA_PARTS)})\.{ADAPTER_NAME}\.weight$")
"""A peft adapter parameter's state_dict key: h.0.attn.c_attn.lora_A.default.weight."""

merge = merge_adapter
"""merge(base_state, adapter_state, record) -> the full state dict, float32 (checkpoint.merge_adapter)."""


def require_peft() -> Any:
    """The peft module, or a one-line ConfigError saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(f"--lora-rank needs the peft library: {INSTALL}") from None
    return peft


def target_modules(model_config: ModelConfig, targets: str | Iterable[str]) -> list[str]:
    """The module paths --lora-targets names in a GPT2 of `model_config`, in block order:
    'c_attn,c_fc' -> ['h.0.attn.c_attn', 'h.0.mlp.c_fc', 'h.1.attn.c_attn', ...]."""
    names = _names(targets)
    problem = lora_targets_problem(names)
    if problem:
        raise ConfigError(problem)
    return adapted_modules(names, model_config.n_layer)


def _names(targets: str | Iterable[str]) -> list[str]:
    return [t.strip() for t in targets.split(",") if t.strip()] if isinstance(targets, str) else list(targets)


def base_record(base: Checkpoint, source: str, revision: str | None, *, rank: int, alpha: float, dropout: float,
                targets: str | Iterable[str]) -> AdapterRecord:
    """The record of a new adapter on `base` (as opened from `source` at `revision`): the base's
    config and the hash of its weights as loaded."""
    return AdapterRecord(
        rank=rank, alpha=float(alpha), dropout=float(dropout), targets=tuple(_names(targets)),
        base=AdapterBase(source=source, revision=revision, sha256=weights_sha256(base.model_state),
                         model_config=base.model_config.to_dict()),
    )


def check_base(record: AdapterRecord, base: Checkpoint, adapter: str | Path | None = None) -> None:
    """Refuse `base` as the base of `record` unless its weights hash as the record says (one line,
    naming both hashes and what to do)."""
    found = weights_sha256(base.model_state)
    if found == record.base.sha256:
        return
    where = base.path if base.path is not None else record.base.source
    owner = f"{adapter}: " if adapter is not None else ""
    raise CheckpointError(
        f"{owner}the model at {where} is not the base this LoRA adapter was trained on (its weights hash to "
        f"{found[:16]}, the adapter's base to {record.base.sha256[:16]}): put the base model back at "
        f"{record.base.source}, or fine-tune again on the model that is there now"
    )


# --- adapters in a live model ------------------------------------------------------------------


def add_adapters(model: GPT2, *, rank: int, alpha: float, dropout: float, targets: str | Iterable[str]) -> GPT2:
    """Put LoRA adapters on `model`'s target layers (in place; returned for convenience): every
    other parameter is frozen, A is drawn from the torch RNG (seed it for the same adapters in
    every process) and B is zero, so the model computes what it did before."""
    peft = require_peft()
    modules = target_modules(model.config, targets)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, bias="none")
    model = peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad_(_PEFT_KEY.match(name) is not None)
    return model


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors in a peft-adapted model's state_dict, under our plain names
    (h.0.attn.c_attn.lora_A); the base's weights are left out."""
    found = {}
    for key, value in clean_state_dict(state).items():
        match = _PEFT_KEY.match(key)
        if match is not None:
            found[f"{match['module']}.{match['part']}"] = value
    return found


def load_adapter_state(model: GPT2, state: dict[str, torch.Tensor]) -> None:
    """Copy an adapter's tensors (plain names, as `adapter_state` gives them) into the adapters of
    `model`; each adapted layer must be there with the same shapes."""
    wanted = {f"{m}.{part}" for m in _adapted(model) for part in LORA_PARTS}
    state = clean_state_dict(state)
    if set(state) != wanted:
        odd = sorted(set(state) ^ wanted)
        raise CheckpointError(f"the adapter does not fit the model's adapted layers ({', '.join(odd[:3])} ...)")
    with torch.no_grad():
        for key, value in state.items():
            module, _, part = key.rpartition(".")
            weight = getattr(model.get_submodule(module), part)[ADAPTER_NAME].weight
            if weight.shape != value.shape:
                raise CheckpointError(f"{key} has shape {tuple(value.shape)}, the model's adapter {tuple(weight.shape)}")
            weight.copy_(value)


def _adapted(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if hasattr(module, "base_layer") and hasattr(module, "lora_A")]


def hold_frozen_in(model: GPT2, dtype: torch.dtype) -> None:
    """Hold the blocks' frozen Linear layers (the adapted layers' base weights and the layers left
    as they are) in `dtype`; the adapters, the embeddings and the norms stay float32. The run must
    compute in `dtype` (autocast), which is what `resolve_base_dtype` checks."""
    if dtype == torch.float32:
        return
    for block in model.h:
        for module in block.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                module.to(dtype)


def resolve_base_dtype(name: str, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype --lora-base-dtype holds the frozen matrices in, given the run's compute dtype:
    auto follows it; half precision needs the run to compute in that dtype."""
    if name == "auto":
        return autocast_dtype or torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype != torch.float32 and dtype != autocast_dtype:
        computes = str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else "float32"
        raise ConfigError(
            f"--lora-base-dtype {name} needs the run to compute in {name}, and it computes in {computes}: "
            f"add --dtype {name} (or --amp where it picks {name}), or use --lora-base-dtype auto"
        )
    return dtype


def trainable_parameters(model: torch.nn.Module) -> int:
    """Parameters that train (the adapters, with LoRA), a tied one counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_parameters(model_config: ModelConfig, rank: int, targets: str | Iterable[str]) -> int:
    """The adapter's parameter count: rank x (in + out) for each adapted layer."""
    shapes = GPT2.state_shapes(model_config)
    return sum(rank * sum(shapes[f"{m}.weight"]) for m in target_modules(model_config, targets))
