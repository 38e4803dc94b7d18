"""How much memory a training step takes, and `--batch-size auto`: the largest micro-batch that fits.

`estimate_training_memory` is a model of the peak of one training step of our GPT-2, by what
holds the bytes: fp32 weights, gradients and optimizer state, the low-precision weight copies
autocast makes, the loop's rollback copy, the activations kept for the backward pass (all of
every block, or only each block's input with activation checkpointing), the gradients the
fused loss and head keep (no logits are built), the transient work of the loss and of one
block's backward, and what the process itself adds. Between steps there is a second peak, on
the CPU the larger one at small batches: while the loop renews its rollback copy, the old and
the new one are both held. The same numbers feed benchmarks/bench_memory.py's tables and
`choose_batch_size`.

Under torchrun, each process's share. DDP keeps a full replica in every process, and its
gradient buckets a second copy of the gradients. Sharded (`--parallel fsdp`: FSDP2's
fully_shard on every block and at the root), the fp32 weights, gradients and optimizer state
are divided by the N processes; autocast makes no copies, as the weights are gathered in the
compute dtype; instead a process holds the root's full weights (embeddings, final norm: the
root is not resharded between forward and backward), three blocks' (the one computing, its
all-gather buffer, the next one prefetched) and one block's full gradients with their fp32
copy for the reduce-scatter; gradient accumulation changes none of it, as every pass
reduce-scatters its gradients into the shards. Muon gathers each full matrix to orthogonalise it, a transient of the optimizer step. With --cpu-offload the shards live in host memory (`offloaded`) and the GPU
keeps the gathered weights, the gradients of one block, and the activations. The activations
are the replica's (each process runs its own micro-batch); LoRA runs are estimated as replicas.
`pick_parallel` resolves `--parallel auto` from these two estimates (see its docstring).

`choose_batch_size` resolves `--batch-size auto` before the run starts: on CUDA it measures,
running real forward/backward passes at the real sequence length (precision and activation
checkpointing as configured, the optimizer state held) at 1, 2, 4, ... windows until one runs
out of memory; on the CPU and Apple MPS, and for a sharded run (a replica probed alone might
not fit where the shards do), it takes the largest size the estimate puts within the
available memory. Either way the size is a power of two, at most MAX_AUTO_BATCH, never more
windows than the training data holds, and with --global-batch one whose passes divide it.
The answer is data (`BatchChoice`): the size and what limited it, for the CLI to show.

Per token and block, the activations kept for the backward pass (C = n_embd, `a` = bytes of
the compute dtype: 4 in fp32, 2 under bf16/fp16 autocast; the residual stream stays fp32):
the two LayerNorm inputs 2 x 4C, the inputs of the four linear layers a(C + C + C + 4C), the
fused q, k, v 3aC and the GELU input 4aC: 8C + 14aC. Attention is a fused kernel that keeps
no (T, T) matrix, except the math fallback (CPU with dropout, MPS) at about 14 bytes per
element of the n_head x T scores. Checked against the tensors autograd saves (saved-tensor
hooks, tests/test_memory.py) and against measured peaks (bench_memory.py --measure; on the CPU
glibc's allocator may keep freed blocks, and ESTIMATE_SHARE leaves room for that).

With LoRA (--lora-rank) the frozen weights have no gradients and no optimizer state, and may be
held in bf16/fp16 (--lora-base-dtype): then there is no autocast copy of them either. Gradients,
AdamW's moments and the rollback copy are the adapters' alone (rank x (in + out) per adapted
layer). The activations are full training's (the adapted layers' inputs are kept for the
adapters' gradients, in the compute dtype, dropped out or not), plus, per adapted layer and
token, the adapter's rank-wide middle and, with --lora-dropout, the dropout mask (a bool on
CUDA, the fp32 scaled noise elsewhere). The fused
loss still makes the (frozen) head's weight gradient and its scaled copy; the embedding makes none.
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from gpt2es_cli.config import DEFAULT_LORA_TARGETS, LORA_LAYERS, ModelConfig, TrainConfig
from gpt2es_cli.device import Precision, select_precision
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.lora import add_adapters, hold_frozen_in, resolve_base_dtype
from gpt2es_cli.loss import LINEAR_CHUNK_ELEMENTS
from gpt2es_cli.model import GPT2
from gpt2es_cli.settings import AUTO

MAX_AUTO_BATCH = 64
"""The largest micro-batch --batch-size auto picks: beyond it a step is no faster per token."""
ESTIMATE_SHARE = 0.8
"""Share of the available memory an estimated step may fill (the rest: allocator slack, the
estimate's error, whatever else runs on the machine)."""
PROBE_SHARE = 0.9
"""Share of the free GPU memory a probed step may peak at (the rest: fragmentation over a long run)."""
ATTENTION_MATH_BYTES = 14
"""Bytes kept per attention score by the unfused (math) attention: scores, softmax, dropout mask."""
RUNTIME_BYTES = {"cpu": 128 << 20, "mps": 128 << 20}
"""What a training process adds beyond its tensors once it steps (kernels, autograd's threads, the
plot library). On CUDA the context is already outside the free memory counted."""
FP32 = 4
BF16 = 2
PARALLEL_STRATEGIES = ("ddp", "fsdp")
"""How several processes hold the model: a full replica each (DDP), or sharded (FSDP2)."""
GATHERED_BLOCKS = 3
"""Blocks whose full weights a sharded process holds at once: the one computing, its all-gather
buffer (kept until the next block's copy-in) and the next one, prefetched."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training step, by what holds them."""

    weights: int
    """fp32 parameters."""
    gradients: int
    """One fp32 gradient per parameter (plus DDP's gradient buckets, as many again)."""
    optimizer: int
    """AdamW: two fp32 moments per parameter; Muon: one momentum for its matrices."""
    autocast_copies: int
    """The bf16/fp16 copies of the weight matrices that autocast makes for each forward pass."""
    rollback: int
    """The loop's copy of the weights and optimizer state to roll back to after a NaN (host memory,
    so counted on the CPU and MPS only). It is renewed between steps, the new copy made before
    the old one goes: for that moment there are two (`between_steps`)."""
    activations: int
    """Kept for the backward pass: every block's (or each block's input, with checkpointing), the
    final norm's input and the gradient the fused loss made for the head's."""
    workspace: int
    """Transient: the loss's fp32 chunks, one block's backward (and its recomputation), the
    head's weight gradient (made by the fused loss), its scaled copy and the embedding's dense
    gradient."""
    runtime: int = 0
    """What the process adds beyond tensors (RUNTIME_BYTES)."""
    gathered: int = 0
    """Sharded (FSDP): the full weights a process holds for a while, in the compute dtype: the
    root's (embeddings, final norm: kept from the forward to the backward pass) and three blocks'
    (the one computing, its all-gather buffer, the next one prefetched), and one block's full
    gradients (in the compute dtype, their fp32 copy to reduce-scatter, the previous block's still
    in flight). Accumulating: all the weights, and the whole fp32 gradient being summed."""
    optimizer_work: int = 0
    """Transient of the optimizer step: sharded Muon gathers each full matrix to orthogonalise it."""
    offloaded: int = 0
    """Sharded with CPU offload: the weights, gradients and optimizer state held in host memory
    instead (not part of `total`, which is the device's)."""

    @property
    def fixed(self) -> int:
        """The part of a step that does not grow with the batch."""
        return (self.weights + self.gradients + self.optimizer + self.autocast_copies + self.rollback + self.runtime
                + self.gathered)

    @property
    def step(self) -> int:
        """The peak during a forward/backward pass."""
        return self.fixed + self.activations + self.workspace

    @property
    def between_steps(self) -> int:
        """The peak while the rollback copy is renewed (gradients and activations freed)."""
        return self.weights + self.optimizer + 2 * self.rollback + self.runtime

    @property
    def optimizer_step(self) -> int:
        """The peak of the optimizer step (activations freed, gradients held)."""
        return self.weights + self.gradients + self.optimizer + self.rollback + self.runtime + self.optimizer_work

    @property
    def total(self) -> int:
        """The peak of the run."""
        return max(self.step, self.between_steps, self.optimizer_step)


def parameter_count(model: ModelConfig) -> tuple[int, int]:
    """(all parameters, those in the blocks' weight matrices) of a GPT2 with this config; the
    tied output projection is the token embedding."""
    C, L = model.n_embd, model.n_layer
    matrices = L * 12 * C * C  # c_attn 3C^2, attn c_proj C^2, c_fc 4C^2, mlp c_proj 4C^2
    per_block = 12 * C * C + 13 * C  # + biases 9C + two LayerNorms 4C
    head = 0 if model.tie_word_embeddings else model.vocab_size * C  # an untied output matrix
    return L * per_block + (model.vocab_size + model.n_positions) * C + head + 2 * C, matrices


LORA_LAYER_WIDTHS = {"attn.c_attn": (1, 3), "attn.c_proj": (1, 1), "mlp.c_fc": (1, 4), "mlp.c_proj": (4, 1)}
"""(in, out) of each adaptable layer, in multiples of n_embd."""


def lora_layers(targets: str) -> list[str]:
    """The layers of one block that --lora-targets adapts ('c_attn,c_proj' -> attn.c_attn, attn.c_proj, mlp.c_proj)."""
    return sorted({layer for name in targets.split(",") if name.strip() for layer in LORA_LAYERS[name.strip()]})


def lora_parameter_count(model: ModelConfig, rank: int, targets: str = DEFAULT_LORA_TARGETS) -> int:
    """The adapters' parameters: rank x (in + out) for each adapted layer of every block."""
    return model.n_layer * sum(rank * model.n_embd * sum(LORA_LAYER_WIDTHS[t]) for t in lora_layers(targets))


def estimate_training_memory(
    model: ModelConfig,
    seq_len: int,
    batch_size: int,
    *,
    autocast_dtype: torch.dtype | None = None,
    activation_checkpointing: bool = False,
    optimizer: str = "adamw",
    device_type: str = "cpu",
    world_size: int = 1,
    parallel: str = "ddp",
    cpu_offload: bool = False,
    lora_rank: int | None = None,
    lora_targets: str = DEFAULT_LORA_TARGETS,
    lora_dropout: float = 0.0,
    base_dtype: torch.dtype | None = None,
) -> MemoryEstimate:
    """Estimated peak memory of one training step of `batch_size` windows of `seq_len` tokens,
    in the memory of `device_type` ("cpu", "cuda" or "mps"), in each of `world_size` processes
    under `parallel` ("ddp": a full replica each; "fsdp": sharded, with `cpu_offload` the shards
    in host memory); see the module
    docstring. With `lora_rank`, of LoRA adapters on `lora_targets`, the frozen block matrices
    held in `base_dtype` (None: float32)."""
    if parallel not in PARALLEL_STRATEGIES:
        raise ConfigError(f"unknown parallel strategy {parallel!r}: choose one of {', '.join(PARALLEL_STRATEGIES)}")
    a = FP32 if autocast_dtype is None else torch.finfo(autocast_dtype).bits // 8
    if lora_rank is not None:  # estimated as a replica (sharding would only lower it)
        return _lora_estimate(model, seq_len, batch_size, a, autocast_dtype, activation_checkpointing, device_type,
                              world_size, lora_rank, lora_targets, lora_dropout, base_dtype)
    C, L, V = model.n_embd, model.n_layer, model.vocab_size
    params, matrices = parameter_count(model)
    tokens = batch_size * seq_len
    host_memory = device_type in ("cpu", "mps")
    linear = L * (12 * C * C + 9 * C)  # the blocks' Linear layers, weights and biases

    moments = params * 2 if optimizer == "adamw" else matrices + (params - matrices) * 2  # muon: 1 for matrices
    optimizer_bytes = FP32 * moments
    weights = FP32 * params
    gradients = FP32 * params * (2 if world_size > 1 else 1)  # DDP buckets hold a second copy
    copies = 0 if autocast_dtype is None else a * (linear + V * C)
    listed = params + (V * C if model.tie_word_embeddings else 0)  # state_dict lists a tied matrix twice
    rollback = FP32 * listed + optimizer_bytes if host_memory else 0

    block = _block_activations(model, seq_len, a, device_type)
    kept_per_block = 4 * C if activation_checkpointing else block  # checkpointing keeps the block's fp32 input
    # The loss is fused with the head (loss.linear_cross_entropy): kept are the ln_f input and
    # the gradient the loss made for the head's input (fp32); no logits.
    head = 4 * C + FP32 * C
    activations = tokens * (L * kept_per_block + head + (C if model.dropout > 0 else 0))

    chunk = min(LINEAR_CHUNK_ELEMENTS.get(device_type, tokens * V), tokens * V)
    loss_chunks = (FP32 + (a if a != FP32 else 0)) * chunk  # a chunk's fp32 softmax (+ its low-precision copy)
    backward = tokens * block * (2 if activation_checkpointing else 1)  # its gradients (+ its recomputation)
    # The head's weight gradient (fp32, made during the forward), its scaled copy in backward and
    # the embedding's dense gradient that is added to it.
    workspace = loss_chunks + backward + 3 * FP32 * V * C
    estimate = MemoryEstimate(
        weights=weights, gradients=gradients, optimizer=optimizer_bytes, autocast_copies=copies,
        rollback=rollback, activations=activations, workspace=workspace, runtime=RUNTIME_BYTES.get(device_type, 0),
    )
    if parallel == "fsdp":
        return _sharded(estimate, model, a, optimizer, max(1, world_size), cpu_offload)
    return estimate


def _sharded(replica: MemoryEstimate, model: ModelConfig, a: int, optimizer: str, n: int,
             cpu_offload: bool) -> MemoryEstimate:
    """A replica's estimate, sharded over `n` processes by FSDP2 (see the module docstring)."""
    C = model.n_embd
    params, _ = parameter_count(model)
    block = 12 * C * C + 13 * C  # one block's parameters: what fully_shard gathers at a time
    root = params - model.n_layer * block  # embeddings, final norm (and an untied head)
    weights = FP32 * params // n
    gradients = FP32 * params // n  # the reduce-scattered shard
    optimizer_bytes = replica.optimizer // n
    gathered = a * (root + GATHERED_BLOCKS * block) + (a + 2 * FP32) * block
    # Muon: the largest matrix (c_fc's 4C x C) gathered whole in fp32, its Newton-Schulz
    # iterates and their Gram matrices in bf16, and the fp32 update before its shard is kept
    matrix = 4 * C * C
    work = 2 * FP32 * matrix + BF16 * (2 * matrix + 2 * C * C) if optimizer == "muon" else 0
    offloaded = 0
    if cpu_offload:  # the shards live in host memory; each block's is copied in to be gathered
        offloaded, weights, gradients, optimizer_bytes = weights + gradients + optimizer_bytes, 0, 0, 0
        gathered += FP32 * block // n
        work = 0  # the optimizer steps on the CPU
    return replace(
        replica, weights=weights, gradients=gradients, optimizer=optimizer_bytes, autocast_copies=0,
        rollback=replica.rollback // n, gathered=gathered, optimizer_work=work, offloaded=offloaded,
    )


def _block_activations(model: ModelConfig, seq_len: int, a: int, device_type: str) -> int:
    """Bytes one block keeps per token for the backward pass (see the module docstring)."""
    C, H = model.n_embd, model.n_head
    math_attention = device_type == "mps" or (device_type == "cpu" and model.dropout > 0)
    dropout_masks = 2 * C if model.dropout > 0 else 0  # bool masks of the two residual branches
    return 8 * C + 14 * a * C + FP32 * H + dropout_masks + (ATTENTION_MATH_BYTES * H * seq_len if math_attention else 0)


def _lora_estimate(model: ModelConfig, seq_len: int, batch_size: int, a: int, autocast_dtype: torch.dtype | None,
                   checkpointing: bool, device_type: str, world_size: int, rank: int, targets: str, dropout: float,
                   base_dtype: torch.dtype | None) -> MemoryEstimate:
    """estimate_training_memory with LoRA adapters (see the module docstring)."""
    C, L, V = model.n_embd, model.n_layer, model.vocab_size
    params, _ = parameter_count(model)
    tokens = batch_size * seq_len
    linear = L * (12 * C * C + 9 * C)
    adapters = lora_parameter_count(model, rank, targets)
    b = FP32 if base_dtype is None else torch.finfo(base_dtype).bits // 8
    weights = b * linear + FP32 * (params - linear) + FP32 * adapters
    gradients = FP32 * adapters * (2 if world_size > 1 else 1)
    optimizer_bytes = FP32 * 2 * adapters  # AdamW
    frozen_copies = linear if autocast_dtype is not None and b != a else 0  # none when held in the compute dtype
    copies = 0 if autocast_dtype is None else a * (frozen_copies + V * C + adapters)
    rollback = FP32 * adapters + optimizer_bytes if device_type in ("cpu", "mps") else 0

    layers = lora_layers(targets)
    adapted_in = C * sum(LORA_LAYER_WIDTHS[t][0] for t in layers)  # the adapted layers' input widths
    per_block = _block_activations(model, seq_len, a, device_type) + a * rank * len(layers)
    if dropout > 0:  # each adapted layer's dropout mask (CUDA's fused dropout: bool; else the fp32 noise)
        per_block += (1 if device_type == "cuda" else FP32) * adapted_in
    kept_per_block = 4 * C if checkpointing else per_block
    head = 4 * C + FP32 * C
    activations = tokens * (L * kept_per_block + head + (C if model.dropout > 0 else 0))
    chunk = min(LINEAR_CHUNK_ELEMENTS.get(device_type, tokens * V), tokens * V)
    loss_chunks = (FP32 + (a if a != FP32 else 0)) * chunk
    backward = tokens * per_block * (2 if checkpointing else 1)
    workspace = loss_chunks + backward  # the frozen head has no weight gradient (loss.py skips it)
    return MemoryEstimate(
        weights=weights, gradients=gradients, optimizer=optimizer_bytes, autocast_copies=copies,
        rollback=rollback, activations=activations, workspace=workspace, runtime=RUNTIME_BYTES.get(device_type, 0),
    )


def lora_options(config: TrainConfig, autocast_dtype: torch.dtype | None) -> dict:
    """The LoRA keywords of estimate_training_memory for a run's settings (none without --lora-rank)."""
    if config.lora_rank is None:
        return {}
    base = resolve_base_dtype(config.lora_base_dtype, autocast_dtype)
    return {"lora_rank": config.lora_rank, "lora_targets": config.lora_targets, "lora_dropout": config.lora_dropout,
            "base_dtype": None if base == torch.float32 else base}


# --- DDP or FSDP -------------------------------------------------------------------------------


def parallel_for(replica: MemoryEstimate, sharded: MemoryEstimate, device_memory: int) -> str:
    """'fsdp' when a replica's step does not fit in ESTIMATE_SHARE of `device_memory` bytes and
    the sharded one does, else 'ddp' (the rule of `pick_parallel`)."""
    budget = ESTIMATE_SHARE * device_memory
    return "fsdp" if replica.total > budget and sharded.total <= budget else "ddp"


def _run_estimate(model_config: ModelConfig, config: TrainConfig, world_size: int, device_type: str,
                  autocast_dtype: torch.dtype | None, seq_len: int, batch_size: int,
                  sharding: dict) -> MemoryEstimate:
    """estimate_training_memory with a run's settings (`sharding`: sharding_options' keywords)."""
    return estimate_training_memory(
        model_config, seq_len, batch_size, autocast_dtype=autocast_dtype,
        activation_checkpointing=config.activation_checkpointing, optimizer=config.optimizer,
        device_type=device_type, world_size=world_size, **sharding, **lora_options(config, autocast_dtype),
    )


def pick_parallel(model_config: ModelConfig, config: TrainConfig, world_size: int, device: torch.device) -> str:
    """What `--parallel auto` runs: "fsdp" or "ddp".

    The rule: "fsdp" when there are several processes (`world_size` > 1), `device` is a CUDA GPU,
    and a full replica (DDP) of `model_config` training at the run's micro-batch (at 1 window
    with --batch-size auto) and sequence length (--seq-len, else the model's context) is
    estimated not to fit in ESTIMATE_SHARE of the GPU's total memory while the sharded step
    (with --cpu-offload as set) is; "ddp" otherwise: in one process, on the CPU and Apple MPS,
    when the replica fits (DDP is faster: no gathering), and when neither fits."""
    if world_size <= 1 or device.type != "cuda":
        return "ddp"
    autocast_dtype = training_precision(config).autocast_dtype
    seq_len = config.seq_len or model_config.n_positions
    batch = config.batch_size if isinstance(config.batch_size, int) else 1
    replica = _run_estimate(model_config, config, world_size, "cuda", autocast_dtype, seq_len, batch, {})
    sharded = _run_estimate(model_config, config, world_size, "cuda", autocast_dtype, seq_len, batch,
                            {"parallel": "fsdp", "cpu_offload": config.cpu_offload})
    return parallel_for(replica, sharded, torch.cuda.get_device_properties(device).total_memory)


def sharding_options(config: TrainConfig, model_config: ModelConfig, world_size: int,
                     device: torch.device) -> dict:
    """The sharding keywords of estimate_training_memory for a run (none for a replica): --parallel,
    with auto resolved by `pick_parallel`, and --cpu-offload."""
    parallel = config.parallel
    if parallel == AUTO:
        parallel = pick_parallel(model_config, config, world_size, device)
    if parallel != "fsdp":
        return {}
    return {"parallel": "fsdp", "cpu_offload": config.cpu_offload}


# --- available memory -------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


MEMINFO = Path("/proc/meminfo")
"""Linux's memory counters (MemAvailable)."""
CGROUPS = (
    (Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"),  # cgroup v2
    (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),  # v1
)
"""Where a container's memory limit is: (directory, limit file, usage file, reclaimable cache key in memory.stat)."""


def _cgroup_available() -> int | None:
    """Bytes left under this process's cgroup memory limit (containers), or None when unlimited.

    Reclaimable page cache (inactive_file) counts as available, as the kernel would reclaim it."""
    for root, limit, usage, inactive in CGROUPS:
        cap, used = _read_int(root / limit), _read_int(root / usage)
        if cap is None or used is None or cap >= 1 << 60:  # absent, or "max" / no limit
            continue
        cache = 0
        try:
            for line in (root / "memory.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive:
                    cache = int(value)
        except (OSError, ValueError):
            pass
        return max(0, cap - used + cache)
    return None


def system_available_memory() -> int:
    """RAM that can be allocated without swapping: MemAvailable from /proc/meminfo on Linux (and
    no more than the cgroup limit leaves), else the free pages (os.sysconf), else half the RAM."""
    available = None
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024  # kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # macOS has no SC_AVPHYS_PAGES
            try:
                available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
            except (ValueError, OSError, AttributeError):
                raise ConfigError("cannot tell how much memory is free on this machine: pass --batch-size N") from None
    limited = _cgroup_available()
    return available if limited is None else min(available, limited)


def available_memory(device: torch.device) -> int:
    """Bytes a training step may use on `device`: free GPU memory (plus what torch's cache holds
    unused) on CUDA, the unified memory MPS may still take, else the system's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "mps":
        gpu_left = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        return min(system_available_memory(), gpu_left)
    return system_available_memory()


# --- --batch-size auto ------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchChoice:
    """What --batch-size auto chose, and why."""

    batch_size: int
    """Windows per forward pass in each process."""
    method: str
    """'probe': real steps on the GPU until one ran out of memory; 'estimate': the memory model."""
    limit: str
    """What stopped it growing: 'memory', 'cap' (MAX_AUTO_BATCH), 'data' (the training windows)
    or 'global_batch' (the largest power of two dividing --global-batch per process)."""
    available: int
    """Bytes available to one process when it was chosen."""
    needed: int
    """Peak bytes of a step at the chosen size: measured (probe) or estimated."""
    per_window: int
    """Estimated bytes each more window would add at the chosen size."""
    cap: int
    """The largest size that was allowed."""
    fits: bool = True
    """False when even one window is estimated not to fit (the run tries it anyway)."""


def batch_candidates(cap: int, global_batch: int | None = None, world_size: int = 1) -> list[int]:
    """The sizes auto may pick, smallest first: powers of two up to `cap` whose passes (one per
    process) divide `global_batch` when one is given."""
    sizes, b = [], 1
    while b <= max(cap, 1):
        if global_batch is None or global_batch % (b * world_size) == 0:
            sizes.append(b)
        b *= 2
    return sizes


def _limits(global_batch: int | None, world_size: int, windows: int) -> tuple[list[int], int, str]:
    """The candidate sizes, the largest allowed, and what stops the sizes at the last candidate
    (the next power of two up would break it): --global-batch, MAX_AUTO_BATCH or the data."""
    if global_batch is not None and global_batch % world_size:
        raise ConfigError(
            f"--global-batch {global_batch} must be a multiple of the {world_size} processes for --batch-size auto"
        )
    data = max(1, windows // world_size)  # never more windows per step than the training data has
    cap = min(MAX_AUTO_BATCH, data, global_batch // world_size if global_batch is not None else data)
    candidates = batch_candidates(cap, global_batch, world_size)
    following = 2 * candidates[-1]
    if global_batch is not None and global_batch % (following * world_size):
        reason = "global_batch"
    else:
        reason = "cap" if following > MAX_AUTO_BATCH else "data"
    return candidates, cap, reason


def probe_sizes(candidates: Sequence[int], step: Callable[[int], int], budget: int) -> dict[int, int]:
    """Run `step(b)` (which returns its peak bytes) for each size b, smallest first, until one
    raises torch.OutOfMemoryError or peaks above `budget`; return the peak of each size that ran
    within it. Memory is freed and torch's cache emptied after each try."""
    peaks: dict[int, int] = {}
    for b in candidates:
        try:
            peak = step(b)
        except torch.OutOfMemoryError:
            peak = None
        except RuntimeError as e:  # cuBLAS and friends report an allocation failure as a RuntimeError
            if "out of memory" not in str(e) and "ALLOC_FAILED" not in str(e):
                raise
            peak = None
        finally:
            gc.collect()
            torch.cuda.empty_cache()  # a no-op without CUDA
        if peak is None or peak > budget:
            break
        peaks[b] = peak
    return peaks


def _training_pass(model: GPT2, seq_len: int, precision: Precision, b: int) -> int:
    """Forward + backward of b random windows on a CUDA device; the peak bytes allocated."""
    device = precision.device
    x = torch.randint(0, model.config.vocab_size, (b, seq_len), device=device)
    y = torch.randint(0, model.config.vocab_size, (b, seq_len), device=device)
    torch.cuda.reset_peak_memory_stats(device)
    with precision.autocast():
        loss = model(x, targets=y)
    loss.backward()
    model.zero_grad(set_to_none=False)  # gradients stay allocated, as between micro-steps
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def _probe_cuda(model_config: ModelConfig, seq_len: int, precision: Precision, checkpointing: bool,
                held_bytes: int, candidates: Sequence[int], budget: int, lora: dict | None = None) -> dict[int, int]:
    """`probe_sizes` with real training passes on a fresh model (with `lora`, lora_options' keywords:
    adapters on it, the frozen weights in their dtype), `held_bytes` (the optimizer state to come)
    held beside it; everything is freed after and the random streams left as they were."""
    with torch.random.fork_rng(devices=[precision.device]):
        model = GPT2(model_config)
        if lora:
            model = add_adapters(model, rank=lora["lora_rank"], alpha=2.0 * lora["lora_rank"],
                                 dropout=lora["lora_dropout"], targets=lora["lora_targets"])
            hold_frozen_in(model, lora["base_dtype"] or torch.float32)
        model = model.to(precision.device).train()
        model.activation_checkpointing = checkpointing
        held = torch.empty(held_bytes, dtype=torch.uint8, device=precision.device)
        try:
            return probe_sizes(candidates, functools.partial(_training_pass, model, seq_len, precision), budget)
        finally:
            del model, held
            gc.collect()
            torch.cuda.empty_cache()


def _agree(batch_size: int) -> int:
    """Under torchrun every process probes its own device: all take the smallest answer."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return batch_size
    value = torch.tensor([batch_size], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def training_precision(config: TrainConfig) -> Precision:
    """The device and precision the run will train in (under torchrun, this process's GPU)."""
    precision = select_precision(config.device, config.amp, config.dtype)
    device = precision.device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
        precision = Precision(device, precision.autocast_dtype)
    return precision


def choose_batch_size(config: TrainConfig, model_config: ModelConfig, seq_len: int, train_tokens: int,
                      world_size: int = 1) -> BatchChoice:
    """Resolve --batch-size auto for this run (see the module docstring); CUDA devices are probed,
    except for a sharded run, which is estimated."""
    precision = training_precision(config)
    device = precision.device
    candidates, cap, reason = _limits(config.global_batch, world_size, (train_tokens - 1) // seq_len)
    lora = lora_options(config, precision.autocast_dtype)
    sharding = sharding_options(config, model_config, world_size, device)

    def estimate(b: int) -> MemoryEstimate:
        return _run_estimate(model_config, config, world_size, device.type, precision.autocast_dtype, seq_len, b,
                             sharding)

    if device.type == "cuda" and not sharding:
        available = available_memory(device)
        one = estimate(1)
        # AdamW's moments, and DDP's buckets (the probe's model has the gradients themselves)
        held = one.optimizer + (one.gradients // 2 if world_size > 1 else 0)
        peaks = _probe_cuda(model_config, seq_len, precision, config.activation_checkpointing, held, candidates,
                            int(PROBE_SHARE * available), **({"lora": lora} if lora else {}))
        best = _agree(max(peaks, default=0))  # every process joins, even one that fits nothing
        if best == 0:
            raise ConfigError(
                f"one window of {seq_len} tokens does not fit in the {available / 2**30:.1f} GB free on {device}: "
                "use --activation-checkpointing, a lower --seq-len or a smaller model"
            )
        needed, method = peaks.get(best, 0), "probe"
    else:
        # processes sharing this machine's RAM (on CUDA each has its GPU)
        local = 1 if device.type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        available = available_memory(device) // max(1, local)
        fitting = [b for b in candidates if estimate(b).total <= ESTIMATE_SHARE * available]
        best = _agree(fitting[-1] if fitting else 1)
        needed, method = estimate(best).total, "estimate"
    per_window = (estimate(2 * best).step - estimate(best).step) // best  # at the chosen size
    return BatchChoice(
        batch_size=best, method=method, limit="memory" if best < candidates[-1] else reason, available=available,
        needed=needed, per_window=per_window, cap=cap,
        fits=method == "probe" or needed <= ESTIMATE_SHARE * available,
    )
