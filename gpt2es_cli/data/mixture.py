"""Mixtures: several sources interleaved by weight into one `Source` (repeated --dataset SRC:WEIGHT).

`open_sources` turns a PrepareConfig's --dataset values into the Source to prepare: one source,
or a `MixtureSource` of several.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields as dataclass_fields
from typing import Any

from gpt2es_cli.config import parse_weighted
from gpt2es_cli.data.clean import HygieneCounts
from gpt2es_cli.data.sources import Source, resolve_source
from gpt2es_cli.errors import ConfigError

__all__ = ["MixtureSource", "mixture_weights", "open_sources"]


def open_sources(options: Any) -> Source:
    """The Source of a PrepareConfig's --dataset: one source, or a MixtureSource of several
    (SRC:WEIGHT each), every one resolved with the same --subset, --split, --text-column, ..."""
    def one(name: str) -> Source:
        return resolve_source(
            name, subset=options.subset, split=options.split, text_column=options.text_column,
            txt_mode=options.txt_mode, seed=options.seed, max_bytes=options.max_bytes, max_docs=options.max_docs,
        )

    if len(options.dataset) == 1 and parse_weighted(options.dataset[0])[1] is None:
        return one(options.dataset[0])
    parts = mixture_weights(options.dataset)
    if len(parts) == 1:
        return one(parts[0][0])
    return MixtureSource([(one(name), weight) for name, weight in parts])


def mixture_weights(values: Sequence[str]) -> list[tuple[str, float]]:
    """The sources of repeated --dataset SRC[:WEIGHT] options with their shares (summing to 1).
    Either every source has a weight or none has (then each gets the same share)."""
    parsed = [parse_weighted(v) for v in values]
    weights = [w for _, w in parsed]
    if any(w is None for w in weights) and any(w is not None for w in weights) and len(parsed) > 1:
        missing = ", ".join(n for n, w in parsed if w is None)
        raise ConfigError(f"--dataset: give every source a weight or none ({missing} has none), e.g. -d {missing}:0.2")
    names = [n for n, _ in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--dataset {dupes[0]} is given twice: give each source once, with its weight")
    total = sum(w or 1.0 for w in weights)
    return [(n, (w or 1.0) / total) for n, w in parsed]


class MixtureSource(Source):
    """Several sources interleaved deterministically in given proportions of bytes.

    Each next document comes from the source furthest behind its share (the lowest bytes taken /
    weight; the first such on a tie), so at any point every source has given about its share of
    the bytes so far, and a --max-bytes cap on the total splits it by the weights. A source that
    runs out is recorded (`exhausted_at`: the total bytes taken when it did) and the others go on
    in their own proportions to each other; nothing is repeated. (In the terms of
    `datasets.interleave_datasets`: probabilities by bytes instead of by documents, and a
    stopping strategy of all sources exhausted, without oversampling.)
    """

    def __init__(self, parts: Sequence[tuple[Source, float]]):
        self.parts = [p for p, _ in parts]
        super().__init__()
        self.weights = [w for _, w in parts]
        self.name = " + ".join(p.name for p in self.parts)
        totals = [p.total_bytes for p in self.parts]
        self.total_bytes = None if any(t is None for t in totals) else sum(t for t in totals if t is not None)
        self._reset()

    def _reset(self) -> None:
        n = len(self.parts)
        self.taken_documents, self.taken_bytes = [0] * n, [0] * n
        self.exhausted_at: list[int | None] = [None] * n
        self.last = 0
        """Which source the document just yielded came from."""

    def small(self) -> bool:
        return all(p.small() for p in self.parts)

    def documents(self) -> Iterator[str]:
        self._reset()
        streams = [p.documents() for p in self.parts]
        live = list(range(len(streams)))
        while live:
            i = min(live, key=lambda j: (self.taken_bytes[j] / self.weights[j], j))
            try:
                doc = next(streams[i])
            except StopIteration:
                live.remove(i)
                self.exhausted_at[i] = sum(self.taken_bytes)
                continue
            self.taken_documents[i] += 1
            self.taken_bytes[i] += len(doc.encode("utf-8"))
            self.position = sum(p.position for p in self.parts)
            self.last = i
            yield doc

    @property  # type: ignore[override]
    def counts(self) -> HygieneCounts:
        """What the sources' readers counted, summed."""
        return _summed([p.counts for p in self.parts])

    @counts.setter
    def counts(self, value: HygieneCounts) -> None:
        pass  # each source counts its own

    def describe(self) -> dict[str, Any]:
        parts = []
        for i, part in enumerate(self.parts):
            parts.append({
                "weight": round(self.weights[i], 6),
                "source": part.describe(),
                "read": {"documents": self.taken_documents[i], "bytes": self.taken_bytes[i]},
                "ran_out": self.exhausted_at[i] is not None,
                "ran_out_after_bytes": self.exhausted_at[i],
            })
        return {"kind": "mixture", "name": self.name, "policy": "by bytes; a source that runs out is left out, the "
                "others go on in their proportions", "bytes": self.total_bytes, "parts": parts}


def _summed(counts: list[HygieneCounts]) -> HygieneCounts:
    total = HygieneCounts()
    for c in counts:
        for f in dataclass_fields(c):
            setattr(total, f.name, getattr(total, f.name) + getattr(c, f.name))
    return total
