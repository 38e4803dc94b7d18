"""Generation speed at batch 1: ours with the KV cache, ours without, transformers' generate.

Same weights for all three (our model exported to Hugging Face format), 16 prompt tokens,
256 new tokens, greedy, interleaved in one process. Prints tokens/s, ratios, and whether our
greedy output is identical to transformers' greedy output.

    python benchmarks/bench_generate.py                 # small preset on the CPU
    python benchmarks/bench_generate.py --preset gpt2   # e.g. on a GPU (--device cuda)

Target (issue 5): ours with cache >= 4x transformers' cached generate at batch 1 on the CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from gpt2es_cli.checkpoint import Checkpoint  # noqa: E402
from gpt2es_cli.config import ModelConfig  # noqa: E402
from gpt2es_cli.export import export_hf  # noqa: E402
from gpt2es_cli.generate import GenerationConfig, generate  # noqa: E402
from gpt2es_cli.model import GPT2  # noqa: E402
from gpt2es_cli.tokenizer import Tokenizer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    needed = args.prompt_tokens + args.new_tokens
    if needed > config.n_positions:
        # transformers' GPT-2 cannot go past its learned positions: widen the context to fit.
        print(f"note: n_positions raised from {config.n_positions} to {needed} so all three fit the context")
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size, n_positions=needed)
    ours = GPT2(config).to(device).eval()
    # A throwaway tokenizer only so the export is complete; generation here works on ids.
    tok = Tokenizer.train(["hola mundo"] * 10, vocab_size=300, min_frequency=1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Checkpoint(config, {k: v.cpu() for k, v in ours.state_dict().items()}, tok.to_json())
        out = export_hf(ckpt, os.path.join(tmp, "hf"))
        hf = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").to(device).eval()

    prompt = torch.randint(0, args.vocab_size, (args.prompt_tokens,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    cfg = GenerationConfig(max_new_tokens=n, temperature=0, stop_at_eos=False)
    eos = args.vocab_size - 1

    def run_ours(cache: bool) -> list[int]:
        return generate(ours, prompt, cfg, eos_id=eos, use_cache=cache)[0]

    def run_hf() -> list[int]:
        x = torch.tensor([prompt], device=device)
        with torch.inference_mode():
            y = hf.generate(
                x, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                pad_token_id=eos, eos_token_id=None,
            )
        return y[0, len(prompt):].tolist()

    runs = {"ours (KV cache)": lambda: run_ours(True), "ours (no cache)": lambda: run_ours(False), "transformers generate(use_cache=True)": run_hf}
    outputs, times = {}, {k: [] for k in runs}
    for name, fn in runs.items():  # warm-up
        outputs[name] = fn()
    for _ in range(args.repeats):  # interleaved so drift on a shared machine hits all equally
        for name, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)

    print(f"device={device} preset={args.preset} vocab={args.vocab_size} prompt={len(prompt)} new={n} "
          f"threads={torch.get_num_threads()} torch={torch.__version__}")
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    for name, r in rate.items():
        print(f"  {name:40s} {r:8.1f} tokens/s  (median of {args.repeats})")
    hf_rate = rate["transformers generate(use_cache=True)"]
    print(f"  ratio ours (KV cache) / transformers: {rate['ours (KV cache)'] / hf_rate:.2f}x")
    print(f"  ratio ours (KV cache) / ours (no cache): {rate['ours (KV cache)'] / rate['ours (no cache)']:.2f}x")
    same = outputs["ours (KV cache)"] == outputs["transformers generate(use_cache=True)"]
    print(f"  greedy output identical to transformers: {same}")
    print(f"  greedy output identical with and without cache: {outputs['ours (KV cache)'] == outputs['ours (no cache)']}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
