"""The last good state of a run, in memory, which a non-finite loss rolls back to.

The loop remembers it at the start and after each save of last.pth: the model's weights, the
optimizer's state, the clipping history and where the progress stood. A rollback puts them
back (the learning-rate scale and the recoveries count are the loop's to change, not undone).
Only what trains is copied: with LoRA, the adapters (the frozen base cannot go wrong). A sharded
model (--parallel fsdp) keeps each process's part of every DTensor, and gets it back as a DTensor.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2es_cli.checkpoint import Progress
from gpt2es_cli.training.clipping import GradClip
from gpt2es_cli.training.fsdp import HeldShard, is_sharded


def clone_to_cpu(value: Any) -> Any:
    """A copy of `value` with every tensor in it detached and copied to the CPU (a DTensor's local part,
    held as a `HeldShard`)."""
    if is_sharded(value):
        return HeldShard(value)
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: clone_to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_to_cpu(v) for v in value)
    return value


def restored(value: Any) -> Any:
    """What `clone_to_cpu` kept, as live state again: every HeldShard a new DTensor (tensors copied as they are)."""
    if isinstance(value, HeldShard):
        return value.restored()
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: restored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(restored(v) for v in value)
    return value


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The entries of `model`'s state_dict that train: all of them, but those of frozen parameters."""
    frozen = {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


class LastGood:
    """The state to roll back to, and how many rollbacks it has had."""

    def __init__(self) -> None:
        self.model: dict[str, torch.Tensor] = {}
        self.optimizer: dict[str, Any] = {}
        self.clip: dict[str, Any] = {}
        self.step = 0
        self.tokens_seen = 0
        self.rollbacks = 0
        """Rollbacks to this state so far."""

    def remember(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: GradClip,
                 progress: Progress) -> None:
        """This is the last good state now (the previous one is held until the new one is whole)."""
        weights, moments = clone_to_cpu(trainable_state(model)), clone_to_cpu(optimizer.state_dict())
        self.model, self.optimizer = weights, moments
        self.clip = clip.state_dict()
        self.step, self.tokens_seen = progress.step, progress.tokens_seen
        self.rollbacks = 0

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: GradClip,
                progress: Progress) -> None:
        """Put the remembered state back, and count the rollback."""
        missing, unexpected = model.load_state_dict(restored(self.model), strict=False)
        assert not unexpected and set(missing) <= {n for n, p in model.named_parameters(remove_duplicate=False)
                                                     if not p.requires_grad}, "the model changed since remembered"
        # A copy: on CPU load_state_dict adopts the tensors it is given, and later steps would
        # change the state a second rollback needs.
        optimizer.load_state_dict(restored(self.optimizer))
        clip.load_state_dict(self.clip)
        progress.step, progress.tokens_seen = self.step, self.tokens_seen
        self.rollbacks += 1
