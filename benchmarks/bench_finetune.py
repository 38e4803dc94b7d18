"""Domain adaptation for a wall-clock budget: full fine-tuning against LoRA at two ranks, side by side.

The base stands in for a pretrained model from the Hub: a gpt2es `small` model trained for a
fixed time (--base-minutes, 10 by default) on the book corpus (../shared/corpus/es, 19th-century
novels from Spain and Latin America) minus one held-out book, with its own BPE tokenizer.

The new domain is the demo tales of `gpt2es prepare -d demo`: short modern children's stories
in plain Spanish, with their own small world of characters, places and set phrases, built
offline by gpt2es's tale generator. They differ from the novels in register, vocabulary,
sentence length and document length, which is what a domain shift is; being generated, they
are also more regular than real text, so every method learns them fast and the bits per byte
reached on them are lower than real text would give. They are prepared with the base's
tokenizer (prepare --tokenizer BASE), as fine-tuning needs.

From the base, each method trains on the tales for the same wall-clock budget (--minutes, with
`gpt2es train --max-time`: the schedule is fitted to the time, evaluations and saves included),
one run after another on the same machine, all with --amp and gpt2es's defaults otherwise
(--train-args adds options to every run):

    full        --init-from BASE                    every weight trains (the default optimizer:
                                                    Muon on the blocks' matrices, AdamW on the rest)
    lora-R      --init-from BASE --lora-rank R      the base frozen; rank-R adapters on c_attn,
                                                    c_proj and c_fc of every block train (AdamW)

Each row: trainable parameters, optimizer steps done, the median step time, the training
process's peak resident memory (RSS, from the kernel's rusage of the process; with a model this
small most of it is the libraries the process loads, so the saving LoRA makes shows far more
on large models: bench_memory.py computes it for GPUs), and bits per
byte on held-out text of the new domain (the tales' val split) and of the old one (the held-out
book: what the adaptation made the model forget), beside the base's own, unadapted.

    python benchmarks/bench_finetune.py --minutes 0.5 --base-minutes 0.5 --book-bytes 3MB   # a try, ~5 minutes
    python benchmarks/bench_finetune.py                  # 10-minute base, 3 minutes per method
    python benchmarks/bench_finetune.py --minutes 10 --ranks 8,32,128

The prepared data and the base are cached in --work (a base is reused for the same
--base-minutes and --book-bytes); the adaptation runs are redone every time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GPT2ES_SHARED", REPO.parent / "shared"))  # ../shared beside the repo
CORPUS = SHARED / "corpus" / "es"
HELD_OUT = "blasco-ibanez-la-barraca.txt"
"""The book left out of the base's training data: the old domain's held-out text."""


def gpt2es(*args: str, quiet: bool = True) -> subprocess.CompletedProcess:
    """Run a gpt2es command; on failure, show its output and stop."""
    result = subprocess.run([sys.executable, "-m", "gpt2es_cli", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"gpt2es {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    if not quiet:
        print(result.stdout, end="", flush=True)
    return result


def suffix(size: str | None) -> str:
    return f"-{size}" if size else ""


# --- data and base (cached) -------------------------------------------------------------------------


def prepare_books(work: Path, max_bytes: str | None) -> Path:
    """The corpus minus the held-out book, prepared with its own tokenizer."""
    books = work / "books"
    if not books.is_dir():
        books.mkdir(parents=True)
        for f in sorted(CORPUS.glob("*.txt")):
            if f.name != HELD_OUT:
                (books / f.name).symlink_to(f)
    data = work / f"books-data{suffix(max_bytes)}"
    if not (data / "meta.json").is_file():
        print(f"preparing the books ({max_bytes or 'all of them'}) with gpt2es prepare...", flush=True)
        gpt2es("prepare", "-d", str(books), "--txt-mode", "file", "-o", str(data), "--force",
               *(["--max-bytes", max_bytes] if max_bytes else []))
    return data


def train_base(work: Path, books: Path, minutes: float, max_bytes: str | None) -> Path:
    """A small model trained on the books for `minutes`: its best.pth."""
    run = work / f"base-{minutes:g}m{suffix(max_bytes)}"
    if not (run / "best.pth").is_file():
        print(f"training the base: small, {minutes:g} minutes on the books...", flush=True)
        shutil.rmtree(run, ignore_errors=True)
        gpt2es("train", "-d", str(books), "-p", "small", "--amp", "--max-time", f"{minutes * 60:g}s",
               "-o", str(run))
    return run / "best.pth"


def prepare_tales(work: Path, base: Path, max_bytes: str) -> Path:
    """The demo tales, tokenized with the base's tokenizer."""
    data = work / f"tales-data-{max_bytes}-{base.parent.name}"
    if not (data / "meta.json").is_file():
        print(f"preparing the demo tales ({max_bytes}) with the base's tokenizer...", flush=True)
        gpt2es("prepare", "-d", "demo", "--max-bytes", max_bytes, "--tokenizer", str(base), "-o", str(data),
               "--force")
    return data


# --- the runs ---------------------------------------------------------------------------------


def train(name: str, data: Path, base: Path, out: Path, minutes: float, extra: list[str]) -> dict:
    """One adaptation run; its peak RSS comes from the kernel (wait4's rusage of that process)."""
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "gpt2es_cli", "train", "-d", str(data), "--init-from", str(base), "--amp",
           "--max-time", f"{minutes * 60:g}s", "-o", str(out), *extra]
    print(f"{name}: gpt2es {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    with open(out.parent / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); see {out.parent / f'{name}.log'}:\n"
                 + (out.parent / f"{name}.log").read_text()[-3000:])
    return {"name": name, "peak_rss": usage.ru_maxrss * 1024, "wall": time.perf_counter() - start,
            **run_stats(out)}


def run_stats(run: Path) -> dict:
    """Trainable parameters (what the checkpoint holds: every weight, or the adapter's tensors),
    steps done and the median step time (tokens per step / tokens per second of each logged interval)."""
    import torch

    saved = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    tensors = {t.untyped_storage().data_ptr(): t.numel() for t in saved["model"].values()}  # a tied head once
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    trains = [r for r in records if r.get("type") == "train" and r.get("tokens_per_second")]
    if not trains:
        return {"trainable": sum(tensors.values()), "steps": 0, "step_time": None}
    per_step = trains[0]["tokens"] / trains[0]["step"]
    return {"trainable": sum(tensors.values()), "steps": trains[-1]["step"],
            "step_time": statistics.median(per_step / r["tokens_per_second"] for r in trains)}


def bits_per_byte(checkpoints: list[Path], where: list[str], max_tokens: int) -> list[float]:
    """One `gpt2es eval` of every checkpoint on the same text (a dataset's val split or a file), in
    the order given (eval lists them best first, each under the name it was given as)."""
    out = gpt2es("eval", *map(str, checkpoints), *where, "--max-tokens", str(max_tokens), "--json").stdout
    scores = {r["name"]: r["bits_per_byte"] for r in json.loads(out)["results"]}
    return [scores[str(c)] for c in checkpoints]


# --- the report -------------------------------------------------------------------------------


def machine() -> str:
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    shown = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = "not installed"
    return (f"{cpu}, {os.cpu_count()} cores{' (' + ', '.join(shown) + ')' if shown else ''}; torch {torch.__version__}, "
            f"transformers {transformers.__version__}, peft {peft_version}, Python {platform.python_version()}")


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def report(rows: list[dict], base_row: dict, args: argparse.Namespace) -> None:
    print()
    print(f"{datetime.date.today().isoformat()}, {machine()}")
    print(f"base: small trained {args.base_minutes:g} min on the books; each method {args.minutes:g} min on the "
          f"demo tales, one after another; bits per byte on at most {args.eval_tokens:,} held-out tokens")
    print(f"command: python benchmarks/bench_finetune.py {' '.join(sys.argv[1:])}".rstrip())
    print()
    print("| method | trainable parameters | steps | step time | peak RSS | tales bits/byte (new) | "
          f"{HELD_OUT.removesuffix('.txt')} bits/byte (old) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| base, not adapted | - | - | - | - | {base_row['new']:.3f} | {base_row['old']:.3f} |")
    full = rows[0]
    for row in rows:
        share = f" ({100 * row['trainable'] / full['trainable']:.1f}%)" if row is not full else ""
        step = f"{row['step_time'] * 1000:.0f} ms" if row["step_time"] else "-"
        print(f"| {row['name']} | {row['trainable']:,}{share} | {row['steps']} | {step} | {mb(row['peak_rss'])} | "
              f"{row['new']:.3f} | {row['old']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training time of each method (default 3)")
    parser.add_argument("--base-minutes", type=float, default=10.0, help="training time of the base (default 10)")
    parser.add_argument("--ranks", default="8,32", help="LoRA ranks, comma-separated (default 8,32)")
    parser.add_argument("--book-bytes", default=None, metavar="SIZE",
                        help="prepare at most this much of the books for the base, e.g. 3MB (default: all)")
    parser.add_argument("--tales-bytes", default="4MB", metavar="SIZE", help="demo tales to prepare (default 4MB)")
    parser.add_argument("--eval-tokens", type=int, default=50_000, help="held-out tokens scored per domain")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "gpt2es-bench" / "finetune")
    parser.add_argument("--train-args", default="", help="more `gpt2es train` options for every method, e.g. '--lr 3e-4'")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    extra = args.train_args.split()

    args.work.mkdir(parents=True, exist_ok=True)
    books = prepare_books(args.work, args.book_bytes)
    base = train_base(args.work, books, args.base_minutes, args.book_bytes)
    tales = prepare_tales(args.work, base, args.tales_bytes)
    runs_dir = args.work / f"runs-{args.minutes:g}m"
    methods = [("full", [])] + [(f"lora-{r}", ["--lora-rank", str(r)]) for r in ranks]
    rows = [train(name, tales, base, runs_dir / name, args.minutes, [*extra, *more]) for name, more in methods]

    print("scoring...", flush=True)
    checkpoints = [base] + [runs_dir / row["name"] / "best.pth" for row in rows]
    new = bits_per_byte(checkpoints, ["--data", str(tales)], args.eval_tokens)
    old = bits_per_byte(checkpoints, ["--text", str(CORPUS / HELD_OUT)], args.eval_tokens)
    base_row = {"new": new[0], "old": old[0]}
    for row, n, o in zip(rows, new[1:], old[1:]):
        row.update(new=n, old=o)
    report(rows, base_row, args)


if __name__ == "__main__":
    main()
