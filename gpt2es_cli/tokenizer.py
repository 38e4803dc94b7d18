"""Tokenizers: load GPT-2's or a local one, train a Spanish byte-level BPE, decode as a stream.

Everything goes through the `tokenizers` library's `Tokenizer`, which serializes to one JSON
string: that string travels inside every checkpoint and prepared dataset.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from gpt2es_cli.errors import TokenizerError, first_line

EOS_TOKEN = "<|endoftext|>"
GPT2_HUB_ID = "openai-community/gpt2"


class Tokenizer:
    """A byte-level BPE tokenizer with `<|endoftext|>` as its one special token."""

    def __init__(self, backend: HFTokenizer):
        self.backend = backend
        eos = backend.token_to_id(EOS_TOKEN)
        if eos is None:
            raise TokenizerError(f"the tokenizer has no {EOS_TOKEN} token: add it as a special token")
        self.eos_id: int = eos

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """From the JSON text of a `tokenizer.json`."""
        try:
            return cls(HFTokenizer.from_str(text))
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"cannot read tokenizer JSON: {first_line(e)}") from None

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """From a `tokenizer.json` file, or a directory holding `tokenizer.json` or
        `vocab.json` + `merges.txt` (GPT-2's original files)."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls.from_vocab_merges(path / "vocab.json", path / "merges.txt")
            else:
                raise TokenizerError(
                    f"{path} holds no tokenizer: expected tokenizer.json or vocab.json + merges.txt"
                )
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist: check the path")
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise TokenizerError(f"{path} is not a tokenizer.json (not UTF-8 text)") from None

    @classmethod
    def from_vocab_merges(cls, vocab: str | Path, merges: str | Path) -> Tokenizer:
        """GPT-2's byte-level BPE from its original `vocab.json` and `merges.txt`."""
        try:
            bpe = models.BPE.from_file(str(vocab), str(merges))
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"cannot read {vocab} / {merges}: {first_line(e)}") from None
        backend = HFTokenizer(bpe)
        _byte_level(backend)
        backend.add_special_tokens([EOS_TOKEN])  # GPT-2's vocab has it (50256): mark it special
        return cls(backend)

    @classmethod
    def gpt2(cls) -> Tokenizer:
        """The original GPT-2 tokenizer, from the Hugging Face Hub (cached); a local copy loads
        with `from_path`."""
        try:
            from huggingface_hub import hf_hub_download

            file = hf_hub_download(GPT2_HUB_ID, "tokenizer.json")
        except Exception as e:  # network, cache and Hub errors alike: one message
            raise TokenizerError(
                f"cannot fetch the GPT-2 tokenizer from the Hugging Face Hub ({type(e).__name__}): "
                "pass a local directory with tokenizer.json or vocab.json + merges.txt"
            ) from None
        return cls.from_path(file)

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None
    ) -> Tokenizer:
        """Train a byte-level BPE on an iterator of texts (streamed, never held whole)."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + 1:
            raise TokenizerError(
                f"vocab size {vocab_size} is too small: a byte-level BPE needs at least "
                f"{len(alphabet) + 1} (256 bytes + {EOS_TOKEN})"
            )
        backend = HFTokenizer(models.BPE())
        _byte_level(backend)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=alphabet,
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(backend)

    # --- use ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> list[str]:
        return [t.content for t in self.backend.get_added_tokens_decoder().values() if t.special]

    @property
    def kind(self) -> str:
        """The model type, e.g. 'BPE'."""
        return type(self.backend.model).__name__

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens: their text in UTF-8)."""
        token = self.backend.id_to_token(token_id)
        if token is None:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary ({self.vocab_size})")
        if token in self.special_tokens:
            return token.encode("utf-8")
        return bytes(_UNICODE_TO_BYTE[c] for c in token)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """How each id reads on its own; a token holding part of a character shows its bytes (<0xC2>)."""
        out = []
        for i in ids:
            raw = self.token_bytes(i)
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("".join(f"<0x{b:02X}>" for b in raw))
        return out

    def to_json(self) -> str:
        return self.backend.to_str()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (used by byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _byte_level(backend: HFTokenizer) -> None:
    """GPT-2's byte-level pipeline: no prefix space, bytes mapped to printable characters."""
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text as soon as it forms whole characters.

    A byte-level token can end in the middle of a UTF-8 character (ñ, á, ¿ are two bytes), so
    tokens are held back while their text ends in the replacement character. Byte-level text
    splits at token boundaries, so each flushed group decodes on its own.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """Add a token; return the text it completes ('' while a character is unfinished)."""
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        # A UTF-8 character has at most 4 bytes: past that, the '\ufffd' is really in the output.
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        """Text of any held-back tokens (at the end of a stream)."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending = []
        return text

