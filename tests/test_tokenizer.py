import pytest

from gpt2es_cli.errors import TokenizerError
from gpt2es_cli.tokenizer import EOS_TOKEN, StreamDecoder, Tokenizer

SPANISH = "¿Dónde está el niño? ¡Había una vez una cigüeña en Logroño! Año, pingüino, acción."


def test_trained_tokenizer_round_trips_spanish(tiny_tokenizer):
    ids = tiny_tokenizer.encode(SPANISH)
    assert tiny_tokenizer.decode(ids) == SPANISH
    assert tiny_tokenizer.special_tokens == [EOS_TOKEN]
    assert tiny_tokenizer.decode([tiny_tokenizer.eos_id]) == EOS_TOKEN


def test_json_round_trip(tiny_tokenizer):
    again = Tokenizer.from_json(tiny_tokenizer.to_json())
    assert again.encode(SPANISH) == tiny_tokenizer.encode(SPANISH)
    assert again.vocab_size == tiny_tokenizer.vocab_size


def test_gpt2_from_vocab_and_merges_gives_known_ids(gpt2_tokenizer_dir):
    tok = Tokenizer.from_path(gpt2_tokenizer_dir)
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]
    assert tok.decode(tok.encode(SPANISH)) == SPANISH


def test_stream_decoder_never_splits_characters(gpt2_tokenizer_dir):
    tok = Tokenizer.from_path(gpt2_tokenizer_dir)
    ids = tok.encode(SPANISH)
    decoder = StreamDecoder(tok)
    pushed = [decoder.push(i) for i in ids]
    pieces = [*pushed, decoder.flush()]
    assert "".join(pieces) == SPANISH
    assert all("\ufffd" not in p for p in pieces)
    # GPT-2 splits 'ñ', '¿' and 'ü' into byte tokens: some pushes must have been held back.
    assert "" in pushed
    assert decoder.flush() == ""  # nothing left after a flush


def test_stream_decoder_flushes_an_unfinished_character(gpt2_tokenizer_dir):
    tok = Tokenizer.from_path(gpt2_tokenizer_dir)
    ids = tok.encode("¿")
    assert len(ids) == 2  # two byte tokens
    decoder = StreamDecoder(tok)
    assert decoder.push(ids[0]) == ""
    assert decoder.flush() == tok.decode(ids[:1])  # the held-back byte, as the tokenizer decodes it


def test_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_path(tmp_path / "nope.json")
    with pytest.raises(TokenizerError, match="holds no tokenizer"):
        Tokenizer.from_path(tmp_path)
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(["hola"], vocab_size=100)
    with pytest.raises(TokenizerError, match="cannot read tokenizer JSON"):
        Tokenizer.from_json("{not json")
