"""Serving throughput: `gpt2es serve` with 1, 4 and 16 streaming clients at once, beside the same
requests one at a time (the server with --max-batch 1) and transformers' generate per request.

Two models: the demo model (the shape `gpt2es train --preset auto` picks for the demo tales in four
minutes: 2 layers, 128 wide, 256 tokens of context; prepared and trained for a few steps here, or
--checkpoint), and the `small` preset (6 layers, 384 wide) with random weights. Weights do not
change the speed: every request is greedy and ignores <|endoftext|> (ignore_eos), so each one
generates exactly --max-tokens tokens, in every row.

Each row sends the same kind of request, a prompt of a demo tale and --max-tokens new tokens,
streamed (stream=true, usage at the end), from asyncio clients in this process to the server,
a `gpt2es serve` subprocess on 127.0.0.1:

- ours, batched: `gpt2es serve --max-batch 16`, with 1, 4 and 16 clients each sending requests
  back to back;
- ours, one at a time: `gpt2es serve --max-batch 1`: one client (each request alone), and 16
  clients (what they see from a server that decodes one request at a time: they queue);
- transformers: the model exported with gpt2es_cli.hf.export_hf, loaded with AutoModelForCausalLM,
  `generate` (greedy, the same max_tokens) per request, one request at a time, in this process
  (no HTTP: a server without batching could do no better).

It prints, per row: aggregate tokens/s (new tokens of all requests / wall time), time to first
token and request latency (median and 95th percentile), and the ratios of 16 clients to one at a
time. The server and the clients share the machine's cores, as they would on one computer.

    python benchmarks/bench_serve.py                           # both models (a few minutes)
    python benchmarks/bench_serve.py --checkpoint runs/demo    # your demo run instead of a fresh one
    python benchmarks/bench_serve.py --models demo --max-tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from gpt2es_cli.artifacts import open_checkpoint
from gpt2es_cli.checkpoint import Checkpoint, save_model
from gpt2es_cli.config import ModelConfig
from gpt2es_cli.device import bf16_supported
from gpt2es_cli.hf import export_hf
from gpt2es_cli.model import GPT2

PROMPTS = ["Había una vez una niña que vivía junto al mar.", "El pequeño ratón buscó queso en la cocina,",
           "Cuando llegó el invierno, la familia encendió la chimenea", "En un pueblo de montaña vivía un pastor"]
CLIENTS = (1, 4, 16)
BATCH = 16


@dataclass
class Row:
    name: str
    tokens_per_second: float
    ttft: list[float]
    latency: list[float]
    requests: int


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# --- the models ---------------------------------------------------------------------------------


def demo_checkpoint(work: Path) -> Path:
    """Prepare the demo tales and train the demo model's shape for 30 steps (under a minute)."""
    data, run = work / "data", work / "run"
    gpt2es = [sys.executable, "-m", "gpt2es_cli"]
    subprocess.run([*gpt2es, "prepare", "-o", str(data)], check=True, capture_output=True)
    subprocess.run([*gpt2es, "train", "-d", str(data), "-o", str(run), "--preset", "small", "--n-layer", "2",
                    "--n-embd", "128", "--n-head", "2", "--max-steps", "30", "--eval-interval", "0"],
                   check=True, capture_output=True)
    return run / "best.pth" if (run / "best.pth").is_file() else run / "last.pth"


def small_checkpoint(work: Path, tokenizer_json: str) -> Path:
    """The small preset with random weights, with the demo model's tokenizer."""
    from gpt2es_cli.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_json(tokenizer_json)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("small", vocab_size=tokenizer.vocab_size)
    path = work / "small.pth"
    save_model(path, GPT2(config).eval(), config, tokenizer)
    return path


# --- our server ---------------------------------------------------------------------------------


class Server:
    """`gpt2es serve CHECKPOINT --port 0` in a subprocess, for a `with` block."""

    def __init__(self, checkpoint: Path, max_batch: int, dtype: str, threads: int | None):
        self.env = {**os.environ, "COLUMNS": "200"}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)
        self.command = [sys.executable, "-m", "gpt2es_cli", "serve", str(checkpoint), "--port", "0",
                        "--max-batch", str(max_batch), "--max-queue", "256", "--dtype", dtype]

    def __enter__(self) -> str:
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env=self.env)
        first = self.process.stdout.readline()
        if not first.startswith("serving "):
            self.process.kill()
            sys.exit(f"gpt2es serve did not start: {first}{self.process.stderr.read()}")
        return first.split(" on ")[-1].strip()

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.communicate(timeout=30)


async def one_request(client, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, latency, new tokens) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, last = None, ""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():  # only the usage chunk is parsed: the client stays light
            if line.startswith("data: ") and line != "data: [DONE]":
                first = first if first is not None else time.perf_counter() - start
                last = line
    return first or 0.0, time.perf_counter() - start, json.loads(last[6:])["usage"]["completion_tokens"]


async def load(base: str, clients: int, requests: int, max_tokens: int) -> Row:
    """`requests` requests from `clients` clients at once, each sending its share back to back."""
    import httpx

    results: list[tuple[float, float, int]] = []

    async def client_loop(i: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            for j in range(i, requests, clients):
                results.append(await one_request(client, PROMPTS[j % len(PROMPTS)], max_tokens))

    async with httpx.AsyncClient(base_url=base, timeout=600) as client:  # warm up: each prompt's shapes once
        for prompt in PROMPTS:
            await one_request(client, prompt, max_tokens)
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    wall = time.perf_counter() - start
    return Row("", sum(r[2] for r in results) / wall, [r[0] for r in results], [r[1] for r in results], requests)


# --- transformers ---------------------------------------------------------------------------------


def transformers_rows(checkpoint: Checkpoint, dtype: torch.dtype, requests: int, max_tokens: int) -> Row:
    """transformers' generate, greedy, one request at a time, on the exported model."""
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls, self.at = 0, None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2 and self.at is None:  # the first call is the prompt
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    tokenizer = checkpoint.tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        out = export_hf(checkpoint, Path(tmp) / "hf")
        model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()

    def generate(prompt: str) -> tuple[float, float, int]:
        ids = torch.tensor([tokenizer.encode(prompt)])
        streamer = FirstToken()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 use_cache=True, pad_token_id=tokenizer.eos_id, eos_token_id=None, streamer=streamer)
        end = time.perf_counter()
        return (streamer.at or end) - start, end - start, out.shape[1] - ids.shape[1]

    for prompt in PROMPTS:  # warm up: each prompt's shapes once (oneDNN prepares its kernels per shape)
        generate(prompt)
    start = time.perf_counter()
    results = [generate(PROMPTS[j % len(PROMPTS)]) for j in range(requests)]
    wall = time.perf_counter() - start
    return Row("", sum(r[2] for r in results) / wall, [r[0] for r in results], [r[1] for r in results], requests)


# --- the table --------------------------------------------------------------------------------------


def bench(label: str, path: Path, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []

    def add(row: Row, name: str) -> None:
        row.name = name
        rows.append(row)
        print(f"  measured: {name}", file=sys.stderr, flush=True)

    per_client = args.requests_per_client
    with Server(path, BATCH, args.dtype, args.threads) as base:
        for clients in CLIENTS:
            add(asyncio.run(load(base, clients, per_client * clients, args.max_tokens)),
                f"ours, --max-batch {BATCH}, {clients} client{'s' if clients > 1 else ''}")
    with Server(path, 1, args.dtype, args.threads) as base:
        add(asyncio.run(load(base, 1, per_client * 4, args.max_tokens)), "ours, --max-batch 1, 1 client (one at a time)")
        add(asyncio.run(load(base, 16, per_client * 16, args.max_tokens)), "ours, --max-batch 1, 16 clients (queued)")
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    add(transformers_rows(open_checkpoint(path), dtype, per_client * 4, args.max_tokens),
        "transformers generate, one at a time")
    config = open_checkpoint(path).model_config
    print(f"\n{label}: {config.n_layer} layers, {config.n_embd} wide, vocab {config.vocab_size}, "
          f"context {config.n_positions}; {args.max_tokens} new tokens per request, greedy, {args.dtype}")
    print(f"  {'':48s} {'requests':>8s} {'tokens/s':>9s} {'TTFT p50':>9s} {'TTFT p95':>9s} "
          f"{'latency p50':>11s} {'latency p95':>11s}")
    for r in rows:
        print(f"  {r.name:48s} {r.requests:8d} {r.tokens_per_second:9.1f} {pct(r.ttft, .5):8.3f}s "
              f"{pct(r.ttft, .95):8.3f}s {pct(r.latency, .5):10.3f}s {pct(r.latency, .95):10.3f}s")
    sixteen, alone, hf = rows[2], rows[3], rows[5]
    print(f"  16 clients vs one at a time: {sixteen.tokens_per_second / alone.tokens_per_second:.2f}x the tokens/s "
          f"(vs transformers generate one at a time: {sixteen.tokens_per_second / hf.tokens_per_second:.2f}x); "
          f"p95 time to first token at 16 clients {pct(sixteen.ttft, .95):.3f} s "
          f"(queued behind one at a time: {pct(rows[4].ttft, .95):.3f} s)")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="the demo model to use (else one is prepared and trained for 30 steps)")
    p.add_argument("--models", default="demo,small", help="which of demo and small to measure (comma-separated)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--requests-per-client", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "bfloat16"),
                   default="bfloat16" if bf16_supported(torch.device("cpu")) else "float32",
                   help="default: bfloat16 where the CPU has native bf16 (what --dtype auto picks), else float32")
    p.add_argument("--threads", type=int, help="torch threads of the server and of transformers (default: torch's "
                   "own, one per core); 1 is steadier on a machine that other work shares")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} (the server's too)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = Path(args.checkpoint) if args.checkpoint else None
        models = args.models.split(",")
        if demo is None:
            print("preparing the demo tales and training the demo model's shape for 30 steps...", file=sys.stderr)
            demo = demo_checkpoint(work)
        if "demo" in models:
            bench(f"demo model ({args.checkpoint or 'trained 30 steps'})", demo, args)
        if "small" in models:
            bench("small preset (random weights)", small_checkpoint(work, open_checkpoint(demo).tokenizer_json), args)


if __name__ == "__main__":
    main()
