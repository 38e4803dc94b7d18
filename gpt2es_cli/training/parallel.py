"""Data parallelism from outside the model (as torchtitan's parallelize.py): the loop talks to
one small interface, `Parallel`, and never knows whether it runs alone, under DDP or under FSDP.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_parallel`
reads them and returns `SingleProcess` (no torchrun, or one process) or `DDP` (a full replica
in every process, gradients averaged on the last micro-step of each optimizer step). Once the
run is planned, `select_strategy` swaps in `FSDP` when --parallel fsdp asks for it (FSDP2's
`fully_shard`: each process holds a shard of every weight, gradient and optimizer state; in
one process, a group of one).

The contract with the loop:
  - every process builds the same plain model and loads the full weights into it, `place`s it
    (on its device; a sharded strategy leaves it on the CPU, and sharding moves each shard to
    the device), then calls `wrap` once and runs training forward passes through the module it
    returns;
  - the optimizer is built over `model.parameters()` after `wrap` (sharding replaces them);
  - checkpoints take `model_state_dict` / `optimizer_state_dict`, every process calling them
    together: complete on the main process, or with a sharded strategy each process's part
    (DTensors), which every process then writes (saving.py); best.pth asks for the whole
    weights (`model_state_dict(full=True)`), gathered on the main process;
  - a resumed sharded checkpoint is read by `load_shards` (each process its part, or the whole);
  - gradient clipping, validation forward passes (inside `evaluating`) and collectives go
    through the interface.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from gpt2es_cli.checkpoint import Checkpoint, read_shards, read_shards_into, split_tensors, tensor_at
from gpt2es_cli.config import TrainConfig
from gpt2es_cli.device import Precision
from gpt2es_cli.errors import CheckpointError, ConfigError
from gpt2es_cli.training.fsdp import is_sharded, sharded_like, whole


def is_main_process() -> bool:
    """Whether this process is the one that reports and writes files (RANK 0, or no torchrun).

    Reads the environment only, so it can be asked before anything is initialised.
    """
    return int(os.environ.get("RANK", "0")) == 0


class Parallel(ABC):
    """How a training run spreads over processes; one instance per process."""

    rank: int = 0
    world_size: int = 1
    sharded: bool = False
    """Each process holds a part of the model (its state dicts are DTensors)."""
    save_group: Any = None
    """A process group for writing checkpoints in the background (None: they are written in the foreground)."""

    @property
    def is_main(self) -> bool:
        """Only the main process reports, samples and writes files."""
        return self.rank == 0

    @abstractmethod
    def local_device(self, device: torch.device) -> torch.device:
        """The device this process trains on, given the one the settings chose."""

    def place(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The plain model where `wrap` takes it: on `device` (a sharded strategy keeps it on the CPU)."""
        return model.to(device)

    def evaluating(self) -> contextlib.AbstractContextManager:
        """Context for an evaluation (validation losses, the main process's sample), entered by every
        process together: inside it, processes may run different numbers of forward passes."""
        return contextlib.nullcontext()

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
    def model_state_dict(self, full: bool = False) -> dict[str, torch.Tensor]:
        """The model's weights, for a checkpoint: complete on the main process, or with a sharded
        strategy each process's part (DTensors) unless `full` (then gathered on the main process)."""

    @abstractmethod
    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's state, for a checkpoint: complete on the main process, or with a sharded
        strategy each process's part (DTensors)."""

    @abstractmethod
    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a whole optimizer state (as a single-file checkpoint holds it) in every process."""

    def load_shards(self, checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load a sharded checkpoint's weights and optimizer state (left on disk by `load_checkpoint(keep_sharded=
        True)`) into the wrapped model and its optimizer, every process: here each reads them whole."""
        assert checkpoint.shards is not None and checkpoint.training is not None
        weights, state = read_shards(checkpoint.shards, checkpoint.training.optimizer)
        model.load_state_dict(weights)
        self.load_optimizer_state_dict(optimizer, state or {})

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

    def model_state_dict(self, full: bool = False) -> dict[str, torch.Tensor]:
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


class FSDP(DDP):
    """FSDP2 (`fully_shard`): every block is one shard group and the root holds the rest (the
    embeddings with the head tied to them, the final norm), so each process keeps 1/N of every
    weight, gradient and optimizer state; a block's weights are gathered for its forward and
    backward and freed after. Weights stay float32 (the optimizer's master copy); with a bf16 run
    they are gathered in bf16 and gradients reduced in float32. With gradient accumulation every
    micro-step reduce-scatters its gradients into the shards, so memory stays 1/N. With --cpu-offload
    the shards, their gradients and the optimizer's state live in CPU memory."""

    sharded = True

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device,
                 compute_dtype: torch.dtype | None = None, cpu_offload: bool = False):
        super().__init__(rank, world_size, local_rank)
        self.device = self.local_device(device)
        self.compute_dtype = compute_dtype
        self.cpu_offload = cpu_offload
        self.comm_device = self.device
        # Background checkpoint writes talk over a gloo group of their own, beside the training's collectives.
        self.save_group = dist.new_group(backend="gloo")

    def place(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model  # fully_shard moves each group's shard to the device (or keeps it on the CPU to offload)

    def wrap(self, model: torch.nn.Module, compile: bool = False) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        options = dict(
            mesh=mesh,
            mp_policy=MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32),
            offload_policy=CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy(),
        )
        for block in model.h:
            if compile:  # block by block (as torchtitan): the graphs stay whole between the gathers
                block.compile()
            fully_shard(block, **options)
        fully_shard(model, **options)  # the rest in one group: wte and the head tied to it shard together
        self.model = model
        return model

    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        # Every micro-step reduce-scatters its gradients into the float32 shards (they accumulate there) and
        # frees the gathered weights, as torchtitan does: more communication with accumulation, but each
        # process never holds more than its 1/N of the gradients, which is what sharding is for.
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> float:
        # The norm over every shard: each process's sum of squares, summed over the processes.
        grads = [p.grad for p in self._model.parameters() if p.grad is not None]
        local = [g.to_local() if is_sharded(g) else g for g in grads]
        if not local:
            return 0.0
        squares = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32).to(self.comm_device) for t in local])
        total = self.all_reduce_sum(squares.square().sum()).sqrt()
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
        for t in local:
            t.mul_(scale.to(t.device))
        return float(total)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        from torch.distributed.fsdp import FSDPModule

        # Every group gathered once, and kept gathered through the forward passes: they need no
        # collective, so each process may score its own number of batches, and the main one sample.
        model = self._model
        groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
        model.set_reshard_after_forward(False)
        for group in groups:
            group.unshard()
        try:
            yield
        finally:
            for group in groups:
                if group is not model:  # the root keeps its own rule (gathered through the step)
                    group.set_reshard_after_forward(True, recurse=False)
                group.reshard()

    def model_state_dict(self, full: bool = False) -> dict[str, torch.Tensor]:
        model = self._model
        state = model.state_dict()
        if not full:
            return state
        names = [(name, id(p)) for name, p in model.named_parameters(remove_duplicate=False)]
        uses = Counter(i for _, i in names)
        owner = {name: i for name, i in names if uses[i] > 1}  # the tied weights' names, by parameter
        gathered: dict[str, torch.Tensor] = {}
        seen: dict[int, torch.Tensor] = {}
        for key, value in state.items():  # one tensor at a time, every process alike; the tied head once
            if owner.get(key) in seen:
                value = seen[owner[key]]
            elif is_sharded(value):
                value = whole(value)
            value = value.detach().cpu() if self.is_main else value
            if key in owner:
                seen[owner[key]] = value
            if self.is_main:
                gathered[key] = value
        return gathered

    def optimizer_state_dict(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()  # each process's part: DTensors, written by every process

    def load_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """A whole state (a single-file checkpoint's): each process keeps its rows of each sharded tensor."""
        live = _with_state(optimizer)
        _, paths, tensors = split_tensors(state)
        for path, tensor in zip(paths, tensors, strict=True):
            current = tensor_at(live, path)
            if is_sharded(current):
                _put(state, path, sharded_like(tensor, current))
        optimizer.load_state_dict(state)

    def load_shards(self, checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Each process reads its part of each weight and optimizer state, however many processes wrote them."""
        shards, training = checkpoint.shards, checkpoint.training
        assert shards is not None and training is not None
        live = _with_state(optimizer)
        targets = {shards.model_key(k): v for k, v in model.state_dict().items() if k not in shards.aliases}
        for path in shards.optimizer_paths:
            current = tensor_at(live, path)
            if not isinstance(current, torch.Tensor):
                raise CheckpointError(
                    f"{checkpoint.path}: its optimizer state does not fit this run's optimizer "
                    f"({shards.optimizer_key(path)} has no place in it)"
                )
            targets[shards.optimizer_key(path)] = current
        read_shards_into(shards, targets)  # in place: the weights' and the optimizer's own tensors
        state = training.optimizer or {}
        for path in shards.optimizer_paths:
            _put(state, path, targets[shards.optimizer_key(path)])
        optimizer.load_state_dict(state)


def _put(tree: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _with_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state_dict, its per-parameter state made first if it has none yet (one step at a
    zero learning rate on zero gradients, which changes no weight), so that a saved state has tensors to
    load into (each process's part of each DTensor)."""
    state = optimizer.state_dict()
    if split_tensors(state)[1]:
        return state
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for group, lr in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = lr
    return optimizer.state_dict()


def strategy_problem(config: TrainConfig, precision: Precision) -> str | None:
    """What stops --parallel (resolved) and --cpu-offload from running as set (None: nothing)."""
    if config.cpu_offload and config.parallel != "fsdp":
        return ("--cpu-offload offloads the shards of --parallel fsdp, and --parallel auto chose ddp (a replica "
                "fits): drop --cpu-offload, or pass --parallel fsdp")
    if config.parallel != "fsdp":
        return None
    device = precision.device.type
    if device not in ("cuda", "cpu"):
        return f"--parallel fsdp runs on CUDA GPUs or the CPU, not {device}: use --parallel ddp"
    if precision.autocast_dtype == torch.float16:
        return ("--parallel fsdp trains in bfloat16 or float32, not float16 (its loss scaling is not sharded): "
                "use --dtype bfloat16 (GPUs from Ampere on) or --dtype float32")
    if config.cpu_offload and device != "cuda":
        return "--cpu-offload moves GPU memory to the CPU, and this run is on the CPU already: drop it"
    return None


def select_strategy(parallel: Parallel, config: TrainConfig, precision: Precision) -> Parallel:
    """The strategy the planned run asks for: `parallel` itself, or with --parallel fsdp an `FSDP` over the
    same processes (in one process without torchrun, a process group of one is made for it)."""
    if config.parallel != "fsdp":
        return parallel
    device = precision.device
    if not dist.is_initialized():  # one process, no torchrun: a group of one, in memory
        if device.type == "cuda":
            dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1,
                                    device_id=torch.device("cuda", device.index or 0))
        else:
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    local_rank = getattr(parallel, "local_rank", 0)
    return FSDP(parallel.rank, parallel.world_size, local_rank, device, precision.autocast_dtype, config.cpu_offload)
