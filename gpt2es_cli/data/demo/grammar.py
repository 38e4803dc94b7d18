"""Spanish word forms for the tales: nouns, adjectives and articles that agree in gender and number.

A `Noun` knows its gender and plural, an `Adj` its four forms, and `noun_phrase` puts an article,
a noun and an adjective together so they agree. Every noun and adjective the tables declare goes
through `register_noun` / `register_adjective`, which collect them in `NOUNS` and `ADJECTIVES` so a
test can check that every article and adjective next to a known noun agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

_UNACCENT = {"á": "a", "é": "e", "í": "i", "ó": "o", "ú": "u"}


def plural_of(word: str) -> str:
    """Spanish plural: vowel + s; z -> ces; consonant + es, dropping a last-syllable accent."""
    if word[-1] in "aeiouáéó":
        return word + "s"
    if word[-1] == "z":
        return word[:-1] + "ces"
    if word[-2] in _UNACCENT:  # ratón -> ratones, dragón -> dragones
        word = word[:-2] + _UNACCENT[word[-2]] + word[-1]
    return word + "es"


@dataclass(frozen=True)
class Noun:
    """A noun: singular, gender ("m" or "f") and plural.

    `tonic_a`: a feminine noun starting with a stressed a takes "el"/"un" right before it in the
    singular (el hada buena, un águila vieja) and is feminine everywhere else (las hadas buenas).
    """

    sg: str
    gender: str
    pl: str = ""
    tonic_a: bool = False

    def __post_init__(self) -> None:
        if not self.pl:
            object.__setattr__(self, "pl", plural_of(self.sg))

    def form(self, plural: bool = False) -> str:
        return self.pl if plural else self.sg

    def article(self, definite: bool, plural: bool = False) -> str:
        """The article that goes right before this noun."""
        return article(self.gender, definite, plural, self.tonic_a)


def article(gender: str, definite: bool, plural: bool = False, tonic_a: bool = False) -> str:
    """el/la/los/las or un/una/unos/unas for a gender; `tonic_a` gives "el"/"un" to a feminine singular."""
    if plural:
        if definite:
            return "los" if gender == "m" else "las"
        return "unos" if gender == "m" else "unas"
    if gender == "m" or tonic_a:
        return "el" if definite else "un"
    return "la" if definite else "una"


@dataclass(frozen=True)
class Adj:
    """An adjective's four forms: masculine/feminine, singular/plural."""

    m: str
    f: str
    mp: str
    fp: str

    def form(self, gender: str, plural: bool = False) -> str:
        if gender == "m":
            return self.mp if plural else self.m
        return self.fp if plural else self.f


NOUNS: dict[str, Noun] = {}
"""Every noun the tales use, by singular (for the agreement tests)."""
ADJECTIVES: dict[str, Adj] = {}
"""Every adjective the tales inflect, by masculine singular (for the agreement tests)."""


def register_noun(sg: str, gender: str, pl: str = "", tonic_a: bool = False) -> Noun:
    """The noun `sg`, added to NOUNS the first time (a second gender for one word is an error)."""
    noun = NOUNS.setdefault(sg, Noun(sg, gender, pl, tonic_a))
    if noun.gender != gender:
        raise AssertionError(f"{sg!r} is in the lexicon with two genders")
    return noun


def register_adjective(m: str, f: str = "", mp: str = "", fp: str = "") -> Adj:
    """The adjective `m`, added to ADJECTIVES the first time; forms left out follow the usual endings."""
    if not f:
        if m.endswith("o"):
            f = m[:-1] + "a"
        elif m.endswith("or"):
            f = m + "a"
        elif m[-2:] in ("ón", "ín", "án"):
            f = m[:-2] + _UNACCENT[m[-2]] + "na"
        else:
            f = m
    return ADJECTIVES.setdefault(m, Adj(m, f, mp or plural_of(m), fp or plural_of(f)))


def register_nouns(table: str) -> None:
    """Nouns written inside the patterns: "word g", "word g plural" or "word g*" (tonic a), comma-separated."""
    for entry in table.split(","):
        parts = entry.split()
        if parts:
            gender = parts[1].rstrip("*")
            register_noun(parts[0], gender, parts[2] if len(parts) > 2 else "", parts[1].endswith("*"))


def register_adjectives(table: str) -> None:
    """Adjectives with regular forms, separated by whitespace."""
    for word in table.split():
        register_adjective(word)


def noun_phrase(noun: Noun, definite: bool, adj: Adj | None = None, plural: bool = False,
                before: bool = False) -> str:
    """"la flor azul", "unos campos dorados"; before=True: "una pequeña águila"."""
    if adj is not None and before:
        # The article agrees with the word right after it: "un águila" but "una pequeña águila".
        return f"{article(noun.gender, definite, plural)} {adj.form(noun.gender, plural)} {noun.form(plural)}"
    np = f"{noun.article(definite, plural)} {noun.form(plural)}"
    return f"{np} {adj.form(noun.gender, plural)}" if adj is not None else np
