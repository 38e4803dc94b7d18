"""Chat templates: a conversation as the text a model reads, and which of its tokens are answers.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`.
A chat template is a Jinja string, as transformers' `chat_template` (the tokenizer carries it, see
tokenizer.py): `render` fills it in with the same Jinja settings transformers uses, so
`AutoTokenizer.apply_chat_template` on an export gives the same text and token ids. Each answer
sits in a `{% generation %}` block (transformers' mark for `return_assistant_tokens_mask`): its
characters, and so the tokens they fall in, are the ones training learns (`encode_chat`'s mask).

Two templates come built in, both starting with `<|endoftext|>` (as bos_token), so a conversation
follows a document separator as every GPT-2 document does:

- CHATML, for a tokenizer trained with the markers `<|im_start|>` and `<|im_end|>` as special
  tokens: `<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n...<|im_end|>\\n`; an answer
  ends with `<|im_end|>`.
- TEXT_MARKERS, for a pretrained tokenizer (a checkpoint's, GPT-2's, a Hub model's), which has no
  such tokens: plain-text headers that its vocabulary already spells, `### Usuario:` and
  `### Asistente:`, turns separated by a blank line; an answer ends with `<|endoftext|>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from gpt2es_cli.errors import TokenizerError
from gpt2es_cli.tokenizer import EOS_TOKEN, Tokenizer

ROLES = ("system", "user", "assistant")
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CHAT_MARKERS = (IM_START, IM_END)
"""The special tokens a tokenizer trained for instruction tuning adds (after <|endoftext|>)."""

CHATML = (
    r"{{ bos_token }}"
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' }}"
    r"{% if message['role'] == 'assistant' %}"
    r"{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    r"{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    r"{{ '\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, for a tokenizer with <|im_start|> and <|im_end|> as special tokens."""

TEXT_MARKERS = (
    r"{{ bos_token }}"
    r"{% for message in messages %}"
    r"{% if not loop.first %}{{ '\n\n' }}{% endif %}"
    r"{% if message['role'] == 'system' %}{{ message['content'] }}"
    r"{% elif message['role'] == 'user' %}{{ '### Usuario:\n' + message['content'] }}"
    r"{% else %}{{ '### Asistente:\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    r"{% endif %}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '\n\n### Asistente:\n' }}{% endif %}"
)
"""Plain-text role headers, for a pretrained tokenizer: every vocabulary spells them; <|endoftext|> ends an answer."""

BUILT_IN = {"chatml": CHATML, "text-markers": TEXT_MARKERS}
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def template_name(template: str | None) -> str:
    """'chatml' or 'text-markers' for a built-in template, 'custom' for another, 'none' without one."""
    if template is None:
        return "none"
    return next((name for name, t in BUILT_IN.items() if t == template), "custom")


def marks_answers(template: str) -> bool:
    """Whether a template puts its answers in `{% generation %}` blocks (without them no loss mask can be made)."""
    return _GENERATION_TAG.search(template) is not None


def template_for(tokenizer: Tokenizer) -> str:
    """The chat template to tune with `tokenizer`: its own if it has one that marks its answers,
    else CHATML when its vocabulary has the chat markers as tokens (one trained for instructions),
    else TEXT_MARKERS."""
    if tokenizer.chat_template is not None and marks_answers(tokenizer.chat_template):
        return tokenizer.chat_template
    if all(tokenizer.token_id(m) is not None for m in CHAT_MARKERS):
        return CHATML
    return TEXT_MARKERS


def end_of_turn_id(tokenizer: Tokenizer) -> int:
    """The token that ends an answer: <|im_end|> under a template that writes it, else <|endoftext|>."""
    im_end = tokenizer.token_id(IM_END)
    if im_end is not None and tokenizer.chat_template is not None and IM_END in tokenizer.chat_template:
        return im_end
    return tokenizer.eos_id


@dataclass(frozen=True)
class Rendered:
    """A conversation rendered by a template."""

    text: str
    answers: list[tuple[int, int]]
    """The [start, end) character spans of the answers (the template's generation blocks)."""


class _AnswerTracker:
    """Where the `{% generation %}` blocks land in the text being rendered (as transformers' AssistantTracker)."""

    def __init__(self) -> None:
        self.active: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar("answers", default=None)

    @contextmanager
    def tracking(self, blocks: list[str], spans: list[tuple[int, int]]) -> Iterator[None]:
        token = self.active.set((blocks, spans))
        try:
            yield
        finally:
            self.active.reset(token)


@lru_cache(maxsize=16)
def _compile(template: str) -> tuple[Any, _AnswerTracker]:
    """The template compiled as transformers compiles chat templates (sandboxed, trim_blocks, lstrip_blocks)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    tracker = _AnswerTracker()

    class Generation(Extension):
        tags = {"generation"}  # noqa: RUF012 (jinja reads this class attribute)

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_answer"), [], [], body).set_lineno(lineno)

        def _answer(self, caller: Any) -> str:
            text = caller()
            state = tracker.active.get()
            if state is not None:
                blocks, spans = state
                start = sum(map(len, blocks))
                spans.append((start, start + len(text)))
            return text

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template), tracker
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"the chat template is not valid Jinja ({e})") from None


def render(template: str, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> Rendered:
    """The conversation as text, with its answers' spans. `add_generation_prompt` ends it with the
    header of an answer to come (what a model continues when it replies)."""
    import jinja2

    compiled, tracker = _compile(template)
    blocks: list[str] = []
    spans: list[tuple[int, int]] = []
    try:
        with tracker.tracking(blocks, spans):
            for block in compiled.generate(messages=[dict(m) for m in messages],
                                           add_generation_prompt=add_generation_prompt,
                                           bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN):
                blocks.append(block)
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"the chat template cannot render this conversation ({e})") from None
    return Rendered("".join(blocks), spans)


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, str]],
                add_generation_prompt: bool = False) -> tuple[list[int], np.ndarray]:
    """Token ids of a conversation under the tokenizer's chat template, and its loss mask: 1 for
    each token of an answer (its end-of-turn token included), 0 elsewhere (uint8, one per id)."""
    return encode_chats(tokenizer, [messages], add_generation_prompt)[0]


def encode_chats(tokenizer: Tokenizer, conversations: Sequence[Sequence[dict[str, str]]],
                 add_generation_prompt: bool = False) -> list[tuple[list[int], np.ndarray]]:
    """`encode_chat` for many conversations, tokenized as one batch."""
    template = tokenizer.chat_template
    if template is None:
        raise TokenizerError("the tokenizer has no chat template: prepare the data with --format instructions")
    rendered = [render(template, c, add_generation_prompt) for c in conversations]
    encodings = tokenizer.backend.encode_batch([r.text for r in rendered], add_special_tokens=False)  # with offsets
    out = []
    for r, enc in zip(rendered, encodings, strict=True):
        mask = np.zeros(len(enc.ids), dtype=np.uint8)
        if r.answers:
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)  # (T, 2): each token's characters
            for start, end in r.answers:
                mask[(offsets[:, 0] < end) & (offsets[:, 1] > start)] = 1  # tokens that overlap the answer
        out.append((list(enc.ids), mask))
    return out


def fit_conversation(tokenizer: Tokenizer, messages: Sequence[dict[str, str]],
                     limit: int) -> tuple[list[int], int]:
    """The token ids a model reads to reply to `messages` (ending with the answer's header), the
    oldest turns dropped until they are at most `limit` tokens; a system message and the last
    message always stay. Returns the ids and how many messages were dropped."""
    kept = list(messages)
    system = kept[:1] if kept and kept[0]["role"] == "system" else []
    turns = kept[len(system):]
    dropped = 0
    while True:
        ids, _ = encode_chat(tokenizer, [*system, *turns], add_generation_prompt=True)
        if len(ids) <= limit or len(turns) <= 1:
            return ids, dropped
        turns = turns[1:]  # the oldest message, and an answer it leaves without its question
        dropped += 1
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns, dropped = turns[1:], dropped + 1
