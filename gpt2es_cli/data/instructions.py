"""`prepare --format instructions`: instruction examples -> a prepared dataset with a loss mask.

Examples come from .jsonl / .json files (.gz and .zst too; a directory or glob of them), a Hub
dataset (its rows), or `demo` (questions about the demo tales, data/demo/questions.py). Each record
is one JSON object in either of two formats, detected record by record:

    {"instruction": "...", "input": "...", "output": "..."}      Alpaca-style; input optional
                                                                 (and an optional "system")
    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

An Alpaca record is the conversation user: instruction (+ a blank line + input), assistant:
output. Every text is cleaned as documents are (data/clean.py), and chat markers typed into it
are removed. A record that is not an object, lacks a field, has an empty answer or, once
tokenized, is longer than --context is counted by kind (`ExampleCounts`) and skipped; --strict
stops at the first with a one-line error naming its line.

The tokenizer: with --tokenizer train, a byte-level BPE trained on the training split's
conversations written in ChatML, whose markers <|im_start|> and <|im_end|> become special tokens;
with any other --tokenizer (a pretrained model's), its vocabulary as it is, and the text-marker
template, whose answers end with <|endoftext|> (chat.py). The dataset's tokenizer carries the
template, so a model trained on it does too.

Each conversation is rendered and tokenized with its loss mask (1 on the answers' tokens), exact
duplicates are dropped, and each goes to train or validation by a keyed hash of its text (as
documents do). The examples of a split are written one after another: a training window packs
several, each starting with <|endoftext|> (one that begins with the <|endoftext|> the previous
one ended with shares it), and the mask says which targets are learned.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpt2es_cli.chat import CHAT_MARKERS, CHATML, ROLES, encode_chats, end_of_turn_id, render, template_for
from gpt2es_cli.chat import template_name as name_of_template
from gpt2es_cli.config import DEMO_MAX_BYTES, PrepareConfig, parse_weighted
from gpt2es_cli.data.clean import HygieneCounts, decode_utf8, digest, normalize, split_score
from gpt2es_cli.data.dataset import DatasetWriter, check_output_dir
from gpt2es_cli.data.dataset_tokenizer import load_tokenizer
from gpt2es_cli.data.passes import PrepareProgress, ProgressCallback
from gpt2es_cli.data.prepare import PrepareResult
from gpt2es_cli.data.readers import MAX_DOC_CHARS, OpenFile, format_of
from gpt2es_cli.data.sources import DemoSource, FilesSource, HubSource, resolve_source
from gpt2es_cli.errors import ConfigError, DataError
from gpt2es_cli.tokenizer import Tokenizer

__all__ = ["PROBLEMS", "ExampleCounts", "conversation", "prepare_instructions"]

PROBLEMS = ("not_an_object", "missing_field", "bad_messages", "empty_answer", "too_long")
"""The kinds of bad examples, as ExampleCounts fields."""
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
BATCH_EXAMPLES = 256
"""Examples rendered and tokenized together."""


@dataclass
class ExampleCounts:
    """What `prepare --format instructions` read, kept and skipped (meta.json's `instructions.examples`)."""

    read: int = 0
    """Records read (blank lines aside)."""
    alpaca: int = 0
    """Of them, Alpaca-style records ({instruction, input, output})."""
    messages: int = 0
    """Conversations ({messages: [...]})."""
    not_an_object: int = 0
    """Lines that are not JSON, or JSON that is not an object."""
    missing_field: int = 0
    """Records without the fields of either format, or with a field that is not text."""
    bad_messages: int = 0
    """A `messages` that is not a list of {role, content} with a known role and text content."""
    empty_answer: int = 0
    """An answer that is empty after cleaning, or a conversation with no answer."""
    too_long: int = 0
    """Examples with more tokens than --context."""
    duplicates: int = 0
    """Exact duplicates of an earlier example, dropped."""
    kept: int = 0
    """Examples written (both splits)."""

    @property
    def bad(self) -> int:
        return sum(getattr(self, kind) for kind in PROBLEMS)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Problem:
    """Why a record cannot be used."""

    kind: str
    """One of PROBLEMS."""
    detail: str
    """What is wrong, in words: "has no 'output' field"."""


@dataclass(frozen=True)
class _Record:
    where: str
    """Where it was read, for messages: "alpaca.jsonl line 12"."""
    value: Any
    """The parsed JSON value, or a Problem when the line is not JSON."""
    nbytes: int


# --- records to conversations -----------------------------------------------------------------


def _clean(text: str) -> str:
    """A message's text cleaned as documents are, with typed chat markers removed (they would
    open or close turns of their own)."""
    text, _ = normalize(text)
    for marker in CHAT_MARKERS:
        if marker in text:
            text = text.replace(marker, "").strip(" \n")
    return text


def conversation(value: Any) -> tuple[list[dict[str, str]], str] | Problem:
    """A record as a conversation (its messages, cleaned, and its format: 'alpaca' or 'messages'),
    or the Problem that keeps it from being one."""
    if isinstance(value, Problem):
        return value
    if not isinstance(value, dict):
        return Problem("not_an_object", f"is a JSON {type(value).__name__}, not an object")
    if "messages" in value:
        return _from_messages(value["messages"])
    if "instruction" in value or "output" in value:
        return _from_alpaca(value)
    keys = ", ".join(map(str, list(value)[:6])) or "none"
    return Problem("missing_field", f"has neither 'messages' nor 'instruction' and 'output' (its fields: {keys})")


def _from_alpaca(record: dict[str, Any]) -> tuple[list[dict[str, str]], str] | Problem:
    texts = {}
    for key, required in (("instruction", True), ("output", True), ("input", False), ("system", False)):
        value = record.get(key)
        if value is None:
            if required:
                return Problem("missing_field", f"has no {key!r} field")
            value = ""
        if not isinstance(value, str):
            return Problem("missing_field", f"its {key!r} is a {type(value).__name__}, not text")
        texts[key] = _clean(value)
    if not texts["output"]:
        return Problem("empty_answer", "its answer ('output') is empty")
    if not texts["instruction"]:
        return Problem("missing_field", "its 'instruction' is empty")
    user = texts["instruction"] + (f"\n\n{texts['input']}" if texts["input"] else "")
    messages = [{"role": "system", "content": texts["system"]}] if texts["system"] else []
    return [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": texts["output"]}], "alpaca"


def _from_messages(raw: Any) -> tuple[list[dict[str, str]], str] | Problem:
    if not isinstance(raw, list) or not raw:
        return Problem("bad_messages", "its 'messages' is not a list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return Problem("bad_messages", f"message {i} is not a {{role, content}} object")
        if m["role"] not in ROLES:
            return Problem("bad_messages", f"message {i} has role {m['role']!r} (use {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            return Problem("bad_messages", f"the content of message {i} is a {type(m['content']).__name__}, not text")
        content = _clean(m["content"])
        if m["role"] == "assistant" and not content:
            return Problem("empty_answer", f"message {i} (an answer) is empty")
        messages.append({"role": m["role"], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        return Problem("empty_answer", "it has no assistant message: nothing to learn")
    return messages, "messages"


# --- reading ----------------------------------------------------------------------------------


class _Reader:
    """The records of --dataset, up to --max-docs / --max-bytes; each pass starts over."""

    def __init__(self, options: PrepareConfig):
        self.options = options
        self.sources = [self._resolve(value) for value in options.dataset]
        self.total_bytes = sum(self._file_bytes(s) for s in self.sources) or None
        self.records = self.bytes = 0
        self.done_bytes = 0
        self._file: OpenFile | None = None
        self.started = time.perf_counter()

    def _resolve(self, value: str) -> Any:
        name, weight = parse_weighted(value)
        if weight is not None:
            raise ConfigError(f"--dataset {value}: --format instructions reads its sources one after another, "
                              "without weights: drop the ':WEIGHT'")
        source = resolve_source(name, subset=self.options.subset, split=self.options.split, seed=self.options.seed)
        if isinstance(source, FilesSource):
            bad = [p for p in source.files if not _is_json_file(p)]
            if bad:
                raise DataError(f"{bad[0]}: --format instructions reads JSON Lines (.jsonl) or JSON (.json) files, "
                                "one example object each (.gz/.zst ok)")
        elif not isinstance(source, (DemoSource, HubSource)):
            raise DataError(f"{name}: --format instructions reads .jsonl or .json files, a Hub dataset or demo")
        return source

    @staticmethod
    def _file_bytes(source: Any) -> int:
        return int(source.total_bytes or 0) if isinstance(source, FilesSource) else 0

    def __iter__(self) -> Iterator[_Record]:
        self.records = self.bytes = self.done_bytes = 0
        self.started = time.perf_counter()
        cap_docs, cap_bytes = self.options.max_docs, self.options.max_bytes
        if cap_bytes is None and all(isinstance(s, DemoSource) for s in self.sources):
            cap_bytes = DEMO_MAX_BYTES
        for source in self.sources:
            for record in self._read(source):
                if (cap_docs is not None and self.records >= cap_docs) or (
                    cap_bytes is not None and self.bytes >= cap_bytes
                ):
                    return
                self.records += 1
                self.bytes += record.nbytes
                yield record

    def _read(self, source: Any) -> Iterator[_Record]:
        if isinstance(source, DemoSource):
            from gpt2es_cli.data.demo.questions import generate_examples

            for i, example in enumerate(generate_examples(self.options.seed), 1):
                yield _Record(f"demo example {i}", example, len(json.dumps(example, ensure_ascii=False).encode()))
        elif isinstance(source, HubSource):
            for i, row in enumerate(source.rows(), 1):
                yield _Record(f"{source.name} row {i}", row, len(json.dumps(row, ensure_ascii=False, default=str).encode()))
        else:
            for path in source.files:
                yield from self._read_file(path)
                self.done_bytes += path.stat().st_size

    def _read_file(self, path: Path) -> Iterator[_Record]:
        _, compression = format_of(path)
        try:
            raw = open(path, "rb")
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None
        try:
            self._file = file = OpenFile(path, raw, compression, "line", None, HygieneCounts())
            lines = file.byte_lines()
            head: list[bytes] = []
            for line in lines:
                head.append(line)
                if line.strip():
                    break
            array = _json_suffix(path) == ".json" and head and head[-1].lstrip().startswith(b"[")
            if array:  # a .json file holding an array of records (Alpaca's own files)
                text, _ = decode_utf8(b"".join([*head, *lines]))
                try:
                    records = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): fix it, or "
                                    "write one example a line (JSON Lines)") from None
                for i, value in enumerate(records, 1):
                    yield _Record(f"{path} record {i}", value, len(json.dumps(value, ensure_ascii=False).encode()))
                return
            number = 0
            for chunk in (head, lines):
                for line in chunk:
                    number += 1
                    if not line.strip():
                        continue
                    yield _Record(f"{path} line {number}", _parse(line), len(line))
        except (OSError, EOFError, ValueError) as e:  # bad gzip / zstd, truncated files
            raise DataError(f"cannot read {path}: {type(e).__name__}: {e} (is the file damaged?)") from None
        finally:
            self._file = None
            raw.close()

    def progress(self, phase: str, tokens: int = 0) -> PrepareProgress:
        parts = []
        if self.total_bytes:
            parts.append((self.done_bytes + (self._file.offset() if self._file else 0)) / self.total_bytes)
        if self.options.max_docs:
            parts.append(self.records / self.options.max_docs)
        cap_bytes = self.options.max_bytes or (DEMO_MAX_BYTES if all(isinstance(s, DemoSource) for s in self.sources)
                                               else None)
        if cap_bytes:
            parts.append(self.bytes / cap_bytes)
        fraction = min(1.0, max(parts)) if parts else None
        return PrepareProgress(phase, self.records, self.bytes, tokens, time.perf_counter() - self.started, fraction)

    def describe(self) -> dict[str, Any]:
        return {"kind": "instructions", "name": ", ".join(self.options.dataset),
                "sources": [s.describe() for s in self.sources]}


def _json_suffix(path: Path) -> str | None:
    """'.jsonl', '.ndjson' or '.json' for such a file (compressed or not), else None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst", ".zstd"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in JSON_SUFFIXES else None


def _is_json_file(path: Path) -> bool:
    return _json_suffix(path) is not None


def _parse(line: bytes) -> Any:
    text, _ = decode_utf8(line)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if len(line) >= MAX_DOC_CHARS:
            return Problem("not_an_object", f"is longer than {MAX_DOC_CHARS // 2**20} MB: not read")
        return Problem("not_an_object", f"is not JSON ({e.msg})")


@dataclass
class _Example:
    where: str
    messages: list[dict[str, str]]
    kind: str
    digest: int
    score: float
    nbytes: int


def _examples(reader: _Reader, options: PrepareConfig, counts: ExampleCounts | None) -> Iterator[_Example]:
    """The usable examples of a pass, bad records counted in `counts` (or --strict raising)."""
    for record in reader:
        if counts is not None:
            counts.read += 1
        result = conversation(record.value)
        if isinstance(result, Problem):
            _bad(record.where, result, options, counts)
            continue
        messages, kind = result
        if counts is not None:
            setattr(counts, kind, getattr(counts, kind) + 1)
        key = digest(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
        nbytes = sum(len(m["content"].encode("utf-8")) for m in messages)
        yield _Example(record.where, messages, kind, key, split_score(key, options.seed), nbytes)


def _bad(where: str, problem: Problem, options: PrepareConfig, counts: ExampleCounts | None) -> None:
    if options.strict:
        raise DataError(f"{where} {problem.detail} (--strict stops at the first bad example; "
                        "without it, bad examples are counted and skipped)")
    if counts is not None:
        setattr(counts, problem.kind, getattr(counts, problem.kind) + 1)


# --- tokenizer --------------------------------------------------------------------------------


def _choose_tokenizer(reader: _Reader, options: PrepareConfig, report: ProgressCallback) -> tuple[Tokenizer, dict]:
    """--tokenizer's tokenizer with the chat template it needs (see the module docstring)."""
    tokenizer, info = load_tokenizer(options.tokenizer, options.tokenizer_revision)
    if tokenizer is not None:
        return tokenizer.with_chat_template(template_for(tokenizer)), info
    fed = {"documents": 0, "bytes": 0}
    seen = ExampleCounts()  # for the message when no example is usable

    def texts() -> Iterator[str]:
        for example in _examples(reader, options, seen):
            if example.score >= options.val_fraction:  # the training split's only, as for text
                text = render(CHATML, example.messages).text
                fed["documents"] += 1
                fed["bytes"] += len(text.encode("utf-8"))
                yield text
                if fed["documents"] % BATCH_EXAMPLES == 0:
                    report(reader.progress("sample"))
            if fed["bytes"] >= options.tokenizer_sample_bytes:
                break
        report(PrepareProgress("train", fed["documents"], fed["bytes"], 0, time.perf_counter() - reader.started, None))

    tokenizer = Tokenizer.train(texts(), vocab_size=options.vocab_size, special_tokens=CHAT_MARKERS)
    if fed["documents"] == 0:
        raise _no_example(", ".join(options.dataset), seen, " in its training split")
    info = {
        "origin": "trained",
        "vocab_size": tokenizer.vocab_size,
        "requested_vocab_size": options.vocab_size,
        "trained_on_documents": fed["documents"],
        "trained_on_bytes": fed["bytes"],
    }
    return tokenizer.with_chat_template(CHATML), info


# --- writing ----------------------------------------------------------------------------------


@dataclass
class _Held:
    ids: np.ndarray
    mask: np.ndarray
    nbytes: int
    score: float


@dataclass
class _Packer:
    """Deduplicate, split and write tokenized examples (see the module docstring). Validation must
    not end up empty: until a validation example appears, the training example with the lowest
    score is held back, and at the end it goes to validation if that is still empty."""

    writer: DatasetWriter
    options: PrepareConfig
    counts: ExampleCounts
    eos: int
    seen: set[int] = field(default_factory=set)
    held: _Held | None = None

    def add(self, examples: list[_Example], encoded: list[tuple[list[int], np.ndarray]]) -> None:
        for example, (ids, mask) in zip(examples, encoded, strict=True):
            if len(ids) > self.options.context:
                detail = f"is {len(ids)} tokens long, more than --context {self.options.context}"
                _bad(example.where, Problem("too_long", detail), self.options, self.counts)
                continue
            if self.options.dedup:
                if example.digest in self.seen:
                    self.counts.duplicates += 1
                    continue
                self.seen.add(example.digest)
            tokens = np.asarray(ids, dtype=np.int64)
            if example.score < self.options.val_fraction:
                self._release("train")
                self._write("val", tokens, mask, example.nbytes)
            elif self.writer.splits["val"].documents == 0 and (self.held is None or example.score < self.held.score):
                self._release("train")
                self.held = _Held(tokens, mask, example.nbytes, example.score)
            else:
                self._write("train", tokens, mask, example.nbytes)

    def _write(self, split: str, ids: np.ndarray, mask: np.ndarray, nbytes: int) -> None:
        if len(ids) and ids[0] == self.eos and self.writer.splits[split].last_id == self.eos:
            ids, mask = ids[1:], mask[1:]  # the previous example's closing <|endoftext|> opens this one
        self.writer.write(split, ids, documents=1, nbytes=nbytes, mask=mask)
        self.counts.kept += 1

    def _release(self, split: str) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            self._write(split, held.ids, held.mask, held.nbytes)

    def finish(self, name: str) -> None:
        """Place the held example, end each split with <|endoftext|>, check both splits have examples."""
        self._release("val" if self.writer.splits["val"].documents == 0 else "train")
        for split in ("train", "val"):
            last = self.writer.splits[split].last_id
            if last is not None and last != self.eos:  # as every document of a dataset, the last one ends with it
                self.writer.write(split, np.array([self.eos]), documents=0, mask=np.zeros(1, dtype=np.uint8))
        c = self.counts
        if c.kept == 0:
            raise _no_example(name, c)
        if c.kept == 1:
            raise DataError(f"{name} has only 1 usable example: at least 2 are needed (one for validation)")
        if self.writer.splits["train"].documents == 0:
            raise DataError(f"all {c.kept} examples went to validation: lower --val-fraction ({self.options.val_fraction})")


def _no_example(name: str, c: ExampleCounts, where: str = "") -> DataError:
    """The error for a source with no usable example, saying what its records were."""
    found = [f"{getattr(c, k)} {k.replace('_', ' ')}" for k in PROBLEMS if getattr(c, k)]
    found += [f"{c.duplicates} duplicates"] if c.duplicates else []
    return DataError(f"{name} has no usable example{where}: of {c.read} records, {', '.join(found) or 'none is one'} "
                     "(the formats: gpt2es prepare --help)")


def prepare_instructions(options: PrepareConfig, on_progress: ProgressCallback | None = None) -> PrepareResult:
    """Turn instruction examples into a prepared dataset with a loss mask at `options.output_dir`
    (see the module docstring); the summary's counts are meta.json's `instructions`."""
    options.validate()
    out = options.output_dir
    check_output_dir(out, options.force)  # before any long work; DatasetWriter checks again
    started = time.perf_counter()
    report = on_progress or (lambda p: None)
    reader = _Reader(options)
    tokenizer, tokenizer_info = _choose_tokenizer(reader, options, report)
    counts = ExampleCounts()
    tokenize_started = time.perf_counter()
    name = ", ".join(options.dataset)
    with DatasetWriter(out, tokenizer, force=options.force, masked=True) as writer:
        packer = _Packer(writer, options, counts, tokenizer.eos_id)
        batch: list[_Example] = []
        for example in _examples(reader, options, counts):
            batch.append(example)
            if len(batch) == BATCH_EXAMPLES:
                packer.add(batch, encode_chats(tokenizer, [e.messages for e in batch]))
                batch = []
                report(reader.progress("tokenize", _written(writer)))
        if batch:
            packer.add(batch, encode_chats(tokenizer, [e.messages for e in batch]))
        report(reader.progress("tokenize", _written(writer)))
        packer.finish(name)
        splits = writer.splits
        template = tokenizer.chat_template
        meta = writer.finish({
            "source": reader.describe(),
            "tokenizer": tokenizer_info,
            "instructions": {
                "template": name_of_template(template),
                "end_of_turn": tokenizer.decode([end_of_turn_id(tokenizer)]),
                "context": options.context,
                "examples": counts.to_dict(),
                "scored_fraction": round(sum(s.scored for s in splits.values()) / max(1, _written(writer)), 4),
            },
            "seed": options.seed,
            "val_fraction": options.val_fraction,
            "arguments": options.to_dict(),
            "prepare_seconds": round(time.perf_counter() - started, 2),
        })
    done = time.perf_counter()
    hygiene = HygieneCounts(documents_read=counts.read, documents_kept=counts.kept, duplicates=counts.duplicates)
    return PrepareResult(out, meta, hygiene, done - started, done - tokenize_started, 1)


def _written(writer: DatasetWriter) -> int:
    return sum(f.tokens for f in writer.splits.values())
