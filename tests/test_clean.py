"""Text hygiene: normalisation, decoding, fingerprints, the split hash, the digest set."""

import random

import numpy as np

from gpt2es_cli.data.clean import DigestSet, decode_utf8, digest, normalize, split_score
from gpt2es_cli.tokenizer import EOS_TOKEN


def test_normalize_nfc_controls_whitespace():
    raw = "\ufeffSen\u0303or  Mun\u0303oz\x00\x07 dijo:\t¡hola!\r\n  ¿Qué\u00a0tal? \r\n\r\n\r\n\n Adiós\x1b.  "
    text, removed = normalize(raw)
    assert text == "Señor Muñoz dijo: ¡hola!\n¿Qué tal?\n\nAdiós."
    assert removed == 4  # BOM, NUL, BEL, ESC


def test_normalize_leaves_clean_text_alone():
    clean = "Había una vez un niño.\n\n¿Dónde está? ¡Aquí!"
    assert normalize(clean) == (clean, 0)


def test_normalize_removes_literal_separator_and_blank_documents():
    assert normalize(f"uno{EOS_TOKEN}dos")[0] == "unodos"
    assert normalize(" \n\t\x00 \u3000\n")[0] == ""


def test_decode_counts_only_new_replacements():
    text, bad = decode_utf8("año ".encode() + b"\xff\xfe" + "\ufffd".encode())
    assert text == "año \ufffd\ufffd\ufffd"
    assert bad == 2
    assert decode_utf8("ñandú".encode()) == ("ñandú", 0)


def test_digest_and_split_score():
    a, b = digest(b"uno"), digest(b"dos")
    assert a != b and a == digest(b"uno") and 0 < a < 2**64
    digests = [digest(str(i).encode()) for i in range(20000)]
    scores = [split_score(d, seed=0) for d in digests]
    assert all(0 <= s < 1 for s in scores)
    assert 0.08 < sum(s < 0.1 for s in scores) / len(scores) < 0.12
    assert scores != [split_score(d, seed=1) for d in digests]


def test_digest_set_matches_python_set():
    rng = random.Random(0)
    seen = DigestSet()
    reference: set[int] = set()
    for _ in range(60):  # enough batches for several merges of the sorted runs
        batch = [rng.randrange(1, 5000) for _ in range(rng.randrange(0, 200))]
        expected = []
        for d in batch:
            expected.append(d not in reference)
            reference.add(d)
        assert seen.add_batch(batch).tolist() == expected
    assert len(seen) == len(reference)
    assert len(seen._runs) <= 2 * np.log2(len(reference))


def test_digest_set_handles_full_64_bit_values():
    seen = DigestSet()
    big = [2**64 - 1, 2**63, 1]
    assert seen.add_batch(big).all()
    assert not seen.add_batch(big).any()
