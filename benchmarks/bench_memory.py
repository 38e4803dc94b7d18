"""Training memory: measured on this CPU beside the estimate, and computed for GPUs.

MEASURED: each configuration (preset x seq-len x batch, with and without activation checkpointing,
bf16 autocast, or float32 where this CPU's emulated bf16 would take too long) trains three real
steps of `gpt2es train` (the library's `train`, on random tokens, saving after each step so the
rollback copy holds the optimizer state as in a long run) in a process of its own; its peak
RSS above what it held before training (VmHWM - VmRSS from /proc/self/status, the peak reset
before training starts) stands beside `estimate_training_memory` for the CPU.

COMPUTED: the same estimate with CUDA sizes (fused attention, the loss's larger chunks, no
rollback copy on the GPU) for small / gpt2 / gpt2-medium at seq-len 256, 512 and 1024 and batch
1 to 16, and what fits a 4 GB and an 8 GB card (an RTX 3050, say) once the CUDA context and the
display have taken GPU_RESERVED and --batch-size auto's headroom is left.

SHARDED: the estimate per GPU of gpt2-medium / gpt2-large / gpt2-xl trained on 2, 4 and 8 GPUs
with --parallel fsdp (FSDP2: weights, gradients and optimizer state divided by the GPUs, each
block's weights gathered in bf16 as it runs), beside a DDP replica, with AdamW and Muon, with and
without activation checkpointing, and with --cpu-offload (the GPU's share, and the host memory
each process holds); then which preset fits with DDP or FSDP on 1 to 8 GPUs of 8 to 80 GB, and
what `--parallel auto` picks (memory.pick_parallel's rule, applied to the same estimates).

MEASURED ON GPUS (where CUDA is present): the peak GPU memory of real training steps of the
sharded presets beside the estimate, each process's, the largest over the processes; in one
process (a replica, and FSDP's CPU offload in a group of one), or under torchrun (DDP, FSDP, and
FSDP with CPU offload):

    torchrun --standalone --nproc_per_node 8 benchmarks/bench_memory.py --gpu-measure gpt2-xl

LORA: the estimate for LoRA fine-tuning (--lora-rank 16 on c_attn, c_proj and c_fc, dropout
0.05, AdamW on the adapters) of the gpt2 / gpt2-medium / gpt2-large bases at seq-len 512 and
1024 and batch 1 to 8, the frozen base held in bf16 (--amp on a GPU with bf16) or in float32,
and which fit a 4 GB and an 8 GB card, with the same margins.

    python benchmarks/bench_memory.py              # all the tables (a few minutes on 2 cores)
    python benchmarks/bench_memory.py --no-measure # the GPU, sharded and LoRA tables only (instant)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from gpt2es_cli.config import ModelConfig
from gpt2es_cli.training.memory import (
    ESTIMATE_SHARE,
    PROBE_SHARE,
    estimate_training_memory,
    lora_parameter_count,
    parallel_for,
)

GB = 2**30
GPU_RESERVED = 0.6 * GB
"""GPU memory the CUDA context, cuBLAS and a desktop take before training starts (a guess)."""
MEASURED = [  # preset, seq_len, batch sizes, precision (bf16 where this CPU emulates it only at a few sizes)
    ("tiny", 64, (1, 8, 64), "bfloat16"),
    ("small", 256, (1,), "bfloat16"),
    ("small", 256, (1, 4, 16), "float32"),
    ("gpt2", 256, (1, 4), "float32"),
    ("gpt2", 1024, (1,), "float32"),
]
GPU_PRESETS, GPU_SEQ_LENS, GPU_BATCHES = ("small", "gpt2", "gpt2-medium"), (256, 512, 1024), (1, 2, 4, 8, 16)
GPU_SIZES = (4, 8)
SHARDED_PRESETS, SHARDED_GPUS, SHARDED_SEQ_LEN, SHARDED_BATCH = ("gpt2-medium", "gpt2-large", "gpt2-xl"), (2, 4, 8), 1024, 1
"""The sharded tables: their presets, GPU counts, and the micro-batch (the least a run needs; --batch-size
auto then takes what is left) at GPT-2's context."""
FIT_PRESETS, FIT_GPUS, FIT_SIZES = ("small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"), (1, 2, 4, 8), (8, 16, 24, 40, 80)
LORA_PRESETS, LORA_SEQ_LENS, LORA_BATCHES = ("gpt2", "gpt2-medium", "gpt2-large"), (512, 1024), (1, 2, 4, 8)
LORA_RANK, LORA_DROPOUT = 16, 0.05
LORA_BASES = {"bf16": torch.bfloat16, "fp32": None}
"""The frozen base's dtype: bf16 (--amp on a GPU with bf16: --lora-base-dtype auto), or fp32 (--lora-base-dtype float32)."""


def model_config(preset: str, seq_len: int, vocab: int) -> ModelConfig:
    """The preset, its context stretched to seq_len where shorter (small: --n-positions)."""
    base = ModelConfig.from_preset(preset, vocab_size=vocab)
    return ModelConfig.from_preset(preset, vocab_size=vocab, n_positions=max(base.n_positions, seq_len))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(args: argparse.Namespace) -> None:
    """Train a few steps of one configuration and print its peak memory above the start (JSON)."""
    import numpy as np
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    from gpt2es_cli.config import TrainConfig
    from gpt2es_cli.data.dataset import DatasetWriter
    from gpt2es_cli.tokenizer import EOS_TOKEN, Tokenizer
    from gpt2es_cli.training import train

    # A word-level tokenizer with exactly --vocab ids: the model's vocabulary is the dataset's.
    vocab = {f"t{i}": i for i in range(args.vocab - 1)} | {EOS_TOKEN: args.vocab - 1}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.add_special_tokens([EOS_TOKEN])
    tokenizer = Tokenizer(backend)
    tmp = Path(args.tmp)
    rng = np.random.default_rng(0)
    windows = args.batch * args.steps + 1
    with DatasetWriter(tmp / "data", tokenizer, force=True) as writer:
        writer.write("train", rng.integers(0, args.vocab, windows * args.seq_len + 1, dtype=np.int64))
        writer.write("val", rng.integers(0, args.vocab, args.seq_len + 1, dtype=np.int64))
        writer.finish()
    config = TrainConfig(
        data=str(tmp / "data"), out=str(tmp / "run"), preset=args.preset, seq_len=args.seq_len,
        n_positions=args.n_positions, batch_size=args.batch, max_steps=args.steps, log_interval=args.steps,
        eval_interval=0, sample_tokens=0, save_interval=1, device="cpu", dtype=args.dtype,
        activation_checkpointing=args.checkpointing, optimizer="adamw",  # the table's optimizer (Muon holds less)
    )
    before = _status_kb("VmRSS")
    try:  # reset the peak to now (Linux 4.0+), so building the dataset does not count
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    train(config)
    print(json.dumps({"before_kb": before, "peak_kb": _status_kb("VmHWM")}))


def measure(preset: str, seq_len: int, batch: int, checkpointing: bool, dtype: str, args: argparse.Namespace) -> int:
    """Peak bytes above the start of one configuration's training, in a fresh process."""
    config = model_config(preset, seq_len, args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, __file__, "--child", "--tmp", tmp, "--preset", preset, "--seq-len", str(seq_len),
            "--n-positions", str(config.n_positions), "--batch", str(batch), "--steps", str(args.steps),
            "--vocab", str(args.vocab), "--dtype", dtype,
        ] + (["--checkpointing"] if checkpointing else [])
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    return (result["peak_kb"] - result["before_kb"]) * 1024


def estimate(config: ModelConfig, seq_len: int, batch: int, checkpointing: bool, device: str, dtype: torch.dtype):
    return estimate_training_memory(config, seq_len, batch, autocast_dtype=dtype,
                                    activation_checkpointing=checkpointing, device_type=device)


def measured_table(args: argparse.Namespace) -> None:
    print(f"### Measured on this CPU (AdamW, vocab {args.vocab}, {args.steps} steps; peak RSS above the start)\n")
    print("| preset | seq-len | batch | precision | checkpointing | measured | estimate | estimate / measured |")
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for preset, seq_len, batches, precision in MEASURED:
        if args.measure and preset not in args.measure:
            continue
        config = model_config(preset, seq_len, args.vocab)
        dtype = torch.bfloat16 if precision == "bfloat16" else None
        for batch in batches:
            for checkpointing in (False, True):
                peak = measure(preset, seq_len, batch, checkpointing, precision, args)
                guess = estimate(config, seq_len, batch, checkpointing, "cpu", dtype).total
                print(f"| {preset} | {seq_len} | {batch} | {'bf16' if dtype else 'fp32'} | {'on' if checkpointing else 'off'} | "
                      f"{peak / GB:.2f} GB | {guess / GB:.2f} GB | {guess / peak:.2f} |", flush=True)
    print()


def gpu_table(args: argparse.Namespace) -> None:
    dtype = torch.bfloat16
    print(f"### Computed for a CUDA GPU (bf16 autocast, AdamW, vocab {args.vocab}; GB of GPU memory)\n")
    print("| preset | seq-len | checkpointing | " + " | ".join(f"batch {b}" for b in GPU_BATCHES) + " |")
    print("|---|---:|---|" + "---:|" * len(GPU_BATCHES))
    peaks = {}  # (preset, seq_len, checkpointing) -> the total of each batch size
    for preset in GPU_PRESETS:
        for seq_len in GPU_SEQ_LENS:
            config = model_config(preset, seq_len, args.vocab)
            for checkpointing in (False, True):
                totals = [estimate(config, seq_len, b, checkpointing, "cuda", dtype).total for b in GPU_BATCHES]
                peaks[preset, seq_len, checkpointing] = totals
                cells = " | ".join(f"{t / GB:.2f}" for t in totals)
                print(f"| {preset} | {seq_len} | {'on' if checkpointing else 'off'} | {cells} |")
    print(f"\nOn a {GPU_SIZES[0]} GB or {GPU_SIZES[1]} GB card (an RTX 3050, say), with {GPU_RESERVED / GB:.1f} GB taken "
          f"by the CUDA context and the display and {100 * (1 - PROBE_SHARE):.0f}% kept free: the longest seq-len "
          "that fits at its largest batch, without activation checkpointing (faster) and with it (where it allows a "
          "larger batch):\n")
    for size in GPU_SIZES:
        budget = PROBE_SHARE * (size * GB - GPU_RESERVED)
        for preset in GPU_PRESETS:
            print(f"- {size} GB: {recommend(peaks, preset, budget)}")
    print()


def recommend(peaks: dict, preset: str, budget: float) -> str:
    """The command lines for `preset` within `budget` bytes: the longest seq-len that fits, at the
    largest batch without activation checkpointing and with it (where it allows more)."""
    for seq_len in sorted(GPU_SEQ_LENS, reverse=True):
        options = []
        for checkpointing in (False, True):
            fitting = [(b, t) for b, t in zip(GPU_BATCHES, peaks[preset, seq_len, checkpointing]) if t <= budget]
            if fitting and (not options or fitting[-1][0] > options[0][0]):
                batch, total = fitting[-1]
                flag = " --activation-checkpointing" if checkpointing else ""
                options.append((batch, f"`--preset {preset} --seq-len {seq_len} --batch-size {batch}{flag}` "
                                       f"({total / GB:.2f} GB)"))
        if options:
            return ", or ".join(text for _, text in options)
    return f"--preset {preset} does not fit, even at seq-len {min(GPU_SEQ_LENS)}, batch 1, with checkpointing"


def sharded_estimate(config: ModelConfig, gpus: int, parallel: str, optimizer: str = "adamw",
                     checkpointing: bool = False, offload: bool = False, batch: int = SHARDED_BATCH):
    """One GPU's estimate of `gpus` processes training under `parallel` (bf16, seq-len SHARDED_SEQ_LEN)."""
    return estimate_training_memory(
        config, SHARDED_SEQ_LEN, batch, autocast_dtype=torch.bfloat16, activation_checkpointing=checkpointing,
        optimizer=optimizer, device_type="cuda", world_size=gpus, parallel=parallel, cpu_offload=offload,
    )


def sharded_table(args: argparse.Namespace) -> None:
    print(f"### Sharded over GPUs: each GPU's share (bf16 compute, fp32 master weights, seq-len {SHARDED_SEQ_LEN}, "
          f"micro-batch {SHARDED_BATCH}, vocab {args.vocab}; GB per GPU; offload: GPU + host memory per process)\n")
    gpus = " | ".join(f"FSDP {n}" for n in SHARDED_GPUS)
    offload = " | ".join(f"offload {n}" for n in (1, *SHARDED_GPUS))
    print(f"| preset | optimizer | checkpointing | 1 GPU | DDP | {gpus} | {offload} "
          "| + per window |")
    print("|---|---|---|---:|---:|" + "---:|" * (2 * len(SHARDED_GPUS) + 2))
    for preset in SHARDED_PRESETS:
        config = model_config(preset, SHARDED_SEQ_LEN, args.vocab)
        for optimizer in ("adamw", "muon"):
            for checkpointing in (False, True):
                kw = dict(optimizer=optimizer, checkpointing=checkpointing)
                alone = sharded_estimate(config, 1, "ddp", **kw).total
                ddp = sharded_estimate(config, 2, "ddp", **kw).total
                fsdp = [sharded_estimate(config, n, "fsdp", **kw).total for n in SHARDED_GPUS]
                off = [sharded_estimate(config, n, "fsdp", offload=True, **kw) for n in (1, *SHARDED_GPUS)]
                window = (sharded_estimate(config, 8, "fsdp", batch=2 * SHARDED_BATCH, **kw).step
                          - sharded_estimate(config, 8, "fsdp", **kw).step) // SHARDED_BATCH
                cells = [f"{alone / GB:.2f}", f"{ddp / GB:.2f}", *(f"{t / GB:.2f}" for t in fsdp),
                         *(f"{e.total / GB:.2f} + {e.offloaded / GB:.1f}" for e in off), f"{window / GB:.2f}"]
                print(f"| {preset} | {optimizer} | {'on' if checkpointing else 'off'} | {' | '.join(cells)} |")
    print("\n1 GPU: one process (no gradient buckets); DDP: each of 2 or more processes (the same at any count); "
          "FSDP N: each of N processes (gradient accumulation adds nothing: every pass reduce-scatters); offload 1: "
          "--parallel fsdp --cpu-offload in one process.\n")


def fit_cell(config: ModelConfig, size: int, checkpointing: bool) -> str:
    """What fits one preset on GPUs of `size` GB (within ESTIMATE_SHARE, pick_parallel's margin): DDP,
    FSDP from some GPU count, FSDP with --cpu-offload, or nothing; checked against `parallel_for`."""
    device = size * GB

    def estimate(n: int, parallel: str, offload: bool = False):
        return sharded_estimate(config, n, parallel, checkpointing=checkpointing, offload=offload)

    def fits(e) -> bool:
        return e.total <= ESTIMATE_SHARE * device

    one, ddp = fits(estimate(1, "ddp")), fits(estimate(2, "ddp"))
    sharded = [n for n in FIT_GPUS[1:] if fits(estimate(n, "fsdp"))]
    offload = [n for n in FIT_GPUS if fits(estimate(n, "fsdp", offload=True))]  # in one process too
    for n in FIT_GPUS[1:]:  # --parallel auto picks FSDP exactly where the cell says so
        expected = "fsdp" if not ddp and n in sharded else "ddp"
        assert parallel_for(estimate(n, "ddp"), estimate(n, "fsdp"), device) == expected, (config, size, n)
    if ddp:
        return "DDP"
    parts = ["1 GPU"] if one else []
    if sharded:
        parts.append(f"FSDP on {sharded[0]}+")
    if offload and (not sharded or offload[0] < sharded[0]):
        parts.append(f"offload on {offload[0]}+")
    return "; ".join(parts) or "no"


def fit_table(args: argparse.Namespace) -> None:
    for checkpointing in (False, True):
        flag = ", --activation-checkpointing" if checkpointing else ""
        print(f"### Which preset fits (bf16, AdamW, seq-len {SHARDED_SEQ_LEN}, micro-batch {SHARDED_BATCH}{flag}, "
              f"vocab {args.vocab}; within {100 * ESTIMATE_SHARE:.0f}% of each GPU's memory)\n")
        print("| GPU memory | " + " | ".join(FIT_PRESETS) + " |")
        print("|---|" + "---|" * len(FIT_PRESETS))
        for size in FIT_SIZES:
            cells = [fit_cell(model_config(p, SHARDED_SEQ_LEN, args.vocab), size, checkpointing) for p in FIT_PRESETS]
            print(f"| {size} GB | " + " | ".join(cells) + " |")
        print()
    print("DDP: a replica fits, alone on 1 GPU and with DDP on any count. 1 GPU: alone only (DDP's gradient buckets "
          "do not fit). FSDP on N+: --parallel fsdp on N GPUs or more. offload on N+: --parallel fsdp --cpu-offload. "
          "no: none of these on up to 8 GPUs. `--parallel auto` picks FSDP on the GPU counts (2 or more) a cell gives "
          "for FSDP, or for offload when --cpu-offload is given; DDP everywhere else, and always in one process.\n")


def gpu_measure_table(args: argparse.Namespace) -> None:
    """The peak GPU memory of real training steps (bf16, AdamW) of each --gpu-measure preset beside the
    estimate: in one process the replica and FSDP's CPU offload; under torchrun DDP, FSDP and FSDP with
    CPU offload."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not torch.cuda.is_available():
        print("### Measured on GPUs\n")
        print("No CUDA GPU here: the measured rows need CUDA GPUs, one process per GPU under torchrun "
              "(in one process, without torchrun, the replica and FSDP's CPU offload are measured):\n")
        print(f"    torchrun --standalone --nproc_per_node 8 benchmarks/bench_memory.py --no-measure "
              f"--gpu-measure {','.join(args.gpu_measure)}\n")
        return
    # one process: the replica, and FSDP's CPU offload (a group of one); several: DDP, FSDP, FSDP with offload
    strategies = [("ddp", False)] + ([("fsdp", False), ("fsdp", True)] if world > 1 else [("fsdp", True)])
    main = int(os.environ.get("RANK", "0")) == 0
    if main:  # each row printed as it is measured: a run stopped early keeps the rows it made
        print(f"### Measured on GPUs ({world} x {torch.cuda.get_device_name()}, torch {torch.__version__}; bf16, "
              f"AdamW, seq-len {SHARDED_SEQ_LEN}, micro-batch {SHARDED_BATCH}, vocab {args.vocab}, {args.steps} "
              "steps; the largest peak over the processes)\n")
        print("| preset | parallel | checkpointing | measured peak | reserved | estimate | estimate / measured |")
        print("|---|---|---|---:|---:|---:|---:|", flush=True)
    for preset in args.gpu_measure:
        config = model_config(preset, SHARDED_SEQ_LEN, args.vocab)
        for parallel, offload in strategies:
            for checkpointing in (False, True):
                guess = sharded_estimate(config, world, parallel, checkpointing=checkpointing, offload=offload).total
                peak, reserved = gpu_peak(config, parallel, offload, checkpointing, guess, args)
                if not main:
                    continue
                how = ("one process" if world == 1 and parallel == "ddp" else f"{parallel} x {world}") + (
                    " + cpu offload" if offload else "")
                measured = (f"{peak / GB:.2f} GB | {reserved / GB:.2f} GB | {guess / GB:.2f} GB | {guess / peak:.2f}"
                            if peak else f"not run (estimated {guess / GB:.1f} GB, above the GPU's) | | |")
                print(f"| {preset} | {how} | {'on' if checkpointing else 'off'} | {measured} |", flush=True)
    if main:
        print()
    if dist.is_initialized():
        dist.destroy_process_group()


def gpu_peak(config: ModelConfig, parallel: str, offload: bool, checkpointing: bool, guess: int,
             args: argparse.Namespace) -> tuple[int, int]:
    """(peak allocated, peak reserved) bytes of a few training steps of a fresh model on this process's GPU,
    the largest over the processes; (0, 0) when the estimate is above the GPU's memory (an out-of-memory
    process would leave the others waiting in a collective)."""
    import gc

    import torch.distributed as dist

    from gpt2es_cli.config import TrainConfig
    from gpt2es_cli.device import Precision
    from gpt2es_cli.model import GPT2
    from gpt2es_cli.training.optim import build_optimizer
    from gpt2es_cli.training.parallel import init_parallel, select_strategy

    train = TrainConfig(device="cuda", amp=True, optimizer="adamw", activation_checkpointing=checkpointing,
                        seq_len=SHARDED_SEQ_LEN, batch_size=SHARDED_BATCH, parallel=parallel, cpu_offload=offload)
    joined = init_parallel("cuda")  # torchrun's process group, joined once
    device = joined.local_device(torch.device("cuda"))
    if guess > 0.95 * torch.cuda.get_device_properties(device).total_memory:
        return 0, 0
    precision = Precision(device, torch.bfloat16)
    strategy = select_strategy(joined, train, precision)  # as a run does once planned
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before, reserved_before = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    torch.manual_seed(0)  # the same weights in every process, as in a run
    if strategy.sharded:  # FSDP shards it from the CPU, moving each shard to the GPU
        model = GPT2(config)
    else:
        with torch.device(device):  # made on the GPU: faster than moving it
            model = GPT2(config)
    model = strategy.place(model, device).train()
    model.activation_checkpointing = checkpointing
    stepped = strategy.wrap(model)
    optimizer = build_optimizer(model, train)
    for _ in range(args.steps):
        x = torch.randint(0, config.vocab_size, (SHARDED_BATCH, SHARDED_SEQ_LEN), device=device)
        with strategy.gradient_sync(True):
            with precision.autocast():
                loss = stepped(x, targets=x)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    peaks = torch.tensor([torch.cuda.max_memory_allocated(device) - before,
                          torch.cuda.max_memory_reserved(device) - reserved_before], device=device)
    del model, stepped, optimizer, loss
    gc.collect()
    torch.cuda.empty_cache()
    if dist.is_initialized():
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    return int(peaks[0]), int(peaks[1])


def lora_estimate(config: ModelConfig, seq_len: int, batch: int, checkpointing: bool, base: torch.dtype | None):
    return estimate_training_memory(config, seq_len, batch, autocast_dtype=torch.bfloat16, device_type="cuda",
                                    activation_checkpointing=checkpointing, lora_rank=LORA_RANK,
                                    lora_dropout=LORA_DROPOUT, base_dtype=base)


def lora_table(args: argparse.Namespace) -> None:
    print(f"### LoRA on a CUDA GPU (rank {LORA_RANK} on c_attn, c_proj, c_fc, bf16 autocast, AdamW on the adapters, "
          f"vocab {args.vocab}; GB of GPU memory)\n")
    print("| base | adapters | seq-len | frozen base | checkpointing | "
          + " | ".join(f"batch {b}" for b in LORA_BATCHES) + " |")
    print("|---|---:|---:|---|---|" + "---:|" * len(LORA_BATCHES))
    peaks = {}  # (preset, seq_len, base, checkpointing) -> the total of each batch size
    for preset in LORA_PRESETS:
        adapters = lora_parameter_count(model_config(preset, 1024, args.vocab), LORA_RANK)
        for seq_len in LORA_SEQ_LENS:
            config = model_config(preset, seq_len, args.vocab)
            for name, base in LORA_BASES.items():
                for checkpointing in (False, True):
                    totals = [lora_estimate(config, seq_len, b, checkpointing, base).total for b in LORA_BATCHES]
                    peaks[preset, seq_len, name, checkpointing] = totals
                    cells = " | ".join(f"{t / GB:.2f}" for t in totals)
                    print(f"| {preset} | {adapters / 1e6:.1f}M | {seq_len} | {name} | {'on' if checkpointing else 'off'} "
                          f"| {cells} |")
    print(f"\nOn a {GPU_SIZES[0]} GB or {GPU_SIZES[1]} GB card, with {GPU_RESERVED / GB:.1f} GB taken by the CUDA context "
          f"and the display and {100 * (1 - PROBE_SHARE):.0f}% kept free: for each base, the longest seq-len that fits "
          "at its largest batch (bf16 base first; checkpointing where it allows a larger batch). On a GPU without bf16 "
          "(before Ampere) --amp computes in float16 and holds the base in float16: the same sizes.\n")
    for size in GPU_SIZES:
        budget = PROBE_SHARE * (size * GB - GPU_RESERVED)
        for preset in LORA_PRESETS:
            print(f"- {size} GB: {lora_recommend(peaks, preset, budget)}")
    print()


def lora_recommend(peaks: dict, preset: str, budget: float) -> str:
    """The command lines that fine-tune `preset` with LoRA within `budget` bytes: for each base dtype,
    the longest seq-len that fits at the largest batch, without activation checkpointing and with it
    (where it allows more)."""
    found = []
    for name in LORA_BASES:
        flags = " --amp" if name == "bf16" else " --amp --lora-base-dtype float32"
        for seq_len in sorted(LORA_SEQ_LENS, reverse=True):
            options = []
            for checkpointing in (False, True):
                totals = peaks[preset, seq_len, name, checkpointing]
                fitting = [(b, t) for b, t in zip(LORA_BATCHES, totals) if t <= budget]
                if fitting and (not options or fitting[-1][0] > options[0][0]):
                    batch, total = fitting[-1]
                    flag = " --activation-checkpointing" if checkpointing else ""
                    options.append((batch, f"`--lora-rank {LORA_RANK} --seq-len {seq_len} --batch-size {batch}{flags}"
                                           f"{flag}` ({total / GB:.2f} GB)"))
            if options:
                found.append(", or ".join(text for _, text in options))
                break
        else:
            found.append(f"a {name} base does not fit, even at seq-len {min(LORA_SEQ_LENS)}, batch 1, with checkpointing")
    return f"{preset}: " + "; ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=50257, help="GPT-2's vocabulary (a trained one is 32768)")
    parser.add_argument("--steps", type=int, default=3, help="training steps per measured configuration")
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    parser.add_argument("--no-measure", action="store_true", help="only the computed GPU table")
    parser.add_argument("--measure", type=lambda v: v.split(","), metavar="PRESETS",
                        help="measure only these presets' rows (comma-separated, e.g. gpt2)")
    parser.add_argument("--gpu-measure", type=lambda v: v.split(","), metavar="PRESETS",
                        help="only the rows measured on CUDA GPUs, of these presets (e.g. gpt2-medium,gpt2-xl); "
                             "under torchrun with DDP and FSDP")
    # The child process's own arguments:
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n-positions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.gpu_measure:
        gpu_measure_table(args)
        return
    if not args.no_measure:
        measured_table(args)
    gpu_table(args)
    sharded_table(args)
    fit_table(args)
    lora_table(args)


if __name__ == "__main__":
    main()
