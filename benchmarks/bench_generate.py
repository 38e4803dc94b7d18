"""Generation speed at batch 1: ours (float32 with and without the KV cache, bfloat16, int8)
against transformers' generate(use_cache=True) in float32 and bfloat16.

Same weights for all (our model exported to Hugging Face format), 16 prompt tokens, 256 new
tokens, greedy, runs interleaved in one process so drift on a shared machine hits all alike.
Prints tokens/s (median and best of --repeats), ratios to transformers in float32, and whether
each greedy output is identical to transformers' at the same precision (float32 is the exact
comparison; in bf16 and int8 rounding can flip a near-tie, so the length of the agreeing
prefix is printed too).

    python benchmarks/bench_generate.py                          # small preset on the CPU
    python benchmarks/bench_generate.py --preset gpt2 --device cuda
    python benchmarks/bench_generate.py --checkpoint runs/x/best.pth   # trained weights

Target (issue 5): ours with the KV cache >= 4x transformers' cached generate at batch 1 on the
CPU, with greedy output identical to transformers' (float32).

It also prints each precision's weight-read ceiling: at batch 1 every new token must read every
weight matrix once, so one pass of bare matrix-vector products over the model's matrices (no
attention, no norms, no Python around them), timed the same way, bounds the tokens/s that any
implementation can reach with those weights on this machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gpt2es_cli.artifacts import open_checkpoint
from gpt2es_cli.checkpoint import Checkpoint
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.device import bf16_supported
from gpt2es_cli.generate import GenerationConfig, generate
from gpt2es_cli.hf import export_hf
from gpt2es_cli.model import GPT2
from gpt2es_cli.quantize import int8_supported, prepare_for_inference
from gpt2es_cli.tokenizer import Tokenizer

HF32 = "transformers float32 generate(use_cache=True)"
HF16 = "transformers bfloat16 generate(use_cache=True)"
OURS32 = "ours float32 (KV cache)"
OURS32_NO_CACHE = "ours float32 (no cache)"
OURS32_COMPILED = "ours float32 (KV cache, --compile)"
OURS16 = "ours bfloat16 (KV cache)"
OURS8 = "ours int8 weights, bfloat16 (KV cache)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def weight_read_ceiling(model: GPT2, device: torch.device, repeats: int) -> tuple[float, int]:
    """(tokens/s, bytes): one matrix-vector product per weight matrix of `model` (each tied
    matrix once), the least work of a batch-1 decode step; median of `repeats` passes."""
    mats = list({id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)}.values())
    vectors = {(w.shape[1], w.dtype): torch.randn(1, w.shape[1], dtype=w.dtype, device=device) for w in mats}

    def one_pass() -> None:
        for w in mats:
            torch.nn.functional.linear(vectors[(w.shape[1], w.dtype)], w)

    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            sync(device)
            t = time.perf_counter()
            for _ in range(16):
                one_pass()
            sync(device)
            if i >= 3:  # warm-up passes left out
                times.append((time.perf_counter() - t) / 16)
    return 1 / statistics.median(times), sum(w.numel() * w.element_size() for w in mats)


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def build(args: argparse.Namespace, device: torch.device) -> tuple[GPT2, Checkpoint]:
    """Our float32 model and a checkpoint of it (random weights of a preset, or --checkpoint)."""
    needed = args.prompt_tokens + args.new_tokens
    if args.checkpoint:
        ckpt = open_checkpoint(args.checkpoint)
        if needed > ckpt.model_config.n_positions:
            sys.exit(f"--prompt-tokens + --new-tokens = {needed} exceeds the checkpoint's context")
        return ckpt.build_model(device), ckpt
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    if needed > config.n_positions:
        # transformers' GPT-2 cannot go past its learned positions: widen the context to fit.
        print(f"note: n_positions raised from {config.n_positions} to {needed} so every run fits the context")
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size, n_positions=needed)
    model = GPT2(config).eval()
    # A throwaway tokenizer only so the export is complete; generation here works on ids.
    tok = Tokenizer.train(["hola mundo"] * 10, vocab_size=300, min_frequency=1)
    ckpt = Checkpoint(config, {k: v.cpu() for k, v in model.state_dict().items()}, tok.to_json())
    return model.to(device), ckpt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--checkpoint", help="use this gpt2es checkpoint's weights instead of a random preset")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="add rows with the compiled decode step (sample --compile)")
    p.add_argument("--batch", type=int, default=1, help="also time ours at this batch size (sampling throughput)")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    ours, ckpt = build(args, device)
    vocab = ours.config.vocab_size
    with tempfile.TemporaryDirectory() as tmp:
        out = export_hf(ckpt, os.path.join(tmp, "hf"))
        hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").to(device).eval()

    half = bf16_supported(device)
    variants: dict[str, GPT2] = {OURS32: ours}
    if half:
        variants[OURS16] = prepare_for_inference(copy.deepcopy(ours), torch.bfloat16)
    if half and int8_supported(device):
        variants[OURS8] = prepare_for_inference(copy.deepcopy(ours), torch.bfloat16, "int8")
    else:
        print(f"note: int8 weight-only matmul not available on {device.type} in this torch build: skipped")
    hf_models = {HF32: hf}
    if half:
        hf_models[HF16] = copy.deepcopy(hf).to(torch.bfloat16)

    prompt = torch.randint(0, vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    cfg = GenerationConfig(max_new_tokens=n, temperature=0, stop_at_eos=False)
    eos = vocab - 1

    def run_ours(model: GPT2, cache: bool = True, compile: bool = False, batch: int = 1) -> list[int]:
        return generate(model, prompt, cfg, eos_id=eos, use_cache=cache, compile=compile, num_samples=batch)[0]

    def run_hf(model) -> list[int]:
        x = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            y = model.generate(
                x, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                pad_token_id=eos, eos_token_id=None,
            )
        return y[0, len(prompt):].tolist()

    # Each of our runs against transformers at the same precision; int8 against float32, the
    # model it approximates.
    runs: dict[str, Callable[[], list[int]]] = {}
    reference: dict[str, str] = {}
    for name, model in variants.items():
        runs[name] = lambda m=model: run_ours(m)
        reference[name] = HF16 if name == OURS16 else HF32
        if name == OURS32:
            runs[OURS32_NO_CACHE] = lambda m=model: run_ours(m, cache=False)
            reference[OURS32_NO_CACHE] = HF32
        if args.compile:
            compiled_name = name.replace("(KV cache)", "(KV cache, --compile)")
            runs[compiled_name] = lambda m=model: run_ours(m, compile=True)
            reference[compiled_name] = reference[name]
    if args.batch > 1:
        for name, model in list(variants.items()):
            batched = name.replace("(KV cache", f"(batch {args.batch}, KV cache")
            runs[batched] = lambda m=model: run_ours(m, batch=args.batch)
            reference[batched] = reference[name]
    for name, model in hf_models.items():
        runs[name] = lambda m=model: run_hf(m)

    outputs, first = {}, {}
    for name, fn in runs.items():  # warm-up (and compilation), and the outputs compared
        sync(device)
        t = time.perf_counter()
        outputs[name] = fn()
        sync(device)
        first[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)

    source = args.checkpoint or f"preset={args.preset} (random weights)"
    print(f"device={device} {source} layers={ours.config.n_layer} width={ours.config.n_embd} vocab={vocab} "
          f"prompt={len(prompt)} new={n} threads={torch.get_num_threads()} torch={torch.__version__}")
    per_run = {k: n * (args.batch if "(batch " in k else 1) for k in runs}  # tokens per run, all samples
    rate = {k: per_run[k] / statistics.median(v) for k, v in times.items()}
    best = {k: per_run[k] / min(v) for k, v in times.items()}
    hf_rate = rate[HF32]
    print(f"  {'':47s} {'tokens/s':>9s} {'best':>8s} {'vs HF fp32':>10s}  greedy output vs transformers")
    def agreement(name: str, ref: str) -> str:
        agree = agreeing_prefix(outputs[name], outputs[ref])
        same = "identical" if agree == n else f"differs after {agree} of {n} tokens"
        return same + (" (vs bf16)" if ref == HF16 else " (vs fp32)")

    for name in runs:
        if name in reference:
            same = agreement(name, reference[name])
            if reference[name] != HF32:
                same += "; " + agreement(name, HF32)
        else:
            same = "(reference)"
        print(f"  {name:47s} {rate[name]:9.1f} {best[name]:8.1f} {rate[name] / hf_rate:9.2f}x  {same}")
    fastest = max((k for k in runs if k.startswith("ours")), key=rate.get)
    print(f"  fastest of ours / transformers float32: {rate[fastest] / hf_rate:.2f}x ({fastest})")
    if OURS16 in rate:
        print(f"  ours bfloat16 / transformers bfloat16: {rate[OURS16] / rate[HF16]:.2f}x")
    for name in (OURS32, OURS16):
        if name in variants:
            ceiling, size = weight_read_ceiling(variants[name], device, args.repeats)
            hf_name = HF32 if name == OURS32 else HF16
            print(f"  {name.split(' (')[0]} weight-read ceiling: {ceiling:.1f} tokens/s ({size / 1e6:.0f} MB of matrices "
                  f"read once per token, {size * ceiling / 1e9:.1f} GB/s): ours at {100 * rate[name] / ceiling:.0f}%, "
                  f"transformers at {100 * rate[hf_name] / ceiling:.0f}%")
    cache_same = outputs[OURS32] == outputs[OURS32_NO_CACHE]
    print(f"  float32 greedy identical with and without the cache: {cache_same}")
    exact = outputs[OURS32] == outputs[HF32]
    print(f"  float32 greedy identical to transformers: {exact}")
    for name in runs:
        if "--compile" in name:
            steady = statistics.median(times[name])
            print(f"  {name}: first run {first[name]:.1f} s (compiling), then {steady:.2f} s per run; greedy "
                  f"identical to the uncompiled path: {outputs[name] == outputs[name.replace(', --compile', '')]}")
    sys.exit(0 if exact and cache_same else 1)


if __name__ == "__main__":
    main()
