"""Model quality for a wall-clock budget: gpt2es with its defaults against a nanoGPT-style reference.

For each budget T (minutes), two trainings run AT THE SAME TIME, one CPU thread each, so both
see the same machine:

- gpt2es: `gpt2es train --amp --max-time T` with its defaults (its own BPE tokenizer trained by
  `gpt2es prepare`, its default preset), plus any extra options of a --variant;
- reference: a faithful nanoGPT-style loop written here (karpathy/nanoGPT's model.py and
  train.py recipe): GPT-2 tokenizer (../shared/gpt2-tokenizer), the same model size as ours,
  bias on, dropout 0, AdamW betas 0.9/0.95 with weight decay 0.1 on 2-D weights, lr 6e-4 with
  a linear warmup of 100 iterations (10% if fewer) and a cosine to 6e-5 over max_iters fitted
  to the budget from its own measured speed, grad clip 1.0, bf16 autocast where the CPU has
  native bf16 (else float32: nanoGPT's train.py never autocasts on a CPU, and emulated bf16 is
  many times slower), random windows, batch 8 x 256.

Both train on the book corpus minus one held-out book and are scored the same way on that book:
bits per byte (total loss in bits over the book's UTF-8 bytes), sliding window with stride half
the context, every token scored once, by one scoring function.

    python benchmarks/bench_quality.py --quick              # ~2 minutes per pair, to try it
    python benchmarks/bench_quality.py --minutes 15,30      # the README table
    python benchmarks/bench_quality.py --minutes 15 --variant "muon=--optimizer muon"
    python benchmarks/bench_quality.py --minutes 15 --variant "unfitted=--unfitted"  # no --max-time, stopped at T

--expert adds the expert reference: the same nanoGPT loop set up as someone who knows it would
set it up for this budget: the size gpt2es's --preset auto chose, gpt2es's own tokenized data and
vocabulary (so the tokenizer gives neither side an edge), its warmup fitted (10% of its fitted
iterations, at most 100: the loop's rule) and its learning rate chosen by a sweep (--expert-lrs,
3 values by default, every one run and recorded; the best is the expert reference):

    python benchmarks/bench_quality.py --minutes 15,30 --expert

A variant row trains gpt2es with extra options; it runs paired with the next variant (or with
another reference run when it is alone), always two at a time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GPT2ES_SHARED", REPO.parent / "shared"))  # ../shared beside the repo
CORPUS = SHARED / "corpus" / "es"
GPT2_DIR = SHARED / "gpt2-tokenizer"
HELD_OUT = "blasco-ibanez-la-barraca.txt"
PROMPT = "Había una vez"
UNFITTED = "--unfitted"
"""A variant option of this benchmark: train without --max-time (the plan of one epoch, as before
gpt2es fitted plans to time) and stop with Ctrl-C (SIGINT) when the budget is spent."""
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"}


# --- data -----------------------------------------------------------------------------------------


def held_out_text() -> str:
    return unicodedata.normalize("NFC", (CORPUS / HELD_OUT).read_text(encoding="utf-8"))


def prepare_data(work: Path) -> tuple[Path, Path]:
    """The training books (all but the held-out one) prepared both ways, cached in `work`."""
    books = work / "books"
    if not books.is_dir():
        books.mkdir(parents=True)
        for f in sorted(CORPUS.glob("*.txt")):
            if f.name != HELD_OUT:
                (books / f.name).symlink_to(f)
    from gpt2es_cli.config import DEFAULT_VOCAB_SIZE as vocab  # prepare's default: the data follows it

    ours = work / f"ours-data-v{vocab}"
    if not (ours / "meta.json").is_file():
        print(f"preparing the books with gpt2es prepare (its own BPE tokenizer, {vocab:,} tokens)...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "gpt2es_cli", "prepare", "-d", str(books), "--txt-mode", "file",
             "-o", str(ours), "--force"],
            check=True, stdout=subprocess.DEVNULL,
        )
    reference = work / "reference-train.bin"
    if not reference.is_file():
        print("tokenizing the books with the GPT-2 tokenizer for the reference...", flush=True)
        tok = gpt2_tokenizer()
        eot = tok.token_to_id("<|endoftext|>")
        texts = [unicodedata.normalize("NFC", f.read_text(encoding="utf-8")) for f in sorted(books.iterdir())]
        ids: list[int] = []
        for enc in tok.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(eot)  # nanoGPT's prepare.py ends every document with <|endoftext|>
        tmp = reference.with_suffix(".tmp")
        np.asarray(ids, dtype=np.uint16).tofile(tmp)
        tmp.rename(reference)
    return ours, reference


def gpt2_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.decoders import ByteLevel as ByteLevelDecoder
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import ByteLevel

    tok = Tokenizer(BPE.from_file(str(GPT2_DIR / "vocab.json"), str(GPT2_DIR / "merges.txt")))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = ByteLevelDecoder()
    return tok


# --- the nanoGPT-style reference ---------------------------------------------------------------


def reference_model(n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int):
    """nanoGPT's GPT (model.py): pre-LN blocks, exact GELU, biases, tied head, its init."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(n_embd), SelfAttention()
            self.ln_2 = nn.LayerNorm(n_embd)
            self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.block_size = block_size
            self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.wte.weight = self.lm_head.weight  # weight tying
            self.apply(self._init)
            for name, p in self.named_parameters():
                if name.endswith(("attn.c_proj.weight", "mlp.2.weight")):  # nanoGPT's scaled residual init
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

        @staticmethod
        def _init(module):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

        def forward(self, idx):
            T = idx.size(1)
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))  # (B, T, V)

    return GPT()


def train_reference(data: Path, out: Path, minutes: float, size: dict, seed: int = 1337) -> None:
    """nanoGPT's train.py recipe for a wall-clock budget (runs in its own process, one thread).

    `size` may carry the expert reference's recipe: "lr" (the peak; the floor is lr / 10, as
    nanoGPT's min_lr) and "vocab" (the vocabulary of `data`, gpt2es's own tokens: the embedding is
    padded to a multiple of 64, as nanoGPT pads GPT-2's)."""
    import torch
    import torch.nn.functional as F

    from gpt2es_cli.device import cpu_has_native_bf16

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    bf16 = cpu_has_native_bf16()  # the same rule as gpt2es's --amp on a CPU
    budget = minutes * 60
    start = time.perf_counter()
    batch, block = 8, size["n_positions"]
    train = np.memmap(data, dtype=np.uint16, mode="r")
    model = reference_model(size["n_layer"], size["n_head"], size["n_embd"], block, padded_vocab(size))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=size.get("lr", 6e-4), betas=(0.9, 0.95),
    )
    lr_max = size.get("lr", 6e-4)
    lr_min = lr_max / 10

    def get_batch():
        ix = torch.randint(len(train) - block, (batch,))
        x = torch.stack([torch.from_numpy(train[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(train[i + 1 : i + 1 + block].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(it: int, warmup: int, max_iters: int) -> float:  # nanoGPT's get_lr
        if it < warmup:
            return lr_max * (it + 1) / (warmup + 1)
        if it > max_iters:
            return lr_min
        ratio = (it - warmup) / max(1, max_iters - warmup)
        return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr_max - lr_min)

    calibrate = 12
    max_iters, warmup = None, 100
    it, losses = 0, []
    t_calibrated = None
    while True:
        if max_iters is None and it == calibrate:
            # max_iters fitted to the budget from this run's own speed (after 2 warm-up iterations)
            per_iter = (time.perf_counter() - t_calibrated) / (calibrate - 2)
            left = budget - (time.perf_counter() - start)
            max_iters = it + max(1, int(left / per_iter))
            warmup = min(100, max(1, max_iters // 10))
        if max_iters is not None and it >= max_iters:
            break
        if time.perf_counter() - start >= budget:  # the wall clock is the budget, also if the machine slowed down
            break
        if it == 2:
            t_calibrated = time.perf_counter()
        lr = lr_at(it, warmup, max_iters or 10**9)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        it += 1
    elapsed = time.perf_counter() - start
    torch.save(model.state_dict(), out / "reference.pt")
    (out / "result.json").write_text(json.dumps({
        "steps": it, "tokens": it * batch * block, "seconds": elapsed, "warmup": warmup,
        "final_loss": float(np.mean(losses[-20:])), "size": size, "precision": "bfloat16" if bf16 else "float32",
    }))


def padded_vocab(size: dict) -> int:
    """The reference's embedding rows: GPT-2's 50,257 padded to 50,304, or the expert's vocabulary
    padded to a multiple of 64 the same way."""
    vocab = size.get("vocab", 50257)
    return -(-vocab // 64) * 64


# --- scoring (the same for both) -------------------------------------------------------------


def score(forward, ids: np.ndarray, context: int, n_bytes: int, batch: int = 8) -> float:
    """Bits per byte of ids under `forward(x) -> logits (B, T, V)`: sliding window, stride context/2,
    every target scored exactly once (targets before a window's new part only give it context)."""
    import torch
    import torch.nn.functional as F

    stride = context // 2
    n = len(ids) - 1  # targets ids[1:]
    window = min(context, n)
    starts = list(range(0, max(1, n - window) + 1, stride))
    if starts[-1] + window < n:
        starts.append(n - window)
    total, done = 0.0, 0
    jobs = []
    for s in starts:
        first_new = max(done, s)  # targets s+1 .. s+window; score those not scored yet
        jobs.append((s, first_new - s))
        done = s + window
    with torch.no_grad():
        for i in range(0, len(jobs), batch):
            chunk = jobs[i : i + batch]
            x = torch.stack([torch.from_numpy(ids[s : s + window].astype(np.int64)) for s, _ in chunk])
            y = torch.stack([torch.from_numpy(ids[s + 1 : s + 1 + window].astype(np.int64)) for s, _ in chunk])
            logits = forward(x).float()
            nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="none").view(len(chunk), -1)
            for row, (_, skip) in enumerate(chunk):
                total += float(nll[row, skip:].sum())
    return total / math.log(2) / n_bytes


def score_ours(run: Path, text: str) -> tuple[float, str]:
    import torch

    from gpt2es_cli.checkpoint import load_checkpoint
    from gpt2es_cli.config import GenerationConfig
    from gpt2es_cli.generate import generate

    ckpt = load_checkpoint(run / "last.pth")
    model, tok = ckpt.build_model("cpu"), ckpt.tokenizer()
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    bpb = score(model, ids, model.config.n_positions, len(text.encode("utf-8")))
    torch.manual_seed(0)
    new = generate(model, tok.encode(PROMPT), GenerationConfig(max_new_tokens=40, seed=0), tok.eos_id)[0]
    return bpb, PROMPT + tok.decode(new)


def score_reference(run: Path, text: str) -> tuple[float, str]:
    import torch

    result = json.loads((run / "result.json").read_text())
    size = result["size"]
    model = reference_model(size["n_layer"], size["n_head"], size["n_embd"], size["n_positions"], padded_vocab(size))
    model.load_state_dict(torch.load(run / "reference.pt", weights_only=True))
    model.eval()
    vocab = size.get("vocab", 50257)
    if "data" in size:  # the expert reference: gpt2es's tokens, scored through gpt2es's tokenizer as ours are
        from gpt2es_cli.data.dataset import PreparedDataset

        ours = PreparedDataset.open(size["data"]).tokenizer()
        ids = np.asarray(ours.encode(text), dtype=np.int64)
        prompt, decode = ours.encode(PROMPT), ours.decode
    else:
        tok = gpt2_tokenizer()
        ids = np.asarray(tok.encode(text).ids, dtype=np.int64)
        prompt, decode = tok.encode(PROMPT).ids, tok.decode
    bpb = score(model, ids, size["n_positions"], len(text.encode("utf-8")))
    # nanoGPT's generate: temperature 0.8, top-k 50 (the same settings as ours above)
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(40):
            logits = model(idx[:, -size["n_positions"]:])[:, -1, :vocab] / 0.8
            v, _ = torch.topk(logits, 50)
            logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)], dim=1)
    return bpb, decode(idx[0].tolist())


# --- the runs -----------------------------------------------------------------------------------


def ours_size(extra: list[str], run: Path | None = None) -> dict:
    """The model size gpt2es trains with these options: the preset or shape they give, else (the
    default, --preset auto) the size the finished `run` chose, else small (auto without --max-time)."""
    from gpt2es_cli.config import ModelConfig

    if run is not None and (run / "config.yaml").exists():
        import yaml

        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        shape = {k: saved[k] for k in ("n_layer", "n_head", "n_embd", "n_positions") if saved.get(k) is not None}
        cfg = ModelConfig.from_preset(saved["preset"], **shape)
        return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.n_positions}
    preset = "small"
    for flag in ("--preset", "-p"):
        if flag in extra:
            preset = extra[extra.index(flag) + 1]
    overrides = {}
    for name in ("n_layer", "n_head", "n_embd", "n_positions"):
        flag = "--" + name.replace("_", "-")
        if flag in extra:
            overrides[name] = int(extra[extra.index(flag) + 1])
    cfg = ModelConfig.from_preset(preset, **overrides)
    return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.n_positions}


def size_name(size: dict) -> str:
    return f"{size['n_layer']}x{size['n_embd']}"


def launch_ours(data: Path, out: Path, minutes: float, extra: list[str]) -> subprocess.Popen:
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    budget = [] if UNFITTED in extra else ["--max-time", f"{minutes * 60:g}s"]
    cmd = [sys.executable, "-m", "gpt2es_cli", "train", "-d", str(data), "-o", str(out), "--amp", *budget,
           *(x for x in extra if x != UNFITTED)]
    log = open(out.parent / f"{out.name}.log", "w")  # closed when the process ends
    return subprocess.Popen(cmd, env={**os.environ, **ONE_THREAD}, stdout=log, stderr=subprocess.STDOUT)


def launch_reference(data: Path, out: Path, minutes: float, size: dict) -> subprocess.Popen:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--_reference", str(data), str(out), str(minutes), json.dumps(size)]
    log = open(out.parent / f"{out.name}.log", "w")  # closed when the process ends
    return subprocess.Popen(cmd, env={**os.environ, **ONE_THREAD}, stdout=log, stderr=subprocess.STDOUT)


def ours_result(run: Path) -> dict:
    from gpt2es_cli.checkpoint import load_checkpoint

    t = load_checkpoint(run / "last.pth").training
    if t is None:
        return {"steps": None, "tokens": None, "seconds": None}
    return {"steps": t.step, "tokens": t.tokens_seen, "seconds": t.elapsed}


def score_runs(runs: list[Path]) -> None:
    """Score finished runs (a crashed benchmark's, say) on the held-out book, one line each."""
    text = held_out_text()
    for run in runs:
        if (run / "result.json").exists():
            result, (bpb, sample) = json.loads((run / "result.json").read_text()), score_reference(run, text)
            size = result["size"]
        else:
            result, (bpb, sample) = ours_result(run), score_ours(run, text)
            size = ours_size([], run)
        print(f"| {run.name} | {size_name(size)} | {result['steps']} | {result['tokens']:,} | {result['seconds']:.0f} | "
              f"{bpb:.3f} |", flush=True)
        print(f"    sample: {sample!r}", flush=True)


def _lower(row: dict, ref: dict | None) -> str:
    """'33.3% lower': the row's bits per byte against a reference row's."""
    if ref is None or ref is row:
        return "-"
    lower = 100 * (1 - row["bits_per_byte"] / ref["bits_per_byte"])
    return f"{lower:.1f}% lower" if lower >= 0 else f"{-lower:.1f}% higher"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="5,15,30", help="budgets T in minutes, comma-separated")
    parser.add_argument("--quick", action="store_true", help="one pair of 2-minute runs, to try it")
    parser.add_argument("--variant", action="append", default=[],
                        help='extra gpt2es rows: "name=--option value ..." (run in pairs)')
    parser.add_argument("--no-reference", action="store_true", help="only the variants, paired with each other")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "gpt2es-bench" / "quality")
    parser.add_argument("--reference-size", action="append", default=[], metavar="LxW",
                        help="more nanoGPT reference rows at these sizes (blocks x width, e.g. 2x128)")
    parser.add_argument("--expert", action="store_true",
                        help="add the expert reference: nanoGPT at the size auto chose, on gpt2es's own tokens, "
                             "its learning rate swept (--expert-lrs)")
    parser.add_argument("--expert-lrs", default="3e-3,6e-3,1.2e-2",
                        help="the expert reference's learning rates, comma-separated (each one run and recorded)")
    parser.add_argument("--no-defaults", action="store_true",
                        help="leave out the gpt2es (defaults) row and its reference (with --variant or --reference-size)")
    parser.add_argument("--score", nargs="+", type=Path, metavar="RUN",
                        help="only score these finished runs (gpt2es run directories or reference runs) and print them")
    args = parser.parse_args()
    if args.score:
        score_runs(args.score)
        return
    if not CORPUS.is_dir() or not GPT2_DIR.is_dir():
        sys.exit(f"needs {CORPUS} and {GPT2_DIR} (the shared corpus and GPT-2 tokenizer)")
    budgets = [2.0] if args.quick else [float(m) for m in args.minutes.split(",")]
    variants = [("gpt2es (defaults)", [])] if not (args.no_reference or args.no_defaults) else []
    for v in args.variant:
        name, _, opts = v.partition("=")
        variants.append((f"gpt2es {name}", opts.split()))
    # Everything scoring uses is imported now: editing the package while runs train must not change it.
    import gpt2es_cli.checkpoint
    import gpt2es_cli.config
    import gpt2es_cli.generate
    import gpt2es_cli.inference
    import gpt2es_cli.model
    import gpt2es_cli.tokenizer  # noqa: F401

    ours_data, ref_data = prepare_data(args.work)
    text = held_out_text()
    print(f"held-out book: {HELD_OUT} ({len(text.encode()):,} bytes); machine: {os.cpu_count()} cores, "
          "one thread per run, two runs at a time\n", flush=True)

    rows = []
    for minutes in budgets:
        # Each entry: (row name, gpt2es options) or (row name, None, the reference's model size).
        queue: list[tuple] = list(variants)
        base = ours_size(variants[0][1]) if variants else ours_size([])
        if not args.no_reference and not args.no_defaults:
            queue.insert(1, (f"nanoGPT reference {size_name(base)}", None, base))
        for size in args.reference_size:  # e.g. 2x128: 64-wide heads, the context of small
            layers, width = (int(v) for v in size.lower().split("x"))
            extra = {"n_layer": layers, "n_head": max(1, width // 64), "n_embd": width, "n_positions": 256}
            queue.insert(0, (f"nanoGPT reference {size_name(extra)}", None, extra))
        done: dict[str, Path] = {}
        while queue:
            pair, queue = queue[:2], queue[2:]
            procs = []
            for name, extra, *size in pair:
                run = args.work / "runs" / f"{minutes:g}m-{name.replace(' ', '_').replace('(', '').replace(')', '')}"
                if extra is None:
                    data = Path(size[0]["data"]) / "train.bin" if "data" in size[0] else ref_data
                    procs.append((name, run, None, launch_reference(data, run, minutes, size[0])))
                else:
                    procs.append((name, run, extra, launch_ours(ours_data, run, minutes, extra)))
            print(f"T = {minutes:g} min: training {' and '.join(n for n, *_ in procs)} side by side...", flush=True)
            started = time.monotonic()
            for name, run, extra, proc in procs:
                if extra is not None and UNFITTED in extra:
                    try:
                        proc.wait(timeout=max(0.0, minutes * 60 - (time.monotonic() - started)))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGINT)  # stops after the step, saving last.pth
                if proc.wait() not in ((0, 130) if extra and UNFITTED in extra else (0,)):  # 130: stopped by Ctrl-C
                    sys.exit(f"{name} failed: see {run.parent / (run.name + '.log')}")
            for name, run, extra, _ in procs:
                result = json.loads((run / "result.json").read_text()) if extra is None else ours_result(run)
                bpb, sample = score_reference(run, text) if extra is None else score_ours(run, text)
                size = ours_size(extra, run) if extra is not None else result["size"]
                rows.append({"minutes": minutes, "name": name, **result, "size": size_name(size),
                             "bits_per_byte": bpb, "sample": sample})
                print(f"  {name} ({size_name(size)}): {result['steps']} steps, {result['tokens']:,} tokens, "
                      f"{result['seconds']:.0f} s, {bpb:.3f} bits/byte", flush=True)
                done[name] = run
                chosen = ours_size([], run) if extra == [] else None
                if chosen and args.expert:
                    # the expert reference at the size auto chose, on our own tokens: one row per swept rate
                    vocab = json.loads((ours_data / "meta.json").read_text())["vocab_size"]
                    for lr in reversed([float(v) for v in args.expert_lrs.split(",")]):
                        recipe = {**chosen, "lr": lr, "vocab": vocab, "data": str(ours_data)}
                        queue.insert(0, (f"nanoGPT expert {size_name(chosen)} lr {lr:g}", None, recipe))
                if chosen and chosen != base and not args.no_reference:
                    # --preset auto chose another size than the reference's: a reference row at that
                    # size too, unless one is already run or queued (--reference-size)
                    named = f"nanoGPT reference {size_name(chosen)}"
                    if named not in done.keys() | {n for n, *_ in (*pair, *queue)}:
                        queue.insert(0, (named, None, chosen))
            if len(queue) == 1 and queue[0][1] is not None and not args.no_reference:
                queue.append((f"nanoGPT reference {size_name(base)} (again)", None, base))

    expert = args.expert
    print("\n| T | run | model | steps | tokens | wall s | bits/byte | vs reference | vs reference, same size |"
          + (" vs expert (best lr) |" if expert else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if expert else ""))
    for r in rows:
        refs = [x for x in rows if x["minutes"] == r["minutes"] and x["name"].startswith("nanoGPT reference")]
        first = refs[0] if refs else None
        same = next((x for x in refs if x["size"] == r["size"]), None)
        experts = [x for x in rows if x["minutes"] == r["minutes"] and x["name"].startswith("nanoGPT expert")]
        best = min(experts, key=lambda x: x["bits_per_byte"]) if experts else None
        print(f"| {r['minutes']:g} min | {r['name']} | {r['size']} | {r['steps']} | {r['tokens']:,} | {r['seconds']:.0f} | "
              f"{r['bits_per_byte']:.3f} | {_lower(r, first)} | {_lower(r, same)} |"
              + (f" {_lower(r, best)} |" if expert else ""))
    print("\nSamples (temperature 0.8, top-k 50, seed 0):")
    for r in rows:
        print(f"- {r['minutes']:g} min, {r['name']}: {r['sample']!r}")
    (args.work / "results.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_reference":
        _, _, data, out, minutes, size = sys.argv
        train_reference(Path(data), Path(out), float(minutes), json.loads(size))
    else:
        main()
