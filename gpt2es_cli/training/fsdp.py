"""FSDP2's sharded tensors, seen whole or as this process's rows: what the optimizers, the rollback
and the checkpoints need of a DTensor, in one place.

`fully_shard` (parallel.py's `FSDP`) turns every parameter into a DTensor on a 1-D mesh of the
processes, placed Shard(0): process r holds rows [r * c, (r + 1) * c) of c = ceil(rows / processes)
(torch.chunk's split, so the last processes may hold fewer rows, or none). With --cpu-offload the
local rows live in CPU memory while the mesh (and its collectives) are on the GPU, so each
gather first moves them to the mesh's device.
"""

from __future__ import annotations

import math
from typing import Any

import torch

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # a torch built without torch.distributed: nothing is ever sharded
    DTensor = Shard = None  # type: ignore[assignment,misc]


def is_sharded(value: Any) -> bool:
    """Whether `value` is a DTensor (a sharded parameter, gradient or optimizer state)."""
    return DTensor is not None and isinstance(value, DTensor)


def mesh_device(tensor: DTensor) -> torch.device:
    """The device the collectives of `tensor`'s mesh run on (this process's GPU, or the CPU)."""
    kind = tensor.device_mesh.device_type
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def whole(tensor: DTensor) -> torch.Tensor:
    """The whole tensor, gathered from every process (every process calls it), on the mesh's device."""
    device = mesh_device(tensor)
    local = tensor.to_local()
    if local.device != device:  # offloaded rows: gathered on the GPU
        tensor = DTensor.from_local(local.to(device), tensor.device_mesh, tensor.placements, run_check=False,
                                    shape=tensor.shape, stride=tensor.stride())
    return tensor.full_tensor()


def own_rows(tensor: DTensor) -> tuple[int, int]:
    """The rows [start, stop) of the whole tensor this process holds."""
    if tuple(tensor.placements) != (Shard(0),):
        raise ValueError(f"expected a DTensor sharded by rows (Shard(0)), got {tensor.placements}")
    rows, parts = tensor.shape[0], tensor.device_mesh.size()
    chunk = math.ceil(rows / parts) if rows else 0
    start = min(tensor.device_mesh.get_local_rank() * chunk, rows)
    return start, min(start + chunk, rows)


def sharded_like(full: torch.Tensor, like: DTensor) -> DTensor:
    """This process's rows of the whole tensor `full`, as a DTensor placed like `like` (on its local device,
    in its dtype). No communication: every process holds `full`."""
    start, stop = own_rows(like)
    local = like.to_local()
    rows = full[start:stop].to(device=local.device, dtype=local.dtype, copy=True)
    return DTensor.from_local(rows, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


class HeldShard:
    """A copy of this process's part of a DTensor, in CPU memory (what a rollback keeps), that can be
    made into a DTensor placed as the original again."""

    def __init__(self, tensor: DTensor):
        local = tensor.to_local()
        self.local = local.detach().to("cpu", copy=True)
        self.device = local.device
        self.mesh = tensor.device_mesh
        self.placements = tensor.placements
        self.shape = tensor.shape
        self.stride = tensor.stride()

    def restored(self) -> DTensor:
        """A new DTensor holding a copy of the kept part (later steps do not change what is kept)."""
        return DTensor.from_local(self.local.to(self.device, copy=True), self.mesh, self.placements,
                                  run_check=False, shape=self.shape, stride=self.stride)


def map_whole(tensors: list[DTensor], fn: Any) -> list[DTensor]:
    """`fn(whole matrix)` of each of `tensors` (DTensors placed alike, by rows), as DTensors placed like
    them, the work spread over the processes: matrix i is gathered on process i mod N alone, which
    applies `fn` to it and sends each process its rows back (every process calls it, with the same
    list). Each process computes 1/N of the matrices, at the cost of a gather and a scatter each."""
    import torch.distributed as dist

    if not tensors:
        return []
    mesh = tensors[0].device_mesh
    group, parts, me = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    device = mesh_device(tensors[0])
    padded, gathered, requests = [], [], []
    for i, tensor in enumerate(tensors):  # every gather started at once; each owner waits for its own
        chunk = math.ceil(tensor.shape[0] / parts)
        local = tensor.to_local().to(device)
        rows = local.new_zeros((chunk, *tensor.shape[1:]))
        rows[: local.shape[0]] = local
        owner = i % parts
        into = [torch.empty_like(rows) for _ in range(parts)] if me == owner else None
        requests.append(dist.gather(rows, into, dst=dist.get_global_rank(group, owner), group=group, async_op=True))
        padded.append(rows)
        gathered.append(into)
    for request in requests:
        request.wait()
    results, requests = [], []
    for i, tensor in enumerate(tensors):  # each process its own matrices, then every scatter at once
        owner, chunk = i % parts, padded[i].shape[0]
        pieces = None
        if me == owner:
            out = fn(torch.cat(gathered[i])[: tensor.shape[0]]).to(padded[i].dtype)
            pieces = [out.new_zeros(padded[i].shape) for _ in range(parts)]
            for r in range(parts):
                start = min(r * chunk, tensor.shape[0])
                stop = min(start + chunk, tensor.shape[0])
                pieces[r][: stop - start] = out[start:stop]
            gathered[i] = None  # the whole matrix is no longer needed
        mine = torch.empty_like(padded[i])
        requests.append(dist.scatter(mine, pieces, src=dist.get_global_rank(group, owner), group=group,
                                     async_op=True))
        results.append(mine)
    for request in requests:
        request.wait()
    out = []
    for tensor, mine in zip(tensors, results, strict=True):
        start, stop = own_rows(tensor)
        local = tensor.to_local()
        out.append(DTensor.from_local(mine[: stop - start].to(local.device), tensor.device_mesh, tensor.placements,
                                      run_check=False, shape=tensor.shape, stride=tensor.stride()))
    return out
