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

LORA: the estimate for LoRA fine-tuning (--lora-rank 16 on c_attn, c_proj and c_fc, dropout
0.05, AdamW on the adapters) of the gpt2 / gpt2-medium / gpt2-large bases at seq-len 512 and
1024 and batch 1 to 8, the frozen base held in bf16 (--amp on a GPU with bf16) or in float32,
and which fit a 4 GB and an 8 GB card, with the same margins.

    python benchmarks/bench_memory.py              # all the tables (a few minutes on 2 cores)
    python benchmarks/bench_memory.py --no-measure # the GPU and LoRA tables only (instant)
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
from gpt2es_cli.training.memory import PROBE_SHARE, estimate_training_memory, lora_parameter_count

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
    if not args.no_measure:
        measured_table(args)
    gpu_table(args)
    lora_table(args)


if __name__ == "__main__":
    main()
