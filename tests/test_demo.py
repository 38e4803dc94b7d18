"""The built-in demo corpus: deterministic, bounded, clean Spanish with agreeing articles."""

import hashlib
import random
import re
import unicodedata
from collections import Counter

import pytest

from gpt2es_cli.config import DEMO_MAX_BYTES
from gpt2es_cli.data.demo import MAX_CHARS, MIN_CHARS, generate_tales
from gpt2es_cli.data.demo.grammar import ADJECTIVES, NOUNS, noun_phrase
from gpt2es_cli.data.demo.lexicon import CULPRITS, MORALS, NAMES
from gpt2es_cli.data.demo.patterns import Tale
from gpt2es_cli.data.demo.plots import LOST_ENDINGS, PLOTS, VILLAGE_PROBLEMS, tell
from gpt2es_cli.errors import DataError

ARTICLES = {  # article -> (gender, plural)
    "el": ("m", False), "la": ("f", False), "los": ("m", True), "las": ("f", True),
    "un": ("m", False), "una": ("f", False), "unos": ("m", True), "unas": ("f", True),
    "del": ("m", False), "al": ("m", False),
}  # fmt: skip


@pytest.fixture(scope="module")
def tales() -> list[str]:
    return list(generate_tales(seed=0, max_docs=2000))


def _forms():
    nouns: dict[str, set] = {}
    for n in NOUNS.values():
        nouns.setdefault(n.sg, set()).add((n.gender, False, n.tonic_a))
        nouns.setdefault(n.pl, set()).add((n.gender, True, False))
    adjs: dict[str, set] = {}
    for a in ADJECTIVES.values():
        for g in "mf":
            for plural in (False, True):
                adjs.setdefault(a.form(g, plural), set()).add((g, plural))
    return nouns, {w: f for w, f in adjs.items() if w not in nouns}


def _agreement_errors(text: str, nouns: dict, adjs: dict) -> tuple[list[str], int]:
    """Articles (with an optional adjective between) and adjectives right after a noun must agree."""
    tokens = re.findall(r"\w+|[^\w\s]", text)
    errors, checked = [], 0
    for i, tok in enumerate(tokens):
        art = ARTICLES.get(tok.lower())
        if art is None:
            continue
        j = i + 1
        pre = None
        if j < len(tokens) and tokens[j] in adjs:
            pre, j = tokens[j], j + 1
        if j >= len(tokens) or tokens[j] not in nouns:
            continue
        checked += 1
        gender, plural = art
        ok = False
        for g, pl, tonic in nouns[tokens[j]]:
            if pl != plural:
                continue
            if pre is None and tonic and not pl and tok.lower() in ("el", "un", "del", "al"):
                ok = True  # el hada, un águila
            elif g == gender and not (pre is None and tonic and tok.lower() in ("la", "una")):
                ok = pre is None or (g, pl) in adjs[pre]
            if ok:
                break
        if not ok:
            errors.append(" ".join(tokens[i:j + 1]))
    for i in range(len(tokens) - 1):
        noun, adj = tokens[i], tokens[i + 1]
        if noun in nouns and adj in adjs:
            checked += 1
            if not any((g, pl) in adjs[adj] for g, pl, _ in nouns[noun]):
                errors.append(f"{noun} {adj}")
    return errors, checked


def test_same_seed_same_tales_other_seed_other_tales():
    first = list(generate_tales(seed=5, max_docs=40))
    assert first == list(generate_tales(seed=5, max_docs=40))
    assert first != list(generate_tales(seed=6, max_docs=40))
    assert all(isinstance(t, str) for t in first)


def test_max_docs_and_max_bytes_are_honoured():
    assert len(list(generate_tales(max_docs=3))) == 3
    assert list(generate_tales(max_bytes=0)) == []
    assert list(generate_tales(max_docs=0)) == []
    small = list(generate_tales(seed=1, max_bytes=10_000))
    sizes = [len(t.encode("utf-8")) for t in small]
    assert sum(sizes) >= 10_000 > sum(sizes[:-1])  # stops at the tale that reaches the budget
    assert len(list(generate_tales(max_bytes=10_000_000, max_docs=5))) == 5
    for bad in ({"max_bytes": -1}, {"max_docs": -2}):
        with pytest.raises(DataError, match="must be >= 0"):
            next(generate_tales(**bad))


def test_default_size_is_a_few_megabytes():
    total = sum(len(t.encode("utf-8")) for t in generate_tales())
    assert DEMO_MAX_BYTES <= total < DEMO_MAX_BYTES + MAX_CHARS * 4


def test_tales_are_clean_spanish(tales):
    text = "\n".join(tales)
    assert unicodedata.is_normalized("NFC", text)
    for ch in "ñáéíóú¿¡—":
        assert ch in text, ch
    assert sum(t.startswith("Había una vez") for t in tales) > 0.6 * len(tales)
    assert all(MIN_CHARS <= len(t) <= MAX_CHARS for t in tales)
    assert not re.search(r"[{}\[\]<>|_]", text), "a pattern slot leaked"
    assert "  " not in text and " ," not in text and " ." not in text
    assert not re.search(r"\b(de|a) el\b", text, re.IGNORECASE), "missing del/al contraction"
    assert not re.search(r"\by [iI]", text), "'y' before an i sound should be 'e'"
    for tale in tales:
        paragraphs = tale.split("\n")
        assert len(paragraphs) >= 3
        for p in paragraphs:
            assert re.match(r"[—¿¡«]*[A-ZÁÉÍÓÚÑ]", p), p
            assert p[-1] in ".!?:»", p


def test_articles_and_adjectives_agree_with_nouns(tales):
    nouns, adjs = _forms()
    errors, checked = _agreement_errors("\n".join(tales), nouns, adjs)
    assert checked > 20_000  # the check really ran over the text
    assert errors == [], Counter(errors).most_common(10)


def test_the_agreement_check_catches_mistakes():
    nouns, adjs = _forms()
    bad = "Había una vez un niña valiente con los flores blancas, una hada y el tortuga viejo."
    errors, _ = _agreement_errors(bad, nouns, adjs)
    assert errors == ["un niña", "los flores", "una hada", "el tortuga", "tortuga viejo"]


def test_noun_phrases():
    hada, aguila, flor, pez = NOUNS["hada"], NOUNS["águila"], NOUNS["flor"], NOUNS["pez"]
    assert noun_phrase(hada, True) == "el hada"
    assert noun_phrase(hada, True, plural=True) == "las hadas"
    assert noun_phrase(aguila, False, ADJECTIVES["viejo"]) == "un águila vieja"
    assert noun_phrase(aguila, False, ADJECTIVES["pequeño"], before=True) == "una pequeña águila"
    assert noun_phrase(flor, True, ADJECTIVES["blanco"], plural=True) == "las flores blancas"
    assert noun_phrase(pez, False, plural=True) == "unos peces"
    assert NOUNS["canción"].pl == "canciones" and NOUNS["dragón"].pl == "dragones"
    assert ADJECTIVES["juguetón"].f == "juguetona" and ADJECTIVES["joven"].mp == "jóvenes"


def test_pronouns_and_participles_follow_gender(tales):
    text = "\n".join(tales)
    # Lost treasure: "¿Has visto mi bufanda roja?" ... "no la he visto" / "¡Sí que la he visto!"
    asked = re.findall(r"¿Has visto mi (\w+)[^?]*\?(?:.*\n)*?.*?(?:[Nn]o|Sí que) (lo|la) he visto", text)
    assert len(asked) > 100
    assert all(pron == ("lo" if NOUNS[noun].gender == "m" else "la") for noun, pron in asked)
    # The cure: "su abuela se puso muy enferma", "su hermanito se puso muy enfermo"
    ill = re.findall(r"su (abuela|abuelo|madre|padre|hermanito|hermana pequeña|mejor amigo|mejor amiga) "
                     r"se puso muy (enfermo|enferma)", text)
    assert len(ill) > 100
    female = {"abuela", "madre", "hermana pequeña", "mejor amiga"}
    assert all((who in female) == (state == "enferma") for who, state in ill)
    # Heroes: "llamado Pablo", "llamada Lucía"
    named = re.findall(r"llamad([oa]) (\w+)", text)
    females = {n for (group, g), names in NAMES.items() if g == "f" for n in names}
    males = {n for (group, g), names in NAMES.items() if g == "m" for n in names}
    assert len(named) > 500
    assert all(name in (males if o == "o" else females) for o, name in named)


def test_every_plot_survives_the_length_limit(tales):
    markers = {
        "cure": "infusión", "wish": "cumplir su sueño", "lost": "¿Has visto mi",
        "friend": "jugar conmigo", "village": r"arroyo que pasaba|viento helado|rugido terrible|abejas desaparecieron|faro",
    }  # fmt: skip
    for plot, marker in markers.items():
        share = sum(bool(re.search(marker, t)) for t in tales) / len(tales)
        assert share > 0.08, (plot, share)


def test_few_duplicates_and_a_small_vocabulary(tales):
    assert len(tales) - len(set(tales)) < 0.01 * len(tales)
    # Openings vary too: the first sentences of 2,000 tales are mostly distinct.
    assert len({t.split(".")[0] for t in tales}) > 0.8 * len(tales)
    words = {w.lower() for t in tales for w in re.findall(r"\w+", t)}
    assert 1_000 < len(words) < 5_000


def _assert_clean(text: str) -> None:
    assert not re.search(r"[{}\[\]<>|_]", text), "a pattern slot leaked"
    paragraphs = text.split("\n")
    assert len(paragraphs) >= 3
    assert all(p[-1] in ".!?:»" for p in paragraphs), text


@pytest.mark.parametrize("plot", PLOTS, ids=lambda plot: plot.name)
def test_every_plot_in_the_registry_tells_a_tale(plot):
    for seed in range(30):
        _assert_clean(tell(random.Random(seed), plot))


@pytest.mark.parametrize("problem", VILLAGE_PROBLEMS, ids=lambda problem: problem.name)
def test_every_village_problem_writes_its_sub_plot(problem):
    for seed in range(10):
        t = Tale(random.Random(seed))
        t.cast("hero", "fm"[seed % 2], hero="Lucía", community="el pueblo")
        t.fill(crew="el oso, la cabra y el burro", crew_with_a="a el oso, a la cabra y a el burro")
        assert problem.write(t) in MORALS
        _assert_clean(t.text())


def test_every_culprit_has_an_ending():
    assert set(LOST_ENDINGS) == set(CULPRITS)


def test_the_corpus_is_pinned(tales):
    """Training figures in the docs depend on these exact tales: any change to the text shows here."""
    assert hashlib.sha256("\0".join(tales).encode()).hexdigest() == (
        "078295400e97c40e77451c3eacfaf311ecc2366ac17563314606550f4d0c3312"
    )
