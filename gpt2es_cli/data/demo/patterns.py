"""The pattern language a tale is written in, and the `Tale` that expands it into finished Spanish.

A pattern is a sentence with three kinds of marks, resolved in this order:
- `[role:masc|fem]`: the masculine or feminine word, by the gender of the character cast in
  that role ("[hero:colorado|colorada]");
- `<a|b|c>`: one of the wordings, drawn at random;
- `{slot}`: the value filled into that slot ("{hero}", the hero's name); `{slot:cap}` writes it
  with a capital letter. Slots are named for what they hold; `<name>_intro` is the phrase that first
  brings a character or thing in ("una tortuga vieja"), `<name>` the one that names it later
  ("la tortuga").
When the tale is done, "de el"/"a el" contract to "del"/"al" and "y"/"o" become "e"/"u" before
the sounds that ask for it.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Sequence

_GENDER = re.compile(r"\[(\w+):([^|\]]*)\|([^\]]*)\]")
_CHOICE = re.compile(r"<([^<>]*)>")
_CONTRACT = re.compile(r"\b([Dd]e|[Aa]) el\b")
_Y_TO_E = re.compile(r"\by (?=[iIíÍ]|[hH][iIíÍ](?![aeoáéó]))")
_O_TO_U = re.compile(r"\bo (?=[oOóÓ]|[hH][oOóÓ])")


def capitalize(text: str) -> str:
    """The text with its first letter in upper case (leading punctuation such as "—¿" kept)."""
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
    return text


class Phrase(str):
    """A value for a pattern slot; "{slot:cap}" writes it with a capital letter."""

    def __format__(self, spec: str) -> str:
        return capitalize(self) if spec == "cap" else format(str(self), spec)


class Tale:
    """One tale being written: the cast (genders by role), slot values, paragraphs."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.slots: dict[str, Phrase] = {}
        self.genders: dict[str, str] = {}
        self.paragraphs: list[str] = []
        self.place_tag = ""  # which lexicon.PLACES list the hero's home came from
        self.plot = ""  # the name of the plot told (plots.PLOTS)
        self.ending = ""  # the key of its moral in lexicon.MORALS (for the lost treasure: who took it)

    def cast(self, role: str, gender: str, **slots: str) -> None:
        """Give `role` a gender for `[role:masc|fem]`, and fill its slots."""
        self.genders[role] = gender
        self.fill(**slots)

    def fill(self, **slots: str) -> None:
        """Set slot values, each expanded now (without a capital letter)."""
        for key, value in slots.items():
            self.slots[key] = Phrase(self.expand(value, capital=False))

    def expand(self, pattern: str, capital: bool = True) -> str:
        """The pattern with its marks resolved, starting with a capital letter unless capital=False."""
        if "[" in pattern:
            pattern = _GENDER.sub(lambda m: m[2] if self.genders[m[1]] == "m" else m[3], pattern)
        if "<" in pattern:
            pattern = _CHOICE.sub(lambda m: self.rng.choice(m[1].split("|")), pattern)
        if "{" in pattern:
            pattern = pattern.format_map(self.slots)
        return capitalize(pattern) if capital else pattern

    def say(self, *options: str | Sequence[str] | None) -> str:
        """Expand each part (a pattern, or a sequence to pick one from) into one paragraph."""
        parts = []
        for option in options:
            pattern = option if option is None or isinstance(option, str) else self.rng.choice(option)
            if pattern is not None:  # None in a sequence: this time, say nothing
                parts.append(self.expand(pattern))
        return " ".join(parts)

    def para(self, *options: str | Sequence[str] | None) -> None:
        """Add a paragraph, as `say` writes it."""
        self.paragraphs.append(self.say(*options))

    def text(self) -> str:
        """The finished tale: paragraphs joined by "\\n", contractions applied, NFC-normalised."""
        return polish("\n".join(self.paragraphs))


def polish(text: str) -> str:
    """Text as a finished tale reads: "de el"/"a el" contracted, "y"/"o" as "e"/"u" where the next
    sound asks for it, NFC-normalised."""
    text = _CONTRACT.sub(lambda m: m[1][0] + ("el" if m[1] in ("de", "De") else "l"), text)
    text = _Y_TO_E.sub("e ", text)
    text = _O_TO_U.sub("u ", text)
    return unicodedata.normalize("NFC", text)
