"""Text hygiene: decode, normalise, fingerprint and deduplicate documents.

Every document goes through `normalize` before it is tokenized:
Unicode NFC, line breaks as "\\n", control characters removed, runs of spaces and tabs as one
space, no spaces at line ends, at most one blank line in a row, no blank edges, and no literal
`<|endoftext|>` (the document separator). Exact duplicates
are found by a 64-bit digest of the normalised text, kept in a `DigestSet` (8 bytes a document).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

import numpy as np

from gpt2es_cli.tokenizer import EOS_TOKEN

# Control characters (C0, DEL, C1) and the byte-order mark are dropped; "\n" and "\t" are kept
# here ("\t" becomes a space below). "\r" is handled before, as a line break.
_DROP = {c: None for c in [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0), 0xFEFF]}
_DROP_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in _DROP) + "]")
# Horizontal white space other than " ": tab, no-break space, the U+2000 block, ideographic space...
_SPACES = "\t\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_TO_SPACE = str.maketrans({c: " " for c in _SPACES} | {"\u2028": "\n", "\u2029": "\n"})
_ODD_WS_RE = re.compile("[" + _SPACES + "\u2028\u2029]")
_RUN_OF_SPACES = re.compile(" {2,}")
_SPACE_AT_LINE_EDGE = re.compile(" *\n *")
_BLANK_LINES = re.compile("\n{3,}")


def normalize(text: str) -> tuple[str, int]:
    """Return the cleaned text and how many control characters were removed.

    Each step runs only when a cheap test says it has something to do: most documents are
    already clean, and this runs once per document of a corpus that may be 50 GB.
    """
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    removed = 0
    if _DROP_RE.search(text):
        before = len(text)
        text = text.translate(_DROP)
        removed = before - len(text)
    if _ODD_WS_RE.search(text):
        text = text.translate(_TO_SPACE)
    if "  " in text:
        text = _RUN_OF_SPACES.sub(" ", text)
    if " \n" in text or "\n " in text:
        text = _SPACE_AT_LINE_EDGE.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    if EOS_TOKEN in text:  # literal separators would end a document in the middle
        text = text.replace(EOS_TOKEN, "")
    return text.strip(" \n"), removed


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing undecodable bytes with U+FFFD; return the text and how many
    replacements were made (not counting U+FFFD characters that were already in the text)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count(b"\xef\xbf\xbd")


def digest(data: bytes) -> int:
    """A 64-bit fingerprint of a (normalised, UTF-8 encoded) document, never 0."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1


def split_score(doc_digest: int, seed: int) -> float:
    """Where a document falls in [0, 1) for the train/validation split (validation when below
    --val-fraction): a keyed hash of its content, so it is the same in every pass and every
    process and depends only on the text and the seed."""
    key = seed.to_bytes(8, "little", signed=True)
    h = hashlib.blake2b(doc_digest.to_bytes(8, "little"), digest_size=8, key=key).digest()
    return int.from_bytes(h, "little") / 2**64


class DigestSet:
    """An exact set of 64-bit digests in 8 bytes each (numpy), for deduplicating huge corpora.

    New digests arrive in batches; each batch becomes a sorted run, and runs of similar size
    are merged (like a binary counter), so there are at most ~log2(n) runs to search. A Python
    set would need ~60 bytes a document: 3 GB for 50 million documents instead of 400 MB.
    """

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add_batch(self, digests: list[int] | np.ndarray) -> np.ndarray:
        """Add digests; return a bool mask, True where a digest was not seen before (only its
        first occurrence within the batch counts as new)."""
        values = np.asarray(digests, dtype=np.uint64)
        is_new = np.zeros(len(values), dtype=bool)
        if len(values) == 0:
            return is_new
        unique, first = np.unique(values, return_index=True)
        fresh = np.ones(len(unique), dtype=bool)
        for run in self._runs:
            pos = np.minimum(np.searchsorted(run, unique), len(run) - 1)
            fresh &= run[pos] != unique
        is_new[first[fresh]] = True
        if fresh.any():
            self._push(unique[fresh])
        return is_new

    def _push(self, run: np.ndarray) -> None:
        self._runs.append(run)
        self._size += len(run)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            b, a = self._runs.pop(), self._runs.pop()
            merged = np.concatenate([a, b])
            merged.sort(kind="stable")  # timsort: two sorted runs merge in linear time
            self._runs.append(merged)


@dataclass
class HygieneCounts:
    """What text hygiene did, summed over the whole source."""

    documents_read: int = 0
    """Documents taken from the source (after --max-docs / --max-bytes)."""
    documents_kept: int = 0
    empty: int = 0
    """Nothing left after cleaning."""
    too_short: int = 0
    """Shorter than --min-chars after cleaning."""
    duplicates: int = 0
    """Exact copies (after cleaning) of an earlier document."""
    undecodable_bytes: int = 0
    """Byte sequences that were not UTF-8, replaced with U+FFFD."""
    control_chars_removed: int = 0
    skipped_records: int = 0
    """Records with no text (null or not a string, or unparseable lines after the first)."""
    long_documents_split: int = 0
    """Documents longer than the per-document cap, cut at line breaks into pieces."""

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
