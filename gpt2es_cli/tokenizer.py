"""Tokenizers: load GPT-2's or a local one, train a Spanish byte-level BPE, decode as a stream.

Everything goes through the `tokenizers` library's `Tokenizer`, which serializes to one JSON
string: that string travels inside every checkpoint and prepared dataset. A tokenizer made for
instruction tuning also carries a chat template (a Jinja string, as transformers' `chat_template`;
chat.py renders it): in the JSON string it is one more top-level key, `chat_template`, taken out
before the library reads the rest; on disk `save` writes it beside tokenizer.json as
chat_template.jinja, as transformers does, so tokenizer.json stays the library's own format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from gpt2es_cli.errors import TokenizerError, first_line

EOS_TOKEN = "<|endoftext|>"
GPT2_HUB_ID = "openai-community/gpt2"
CHAT_TEMPLATE_KEY = "chat_template"
"""The key of the chat template in a tokenizer's JSON string (and in tokenizer_config.json)."""
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""The file beside tokenizer.json that holds the chat template (transformers' name for it)."""


class Tokenizer:
    """A byte-level BPE tokenizer with `<|endoftext|>` as its special token (and, for a tokenizer
    trained for instruction tuning, the chat markers), optionally with a chat template."""

    def __init__(self, backend: HFTokenizer, chat_template: str | None = None):
        self.backend = backend
        eos = backend.token_to_id(EOS_TOKEN)
        if eos is None:
            raise TokenizerError(f"the tokenizer has no {EOS_TOKEN} token: add it as a special token")
        self.eos_id: int = eos
        self.chat_template = chat_template
        """A Jinja chat template (chat.py renders it), or None: a tokenizer for plain text."""

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """From the JSON text of a `tokenizer.json`, or of `to_json` (which may add a chat template)."""
        template = None
        try:
            if f'"{CHAT_TEMPLATE_KEY}"' in text:  # cheap test first: most tokenizers have none
                data = json.loads(text)
                if isinstance(data, dict) and CHAT_TEMPLATE_KEY in data:
                    template = data.pop(CHAT_TEMPLATE_KEY)
                    if not isinstance(template, str):
                        raise TokenizerError(f"the tokenizer's {CHAT_TEMPLATE_KEY} is not text: fix or remove it")
                    text = json.dumps(data, ensure_ascii=False)
            return cls(HFTokenizer.from_str(text), template)
        except TokenizerError:
            raise
        except Exception as e:  # the tokenizers library raises plain Exceptions
            raise TokenizerError(f"cannot read tokenizer JSON: {first_line(e)}") from None

    @classmethod
    def from_path(cls, path: str | Path) -> Tokenizer:
        """From a `tokenizer.json` file, or a directory holding `tokenizer.json` or
        `vocab.json` + `merges.txt` (GPT-2's original files). A chat template beside it is read
        too: chat_template.jinja, else the `chat_template` of tokenizer_config.json."""
        path = Path(path)
        if path.is_dir():
            if (path / "tokenizer.json").is_file():
                path = path / "tokenizer.json"
            elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                tok = cls.from_vocab_merges(path / "vocab.json", path / "merges.txt")
                return tok.with_chat_template(_template_beside(path))
            else:
                raise TokenizerError(
                    f"{path} holds no tokenizer: expected tokenizer.json or vocab.json + merges.txt"
                )
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} does not exist: check the path")
        try:
            tok = cls.from_json(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise TokenizerError(f"{path} is not a tokenizer.json (not UTF-8 text)") from None
        return tok if tok.chat_template is not None else tok.with_chat_template(_template_beside(path.parent))

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
        cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None,
        special_tokens: Sequence[str] = (),
    ) -> Tokenizer:
        """Train a byte-level BPE on an iterator of texts (streamed, never held whole).

        `special_tokens` (e.g. chat markers) get ids right after `<|endoftext|>` (0) and are never
        split or merged: in the texts they are read as themselves."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        specials = [EOS_TOKEN, *(t for t in special_tokens if t != EOS_TOKEN)]
        if vocab_size < len(alphabet) + len(specials):
            raise TokenizerError(
                f"vocab size {vocab_size} is too small: a byte-level BPE needs at least "
                f"{len(alphabet) + len(specials)} (256 bytes + {', '.join(specials)})"
            )
        backend = HFTokenizer(models.BPE())
        _byte_level(backend)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=alphabet,
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(backend)

    def with_chat_template(self, template: str | None) -> Tokenizer:
        """The same tokenizer (sharing its backend) with this chat template (None: without one)."""
        return type(self)(self.backend, template)

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

    def token_id(self, token: str) -> int | None:
        """The id of a token (e.g. a special token), or None when the vocabulary lacks it."""
        return self.backend.token_to_id(token)

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
        """The tokenizers library's JSON, plus the `chat_template` key when there is a template."""
        text = self.backend.to_str()
        if self.chat_template is None:
            return text
        template = json.dumps(self.chat_template, ensure_ascii=False)
        return f'{text.rstrip().removesuffix("}")},"{CHAT_TEMPLATE_KEY}":{template}}}'

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json (the library's format) and, with a template, chat_template.jinja beside it."""
        path = Path(path)
        path.write_text(self.backend.to_str(), encoding="utf-8")
        if self.chat_template is not None:
            (path.parent / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")


def _template_beside(directory: Path) -> str | None:
    """The chat template stored in a tokenizer's directory (chat_template.jinja, else tokenizer_config.json's)."""
    file = directory / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # a damaged tokenizer_config.json: transformers' business, not ours
        template = data.get(CHAT_TEMPLATE_KEY) if isinstance(data, dict) else None
        return template if isinstance(template, str) else None
    return None


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

