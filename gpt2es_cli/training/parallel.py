"""Data parallelism from outside the model (as torchtitan's parallelize.py): the loop talks to
one small interface, `Parallel`, and never knows whether it runs alone or under DDP.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_parallel`
reads them and returns `SingleProcess` (no torchrun, or one process) or `DDP` (a full replica
in every process, gradients averaged on the last micro-step of each optimizer step).

The contract with the loop, which keeps a sharded strategy (FSDP2's `fully_shard`) a third
implementation beside these two:
  - every process builds the same plain model and loads the full weights into it, then calls
    `wrap` once and runs training forward passes through the module it returns;
  - the optimizer is built over `model.parameters()` after `wrap` (sharding replaces them);
  - checkpoints take `model_state_dict` / `optimizer_state_dict`, complete on the main process
    (a sharded strategy gathers them there), and every process calls them together;
  - gradient clipping, validation forward passes and collectives go through the interface.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.distributed as dist

from gpt2es_cli.errors import ConfigError


def is_main_process() -> bool:
    """Whether this process is the one that reports and writes files (RANK 0, or no torchrun).

    Reads the environment only, so it can be asked before anything is initialised.
    """
    return int(os.environ.get("RANK", "0")) == 0


class Parallel(ABC):
    """How a training run spreads over processes; one instance per process."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process reports, samples and writes files."""
        return self.rank == 0

    @abstractmethod
    def local_device(self, device: torch.device) -> torch.device:
        """The device this process trains on, given the one the settings chose."""

    @abstractmethod
    def wrap(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        """Take the plain model (full weights, on its device) and return the module to run
        training forward passes through (torch.compile'd when `compile`)."""

    @abstractmethod
    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-step's backward: gradients are synchronised only when `sync`
        (the last micro-step of an optimizer step)."""

    @abstractmethod
    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the gradients' total norm over the whole model to max_norm; return the norm before."""

    @abstractmethod
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of targets y (B, T) given inputs x (B, T), in evaluation (no
        gradients, no sync)."""

    @abstractmethod
    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (in place; returned for convenience)."""

    @abstractmethod
    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value` (plain data), in rank order."""

    @abstractmethod
    def barrier(self) -> None:
        """Wait until every process gets here."""

    @abstractmethod
    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights, for a checkpoint (complete on the main process)."""

    @abstractmethod
    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's whole state, for a checkpoint (complete on the main process)."""

    @abstractmethod
    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a whole optimizer state (as `optimizer_state_dict` gave it) in every process."""

    @abstractmethod
    def shutdown(self) -> None:
        """Leave the process group (if any)."""


class SingleProcess(Parallel):
    """One process holding the whole model: every collective is the identity."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None

    def local_device(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        self.model = model
        return torch.compile(model) if compile else model

    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self._model.parameters(), max_norm))

    def eval_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._model(x, targets=y, reduction="sum")

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def all_gather(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        pass

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        return self._model.state_dict()

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def shutdown(self) -> None:
        pass

    @property
    def _model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("wrap(model) must be called first")
        return self.model


class DDP(SingleProcess):
    """DistributedDataParallel: a full replica per process, gradients all-reduced (averaged)
    during the backward of the last micro-step. Weights and optimizer states are the same in
    every process, so the main one's are the whole state."""

    def __init__(self, rank: int, world_size: int, local_rank: int):
        super().__init__()
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def local_device(self, device: torch.device) -> torch.device:
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        self.model = model
        device = next(model.parameters()).device
        # GPT2 has no buffers, so DDP's buffer sync (broadcast_buffers, deprecated in recent
        # torch) has nothing to do: the defaults cost nothing and warn about nothing.
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        return torch.compile(self._ddp) if compile else self._ddp

    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        if sync or self._ddp is None:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def all_gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_parallel(device_type: str) -> Parallel:
    """The strategy torchrun's environment asks for: DDP when it started several processes
    (joining their process group: nccl on CUDA, gloo otherwise), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SingleProcess()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "mps":
        raise ConfigError("multi-process training is not supported on Apple MPS: use one process")
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node but it has "
                f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        if device_type == "cuda":  # naming the device binds NCCL to it (barrier() would guess)
            dist.init_process_group("nccl", init_method="env://", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo", init_method="env://")
    return DDP(rank=rank, world_size=world_size, local_rank=local_rank)
