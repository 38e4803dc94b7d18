"""One training step of our GPT2 against transformers' GPT2LMHeadModel, and training memory.

Speed: the same config (sdpa attention), the same batch and targets, each model's own loss
(ours: `gpt2es train`'s; theirs: `labels=`), and the same fused AdamW for both models; steps are interleaved (ours, theirs, ours, ...) in one process so
both see the same machine load. Run in fp32 and under bf16 autocast. Prints tokens/s, the ratio,
the machine's measured fp32 and bf16 matmul peaks, and MFU (6N + 12LTC FLOPs per token).

Memory (--rss): trains the tiny preset for a few steps on a small and on a large random
dataset, each in a fresh process, and prints the peak RSS of both: memory-mapped windows mean
the dataset size must not show up in it.

    python benchmarks/bench_train.py                      # small preset, batch 8, 16k vocab
    python benchmarks/bench_train.py --steps 3 --rss      # quicker, plus the memory check
    python benchmarks/bench_train.py --preset gpt2 --device cuda --compile --precision bf16   # a GPU

On CUDA the MFU is also given against the GPU's dense bf16 peak from the table in
gpt2es_cli/training/metrics.py (the datasheet figure), besides the measured matmul peak.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpt2es_cli.config import ModelConfig, TrainConfig
from gpt2es_cli.device import cpu_has_native_bf16
from gpt2es_cli.model import GPT2
from gpt2es_cli.training.loop import compute_loss
from gpt2es_cli.training.metrics import peak_flops
from gpt2es_cli.training.optim import build_optimizer


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, n: int, device: torch.device, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n x n matmul in `dtype` over about `seconds`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    sync(device)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def hf_model(config: ModelConfig) -> torch.nn.Module:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()

    hf_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, activation_function=config.activation,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_eps,
        bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM",
    )
    return GPT2LMHeadModel._from_config(hf_config, attn_implementation="sdpa")


def bench_speed(args: argparse.Namespace) -> None:
    config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab)
    T = args.seq_len or config.n_positions
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # what `gpt2es train` sets (device.configure_backends)
    torch.manual_seed(0)
    ours = GPT2(config).to(device).train()
    theirs = hf_model(config).to(device).train()
    flops_per_token = ours.flops_per_token(T)
    print(f"load average {_load()} (the other processes on this machine) | threads {torch.get_num_threads()} | preset {args.preset} ({ours.num_parameters() / 1e6:.1f}M params, "
          f"vocab {args.vocab}) | batch {args.batch} x {T} tokens | {flops_per_token / 1e6:.1f} MFLOP/token")

    timed_bf16 = args.precision in ("both", "bf16")

    def measure_peaks() -> dict[str, float]:
        # The bf16 peak only when bf16 is timed: emulated, one 2048^3 product takes a minute.
        return {"fp32": matmul_peak(torch.float32, args.matmul_n, device),
                "bf16": matmul_peak(torch.bfloat16, args.matmul_n, device) if timed_bf16 else math.nan}

    peaks = measure_peaks()
    x_full = torch.randint(0, args.vocab, (args.batch, T + 1), device=device)
    x, y = x_full[:, :-1].contiguous(), x_full[:, 1:].contiguous()
    settings = TrainConfig(lr=1e-4, weight_decay=0.1, beta1=0.9, beta2=0.95, optimizer="adamw")  # as transformers
    optimizers = {"gpt2es": build_optimizer(ours, settings), "transformers": build_optimizer(theirs, settings)}
    if args.compile:  # both compiled the same way, as `gpt2es train --compile` does
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    models = {"gpt2es": ours, "transformers": theirs}

    def step(name: str, amp: bool) -> float:
        model, opt = models[name], optimizers[name]
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if name == "gpt2es":  # what `gpt2es train` runs
                loss = compute_loss(model, x, y)
            else:  # transformers' own loss; shift_labels: the targets are already shifted
                loss = model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    results = []
    for precision in precisions:
        amp = precision == "bf16"
        for name in models:
            for _ in range(args.warmup):
                step(name, amp)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.steps):
            for name in models:  # interleaved: both see the same load
                times[name].append(step(name, amp))
        results.append((precision, times))
    # Peaks again at the end: the machine is shared, so keep the best of both measurements.
    peaks = {k: max(v, measure_peaks()[k]) for k, v in peaks.items()}
    print(f"matmul peak ({args.matmul_n}^3, best of 2 x 1 s): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"step time: best (median) of {args.steps} interleaved steps; MFU from the best | load average now {_load()}")
    print(f"\n{'precision':<10}{'model':<14}{'tokens/s':>10}{'step ms':>18}{'MFU':>8}{'MFU vs bf16 peak':>18}")
    for precision, times in results:
        speed = {}
        for name in models:
            best, median = min(times[name]), statistics.median(times[name])
            speed[name] = args.batch * T / best
            mfu = flops_per_token * speed[name] / peaks[precision]
            mfu_bf16 = flops_per_token * speed[name] / peaks["bf16"]
            print(f"{precision:<10}{name:<14}{speed[name]:>10,.0f}{1000 * best:>9.1f} ({1000 * median:>6.1f})"
                  f"{100 * mfu:>7.1f}%{100 * mfu_bf16:>17.1f}%")
        if device.type == "cuda":
            table = peak_flops(None, device)
            if table:
                print(f"{precision:<10}{'MFU vs the GPU datasheet bf16 peak (' + f'{table / 1e12:.0f} TFLOP/s)':<40}"
                      + "  ".join(f"{n} {100 * flops_per_token * speed[n] / table:.1f}%" for n in models))
        median_ratio = statistics.median(times["transformers"]) / statistics.median(times["gpt2es"])
        print(f"{precision:<10}{'ratio':<14}{speed['gpt2es'] / speed['transformers']:>9.2f}x (median {median_ratio:.2f}x)")


def _write_random_dataset(path: Path, tokens: int) -> None:
    from gpt2es_cli.data.dataset import DatasetWriter
    from gpt2es_cli.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(["hola mundo, había una vez un niño"] * 10, vocab_size=300, min_frequency=1)
    rng = np.random.default_rng(0)
    with DatasetWriter(path, tokenizer, force=True) as writer:
        chunk = 1 << 22
        for start in range(0, tokens, chunk):
            writer.write("train", rng.integers(0, tokenizer.vocab_size, min(chunk, tokens - start), dtype=np.uint16))
        writer.write("val", rng.integers(0, tokenizer.vocab_size, 10_000, dtype=np.uint16))
        writer.finish()


def bench_rss(args: argparse.Namespace) -> None:
    print("\npeak RSS of `gpt2es train` (tiny preset, 20 steps) against dataset size:")
    with tempfile.TemporaryDirectory() as tmp:
        for tokens in args.rss_tokens:
            data = Path(tmp) / f"data-{tokens}"
            _write_random_dataset(data, tokens)
            code = (
                "import sys; from gpt2es_cli.cli import app; "
                "sys.argv = ['gpt2es', 'train', '-d', sys.argv[1], '-o', sys.argv[2], '-p', 'tiny', "
                "'--max-steps', '20', '--eval-interval', '10', '--device', 'cpu']\n"
                "try:\n    app()\nexcept SystemExit:\n    pass\n"
                # VmHWM is this address space's peak; ru_maxrss would also count the memory
                # this (big) parent had when it forked the child, which exec does not reset.
                "print('RSS', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
            )
            out = subprocess.run([sys.executable, "-c", code, str(data), str(Path(tmp) / f"run-{tokens}")],
                                 capture_output=True, text=True, check=True)
            rss_kb = int(out.stdout.strip().splitlines()[-1].split()[1])
            size_mb = (data / "train.bin").stat().st_size / 1e6
            print(f"  train.bin {size_mb:>8.1f} MB ({tokens:>12,} tokens): peak RSS {rss_kb / 1024:.0f} MB")


VARIANTS = {
    "learned": {},
    "sinusoidal": {"position": "sinusoidal"},
    "rope": {"position": "rope"},
    "untied head": {"tie_word_embeddings": False},
}
"""The model options `--variants` times against the plain (learned, tied) model."""


def bench_variants(args: argparse.Namespace) -> None:
    """Training steps of our model with each option of VARIANTS, interleaved in one process, as
    tokens per second and as a ratio to `learned` (the step's cost of the option)."""
    device = torch.device(args.device)
    T = args.seq_len or ModelConfig.from_preset(args.preset).n_positions
    x_full = torch.randint(0, args.vocab, (args.batch, T + 1), device=device)
    x, y = x_full[:, :-1].contiguous(), x_full[:, 1:].contiguous()
    settings = TrainConfig(lr=1e-4, weight_decay=0.1, optimizer="adamw")
    models, optimizers = {}, {}
    for name, fields in VARIANTS.items():
        torch.manual_seed(0)
        model = GPT2(ModelConfig.from_preset(args.preset, vocab_size=args.vocab, **fields)).to(device).train()
        models[name], optimizers[name] = (torch.compile(model) if args.compile else model), build_optimizer(model, settings)
    amp = args.precision == "bf16"

    def step(name: str) -> float:
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = compute_loss(models[name], x, y)
        loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t

    for name in models:
        for _ in range(args.warmup):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.steps):
        for name in models:  # interleaved: every option sees the same machine
            times[name].append(step(name))
    tokens = args.batch * T
    base = statistics.median(times["learned"])
    print(f"\nmodel options, preset {args.preset}, batch {args.batch} x {T}, {'bf16' if amp else 'fp32'}, "
          f"median of {args.steps} interleaved steps:")
    print("| option | tokens/s | step vs learned |")
    print("|---|---:|---:|")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"| {name} | {tokens / median:,.0f} | {median / base:.3f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=None, help="default: the preset's context")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model and precision")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=["auto", "both", "fp32", "bf16"], default="auto",
                        help="auto: both where bf16 is native, else fp32")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--rss", action="store_true", help="also check peak RSS against dataset size")
    parser.add_argument("--rss-tokens", type=lambda s: [int(float(v)) for v in s.split(",")],
                        default=[1_000_000, 200_000_000])
    parser.add_argument("--no-speed", action="store_true", help="skip the speed comparison")
    parser.add_argument("--variants", action="store_true",
                        help="also time our model with each position encoding and the untied head against learned")
    args = parser.parse_args()
    if args.precision == "auto":  # bf16 only where it is native: emulated, a step takes minutes
        native = torch.cuda.is_bf16_supported() if args.device.startswith("cuda") else cpu_has_native_bf16()
        args.precision = "both" if native else "fp32"
        if not native:
            print("note: this device has no native bf16 (emulated bf16 steps take minutes): fp32 only; "
                  "--precision both forces it")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.no_speed:
        bench_speed(args)
    if args.variants:
        bench_variants(args)
    if args.rss:
        bench_rss(args)
    print(f"\n(peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
