"""Benchmark `gpt2es prepare` against the Hugging Face `run_clm` way, and its memory at scale.

On ../shared/corpus/es, with GPT-2's tokenizer from ../shared/gpt2-tokenizer for both:

1. Throughput (MB of raw text per second, wall clock, each run in a fresh process):
   - prepare, with 1 process and with one worker per CPU;
   - the run_clm way: `datasets.load_dataset("text")`, `Dataset.map(tokenizer, batched=True)`,
     then `map(group_texts)` into 1024-token blocks, as in transformers' examples/run_clm.py.
   Target: prepare >= 2x run_clm.
2. Peak RSS (VmHWM: main process, and each worker sampled while it runs) of prepare on the corpus once (1x) and four times (4x: the same files
   read four times by a Source, each copy's documents made distinct so nothing is deduplicated
   away and 4x the tokens are written; nothing is copied on disk). Target: 4x within 1.2x of 1x.
3. Shards (prepare --shard I/N): the corpus prepared by one process, then as N shards by N processes
   at once (each on one CPU, RAYON_NUM_THREADS=1, as N machines would each run one), wall clock of
   each and the speedup; shard 0 alone, which is what each of N machines of its own would take
   (on a machine with fewer than N free CPUs, the N processes at once share them); then a check
   that the shards hold the one process's documents token for token (its documents stably sorted
   by shard, against the shards one after another, per split).

    python benchmarks/bench_prepare.py                         # the whole corpus (~6 minutes on 2 cores)
    python benchmarks/bench_prepare.py --files 12              # a quick check on the first 12 books
    python benchmarks/bench_prepare.py --shards-only --files 40 --shards 2   # the shards row alone
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus" / "es"
GPT2 = SHARED / "gpt2-tokenizer"
BLOCK_SIZE = 1024


def corpus_files(n: int | None) -> list[Path]:
    files = sorted(CORPUS.glob("*.txt"))
    return files[:n] if n else files


# --- the measured runs (each in its own process) ----------------------------------------------


def run_prepare(files: list[Path], out: Path, num_proc: int, copies: int, shard: str | None = None) -> dict:
    from gpt2es_cli.config import PrepareConfig
    from gpt2es_cli.data.prepare import prepare
    from gpt2es_cli.data.sources import FilesSource, Source

    class Copies(Source):
        """The files read `copies` times; each copy's documents end in a distinct marker."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = FilesSource("bench", files)
            self.name = f"{copies}x corpus"
            self.total_bytes = self.inner.total_bytes * copies

        def documents(self) -> Iterator[str]:
            for copy in range(copies):
                for doc in self.inner.documents():
                    self.position = self.inner.total_bytes * copy + self.inner.position
                    yield doc if copy == 0 else f"{doc.rstrip()} ({copy})"
            self.counts = self.inner.counts

        def describe(self) -> dict:
            return {"kind": "bench", "copies": copies}

    sampler = WorkerPeak()
    started = time.perf_counter()
    result = prepare(Copies(), PrepareConfig(out=out, tokenizer=str(GPT2), num_proc=num_proc, force=True, shard=shard))
    seconds = time.perf_counter() - started
    sampler.stop()
    return {
        "seconds": seconds,
        "tokens": result.tokens,
        "documents": result.hygiene.documents_kept,
        "main_rss_mb": vm_hwm_kb("self") / 1024,
        "worker_rss_mb": sampler.peak_kb / 1024,
    }


def run_encode_batch(files: list[Path], fast: bool) -> dict:
    """The tokenizer's own ceiling: the documents prepare reads (read beforehand, untimed) through
    `tokenizers.Tokenizer.encode_batch` (`fast`: `encode_batch_fast`, no offsets, the call prepare
    makes) in ~1 MB batches, with its own threads on every CPU, nothing else (no cleaning, hashing,
    splitting or writing). What prepare could reach at best."""
    from tokenizers import Tokenizer as RustTokenizer

    from gpt2es_cli.data.sources import FilesSource
    from gpt2es_cli.tokenizer import Tokenizer

    docs = list(FilesSource("bench", files).documents())
    batches, batch, size = [], [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= 1 << 20:
            batches.append(batch)
            batch, size = [], 0
    batches.append(batch)
    started = time.perf_counter()
    backend: RustTokenizer = Tokenizer.from_path(GPT2).backend
    encode = backend.encode_batch_fast if fast else backend.encode_batch
    tokens = sum(len(e.ids) + 1 for b in batches for e in encode(b, add_special_tokens=False))
    return {"seconds": time.perf_counter() - started, "tokens": tokens}


def vm_hwm_kb(pid: int | str) -> int:
    """Peak resident memory of one address space (reset at exec, unlike ru_maxrss, which also
    counts what the parent held when it forked)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return 0


class WorkerPeak:
    """Polls the peak RSS (VmHWM) of this process's children while they live."""

    def __init__(self, interval: float = 0.1) -> None:
        import threading

        self.peak_kb = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self.thread.start()

    def _children(self) -> list[str]:
        pids = []
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        return pids

    def _run(self, interval: float) -> None:
        while not self.done.wait(interval):
            for pid in self._children():
                self.peak_kb = max(self.peak_kb, vm_hwm_kb(pid))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def run_clm_way(files: list[Path], cache: Path, num_proc: int | None) -> dict:
    """transformers' examples/pytorch/language-modeling/run_clm.py, its data part."""
    from itertools import chain

    import datasets
    from transformers import GPT2TokenizerFast
    from transformers.utils import logging

    logging.set_verbosity_error()  # "sequence length is longer than the maximum" warnings
    datasets.disable_progress_bars()
    started = time.perf_counter()
    tokenizer = GPT2TokenizerFast.from_pretrained(str(GPT2))
    raw = datasets.load_dataset(
        "text", data_files={"train": [str(f) for f in files]}, cache_dir=str(cache), keep_linebreaks=True
    )
    tokenized = raw.map(lambda ex: tokenizer(ex["text"]), batched=True, num_proc=num_proc, remove_columns=["text"])

    def group_texts(examples: dict) -> dict:
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated["input_ids"]) // BLOCK_SIZE * BLOCK_SIZE
        result = {k: [t[i : i + BLOCK_SIZE] for i in range(0, total, BLOCK_SIZE)] for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    blocks = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": len(blocks["train"]) * BLOCK_SIZE}


def child(args: argparse.Namespace) -> None:
    files = corpus_files(args.files)
    if args.child == "shard":  # into a directory the parent reads afterwards
        print(json.dumps(run_prepare(files, Path(args.out), 1, 1, shard=args.shard)))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        if args.child == "prepare":
            result = run_prepare(files, work / "out", args.num_proc, args.copies)
        elif args.child in ("encode_batch", "encode_batch_fast"):
            result = run_encode_batch(files, fast=args.child == "encode_batch_fast")
        else:
            result = run_clm_way(files, work / "cache", args.num_proc if args.num_proc > 1 else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


# --- the report -------------------------------------------------------------------------------


def measure(kind: str, files: int | None, num_proc: int, copies: int = 1, repeat: int = 1) -> dict:
    """The fastest of `repeat` runs, each in a fresh process (the machine may be shared)."""
    cmd = [sys.executable, __file__, "--child", kind, "--num-proc", str(num_proc), "--copies", str(copies)]
    if files:
        cmd += ["--files", str(files)]
    runs = []
    for _ in range(repeat):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=None, help="only the first N books (default: all)")
    parser.add_argument("--repeat", type=int, default=2, help="time each method N times, keep the fastest")
    parser.add_argument("--shards", type=int, default=None, help="N for the shards row (default: one per CPU)")
    parser.add_argument("--shards-only", action="store_true", help="run the shards row alone")
    parser.add_argument("--child", choices=["prepare", "run_clm", "encode_batch", "encode_batch_fast", "shard"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if not (CORPUS.is_dir() and (GPT2 / "vocab.json").is_file()):
        sys.exit(f"needs {CORPUS} and {GPT2}")
    import os

    cpus = len(os.sched_getaffinity(0))
    files = corpus_files(args.files)
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"corpus: {len(files)} books, {mb:.1f} MB ({CORPUS}); tokenizer: GPT-2 ({GPT2}); {cpus} CPUs")
    if args.shards_only:
        shards_row(args.files, args.shards or cpus, mb)
        return
    print(f"each time: the fastest of {args.repeat} runs, each in a fresh process")
    print(f"{'method':<52}{'seconds':>9}{'MB/s':>8}{'tokens':>13}")
    n = args.repeat
    rows = [
        ("prepare, 1 process", measure("prepare", args.files, 1, repeat=n)),
        (f"prepare, {cpus} workers", measure("prepare", args.files, cpus, repeat=n)),
        ("run_clm way (datasets.map + group_texts), 1 process", measure("run_clm", args.files, 1, repeat=n)),
        (f"run_clm way, num_proc={cpus}", measure("run_clm", args.files, cpus, repeat=n)),
        (f"encode_batch alone (Rust tokenizer, {cpus} threads)", measure("encode_batch", args.files, cpus, repeat=n)),
        ("encode_batch_fast alone (no offsets; prepare's call)", measure("encode_batch_fast", args.files, cpus,
                                                                          repeat=n)),
    ]
    for name, r in rows:
        print(f"{name:<52}{r['seconds']:>9.1f}{mb / r['seconds']:>8.2f}{r['tokens']:>13,}")
    best_prepare = min(r["seconds"] for name, r in rows if name.startswith("prepare"))
    best_clm = min(r["seconds"] for name, r in rows if name.startswith("run_clm"))
    print(f"throughput, best prepare / best run_clm way: {best_clm / best_prepare:.2f}x (target >= 2x)")
    for name, r in rows[-2:]:
        print(f"best prepare / {name.split(' alone')[0]} alone: {r['seconds'] / best_prepare:.0%} of its "
              "throughput (target: within 10%, i.e. >= 90%)")

    one = measure("prepare", args.files, cpus, copies=1)
    four = measure("prepare", args.files, cpus, copies=4)
    print(f"peak RSS of prepare ({cpus} workers):")
    for name, r in (("1x", one), ("4x", four)):
        print(
            f"  {name}: main {r['main_rss_mb']:.0f} MB, largest worker {r['worker_rss_mb']:.0f} MB "
            f"({r['documents']:,} documents, {r['tokens']:,} tokens, {r['seconds']:.1f} s)"
        )
    ratio = four["main_rss_mb"] / one["main_rss_mb"]
    worker_ratio = four["worker_rss_mb"] / max(one["worker_rss_mb"], 1)
    print(f"  4x / 1x: main {ratio:.2f}x, worker {worker_ratio:.2f}x (target <= 1.2x)")
    shards_row(args.files, args.shards or cpus, mb)


def shards_row(files: int | None, count: int, mb: float) -> None:
    """One process against `count` shards prepared by `count` processes at once, then the check."""
    work = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    env = {**__import__("os").environ, "RAYON_NUM_THREADS": "1"}  # one CPU each, as one machine per shard
    base = [sys.executable, __file__] + (["--files", str(files)] if files else [])
    try:
        started = time.perf_counter()
        out = subprocess.run([*base, "--child", "shard", "--shard", "0/1", "--out", str(work / "one")], env=env,
                             check=True, capture_output=True, text=True).stdout
        one = time.perf_counter() - started
        one_inner = json.loads(out.strip().splitlines()[-1])["seconds"]
        out = subprocess.run([*base, "--child", "shard", "--shard", f"0/{count}", "--out", str(work / "alone")],
                             env=env, check=True, capture_output=True, text=True).stdout
        alone = json.loads(out.strip().splitlines()[-1])["seconds"]  # as on a machine of its own
        started = time.perf_counter()
        procs = [subprocess.Popen([*base, "--child", "shard", "--shard", f"{i}/{count}", "--out", str(work / "shards")],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]
        inner = []
        for p in procs:
            stdout, stderr = p.communicate()
            if p.returncode != 0:
                sys.exit(f"a shard failed: {stderr[-2000:]}")
            inner.append(json.loads(stdout.strip().splitlines()[-1])["seconds"])
        many = time.perf_counter() - started
        same = shards_equal(work / "one" / "shard-0000-of-0001", work / "shards", count)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("shards (prepare --shard I/N, each process on one CPU, wall clock):")
    print(f"  1 process:                 {one:>7.1f} s {mb / one:>7.2f} MB/s   (prepare itself {one_inner:.1f} s)")
    print(f"  {count} shards, {count} processes:   {many:>7.1f} s {mb / many:>7.2f} MB/s   speedup {one / many:.2f}x "
          f"(prepare itself {min(inner):.1f}-{max(inner):.1f} s a shard)")
    print(f"  shard 0 of {count} alone:        {alone:>7.1f} s, {alone / one_inner:.0%} of the 1 process's prepare "
          f"(on {count} machines of their own, each shard's time)")
    print(f"  the shards hold the 1 process's documents token for token (train and val): {'yes' if same else 'NO'}")


def shards_equal(whole: Path, shards: Path, count: int) -> bool:
    """Whether the shards, one after another, hold `whole`'s documents stably sorted by their shard."""
    import numpy as np

    from gpt2es_cli.data.clean import digest
    from gpt2es_cli.data.dataset import PreparedDataset
    from gpt2es_cli.data.shards import open_dataset

    one, merged = PreparedDataset.open(whole), open_dataset(shards)
    tok = one.tokenizer()
    for split in ("train", "val"):
        tokens = np.asarray(one.tokens(split))
        docs = np.split(tokens, np.flatnonzero(tokens == tok.eos_id)[:-1] + 1) if len(tokens) else []
        owner = [digest(tok.decode(d[:-1].tolist()).encode("utf-8")) % count for d in docs]
        order = sorted(range(len(docs)), key=owner.__getitem__)
        expected = np.concatenate([docs[i] for i in order]) if docs else tokens
        parts = [np.asarray(p.tokens(split)) for p in getattr(merged, "parts", [merged])]
        if not np.array_equal(expected, np.concatenate(parts)):
            return False
    return True


if __name__ == "__main__":
    main()
