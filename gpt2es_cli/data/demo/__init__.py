"""The built-in `demo` corpus: simple Spanish children's tales, generated on the fly.

Every word here (the vocabulary lists, characters, places, objects, plots and sentence
patterns) is original text written for gpt2es; nothing is copied from any book. It gives
`gpt2es prepare --dataset demo` a corpus that needs no download, made for a small model to
learn fast: about 1,500 distinct words, five plots (a cure to fetch, a dream to fulfil, a
lost treasure, a new friend, a village in trouble) and many interchangeable sentences per
step, so a 6-layer GPT-2 trained for minutes on a CPU writes little stories from "Había una vez".

Grammar is built in rather than hoped for: noun phrases agree (grammar.py), gender-dependent
words, wording choices and contractions are resolved by the pattern language (patterns.py), the
word tables are in lexicon.py, the shared journey in journey.py, and the plots in plots.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from gpt2es_cli.config import DEMO_MAX_BYTES
from gpt2es_cli.data.demo.patterns import Tale
from gpt2es_cli.data.demo.plots import draw_story
from gpt2es_cli.errors import DataError

__all__ = ["MAX_CHARS", "MIN_CHARS", "generate_stories", "generate_tales"]

MIN_CHARS, MAX_CHARS = 400, 1500
"""Every tale has between MIN_CHARS and MAX_CHARS characters."""


def generate_stories(seed: int = 0) -> Iterator[tuple[str, Tale]]:
    """Yield (text, Tale) for ever: every tale `generate_tales` yields for this seed, in order, with
    what was told in it (its slots, plot and ending; the demo instruction set asks about them)."""
    rng = random.Random(seed)
    while True:
        story = draw_story(rng)
        text = story.text()
        while not MIN_CHARS <= len(text) <= MAX_CHARS:
            story = draw_story(rng)
            text = story.text()
        yield text, story


def generate_tales(seed: int = 0, max_bytes: int | None = DEMO_MAX_BYTES,
                   max_docs: int | None = None) -> Iterator[str]:
    """Yield tales (paragraphs joined by "\\n"), the same ones for the same seed.

    Stops once the tales yielded reach `max_bytes` UTF-8 bytes (the last one may go past it)
    or after `max_docs` tales; with both None it never stops.
    """
    for name, value in (("max_bytes", max_bytes), ("max_docs", max_docs)):
        if value is not None and value < 0:
            raise DataError(f"{name} must be >= 0, got {value}: pass a size or leave it unset")
    total = docs = 0
    stories = generate_stories(seed)
    while (max_bytes is None or total < max_bytes) and (max_docs is None or docs < max_docs):
        tale, _ = next(stories)
        total += len(tale.encode("utf-8"))
        docs += 1
        yield tale
