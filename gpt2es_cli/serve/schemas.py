"""What a request to the API may hold, checked field by field, and errors in OpenAI's shape.

Requests are parsed by hand rather than by a pydantic model so that every problem gets OpenAI's
error body (`{"error": {"message", "type", "param", "code"}}`) with the field named in `param`,
and so that numbers are checked as the settings dataclasses check theirs: of the right type
(true is not a number, "0.5" is not a number), finite (Python's json reads a bare NaN, and
1e999 as infinity) and in range. Field names and defaults are OpenAI's (/v1/completions, the
legacy completions API); `top_k`, `repetition_penalty` and `ignore_eos` are gpt2es's extras,
passed as extra body fields (`extra_body=` in the openai package).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MAX_CHOICES = 128
"""At most this many completions per request (n times the number of prompts), as OpenAI's n."""
MAX_STOP = 4
"""At most this many stop strings, as OpenAI."""
MAX_LOGPROBS = 5
"""The most alternatives per token `logprobs` may ask for, as OpenAI."""
DEFAULT_MAX_TOKENS = 16
"""New tokens when a request does not say (OpenAI's default)."""


class APIError(Exception):
    """An HTTP error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def invalid(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _shown(value: Any) -> str:
    """A value as a message shows it, cut short (a prompt or a long number stays readable)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(data: dict[str, Any], name: str, default: Any, *, whole: bool = False, ge: float | None = None,
           gt: float | None = None, le: float | None = None) -> Any:
    """The number data[name] (null or absent: `default`), checked: a number (a whole one when
    `whole`), finite, within [ge or gt, le]."""
    value = data.get(name)
    if value is None:
        return default
    kind = "a whole number" if whole else "a number"
    low = f">= {_bound(ge)}" if ge is not None else f"> {_bound(gt)}" if gt is not None else None
    bounds = " and ".join(b for b in (low, f"<= {_bound(le)}" if le is not None else None) if b)
    wanted = f"{kind} {bounds}".strip()
    if not _is_number(value) or (whole and not isinstance(value, int)):
        raise invalid(name, f"{name} must be {wanted} (got {_shown(value)})", "invalid_type")
    if not math.isfinite(value):
        raise invalid(name, f"{name} must be a finite number (got {_shown(value)})")
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        raise invalid(name, f"{name} must be {wanted} (got {_shown(value)})")
    return value if whole else float(value)


def flag(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be true or false (got {_shown(value)})", "invalid_type")
    return value


def text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise invalid(name, f"{name} must be a string (got {_shown(value)})", "invalid_type")
    return value


def valid_unicode(value: str, param: str) -> str:
    """`value` if it can be written as UTF-8 (JSON may carry a lone surrogate such as "\\ud800")."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise invalid(param, f"{param} is not valid Unicode: a lone surrogate {value[e.start]!r} at "
                             f"character {e.start} (send the character itself, or a surrogate pair)") from None
    return value


def token_ids(value: Any, param: str, vocab_size: int) -> list[int]:
    """A list of token ids, each a whole number in 0..vocab_size - 1."""
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise invalid(param, f"{param} must be a list of token ids (whole numbers)", "invalid_type")
    bad = next((t for t in value if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise invalid(param, f"{param}: token id {_shown(bad)} is outside the vocabulary (0 to {vocab_size - 1})")
    return value


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: its text, or its token ids (OpenAI accepts both)."""

    text: str | None = None
    ids: list[int] | None = None


def prompts(value: Any, vocab_size: int) -> list[Prompt]:
    """OpenAI's four forms of `prompt`: a string, a list of strings, a list of token ids, or a list of lists of ids."""
    if isinstance(value, str):
        return [Prompt(text=valid_unicode(value, "prompt"))]
    if not isinstance(value, list) or not value:
        raise invalid("prompt", "prompt must be a string, a list of strings, a list of token ids or a list of "
                                f"lists of token ids, not empty (got {_shown(value)})", "invalid_type")
    if all(isinstance(p, str) for p in value):
        return [Prompt(text=valid_unicode(p, "prompt")) for p in value]
    if all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        return [Prompt(ids=token_ids(value, "prompt", vocab_size))]
    if all(isinstance(p, list) for p in value):
        if not all(p for p in value):
            raise invalid("prompt", "prompt: a list of token ids must not be empty")
        return [Prompt(ids=token_ids(p, "prompt", vocab_size)) for p in value]
    raise invalid("prompt", "prompt must be a string, a list of strings, a list of token ids or a list of "
                            "lists of token ids (not a mix)", "invalid_type")


def stop_strings(value: Any) -> tuple[str, ...]:
    """OpenAI's `stop`: null, a string or a list of at most 4 strings, none empty."""
    if value is None:
        return ()
    found = [value] if isinstance(value, str) else value
    if not isinstance(found, list) or not all(isinstance(s, str) for s in found):
        raise invalid("stop", f"stop must be a string or a list of strings (got {_shown(value)})", "invalid_type")
    if len(found) > MAX_STOP:
        raise invalid("stop", f"stop takes at most {MAX_STOP} strings (got {len(found)})")
    if any(s == "" for s in found):
        raise invalid("stop", "stop strings must not be empty")
    return tuple(valid_unicode(s, "stop") for s in found)


COMPLETION_FIELDS = frozenset({
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs",
    "echo", "stop", "presence_penalty", "frequency_penalty", "seed", "user", "best_of", "suffix", "logit_bias",
    "top_k", "repetition_penalty", "ignore_eos",
})
"""What /v1/completions reads: OpenAI's fields, then gpt2es's extras."""


@dataclass(frozen=True)
class CompletionRequest:
    """A checked /v1/completions request (the prompts not yet tokenized)."""

    model: str | None
    prompts: list[Prompt]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    logprobs: int | None
    echo: bool
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    ignore_eos: bool


def completion_request(data: Any, vocab_size: int) -> CompletionRequest:
    """Check a /v1/completions body; raise APIError (400) naming the first field that is wrong."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_type")
    unknown = sorted(set(data) - COMPLETION_FIELDS)
    if unknown:
        raise invalid(unknown[0], f"unrecognized request argument supplied: {unknown[0]} (the fields are: "
                                  f"{', '.join(sorted(COMPLETION_FIELDS))})", "unknown_parameter")
    if "prompt" not in data:
        raise invalid("prompt", "prompt is required", "missing_required_parameter")
    stream = flag(data, "stream")
    options = data.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise invalid("stream_options", 'stream_options must be an object like {"include_usage": true}',
                          "invalid_type")
        include_usage = flag(options, "include_usage")
    n = number(data, "n", 1, whole=True, ge=1, le=MAX_CHOICES)
    best_of = number(data, "best_of", None, whole=True, ge=1, le=MAX_CHOICES)
    if best_of is not None and best_of != n:
        raise invalid("best_of", "best_of is not supported (leave it out, or set it equal to n)")
    if data.get("suffix") not in (None, ""):
        raise invalid("suffix", "suffix is not supported: this model only continues text")
    if data.get("logit_bias") not in (None, {}):
        raise invalid("logit_bias", "logit_bias is not supported")
    text(data, "user")  # accepted and unused, as a label of the caller
    found = prompts(data["prompt"], vocab_size)
    if len(found) * n > MAX_CHOICES:
        raise invalid("n", f"{len(found)} prompts x n={n} asks for {len(found) * n} completions; at most "
                           f"{MAX_CHOICES} per request")
    seed = number(data, "seed", None, whole=True, ge=-(2**63), le=2**64 - 1)
    return CompletionRequest(
        model=text(data, "model"),
        prompts=found,
        max_tokens=number(data, "max_tokens", DEFAULT_MAX_TOKENS, whole=True, ge=0, le=2**31 - 1),
        temperature=number(data, "temperature", 1.0, ge=0, le=100),
        top_p=number(data, "top_p", 1.0, gt=0, le=1),
        top_k=number(data, "top_k", 0, whole=True, ge=0, le=2**31 - 1),
        n=n,
        stop=stop_strings(data.get("stop")),
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        logprobs=number(data, "logprobs", None, whole=True, ge=0, le=MAX_LOGPROBS),
        echo=flag(data, "echo"),
        presence_penalty=number(data, "presence_penalty", 0.0, ge=-2, le=2),
        frequency_penalty=number(data, "frequency_penalty", 0.0, ge=-2, le=2),
        repetition_penalty=number(data, "repetition_penalty", 1.0, gt=0, le=100),
        ignore_eos=flag(data, "ignore_eos"),
    )


def tokenize_request(data: Any) -> str:
    """The text of a /tokenize body {"prompt": "..."}."""
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
        raise invalid("prompt", 'the body must be {"prompt": "some text"}', "invalid_type")
    return valid_unicode(data["prompt"], "prompt")


def detokenize_request(data: Any, vocab_size: int) -> list[int]:
    """The token ids of a /detokenize body {"tokens": [...]}."""
    if not isinstance(data, dict) or "tokens" not in data:
        raise invalid("tokens", 'the body must be {"tokens": [token ids]}', "invalid_type")
    return token_ids(data["tokens"], "tokens", vocab_size)
