"""Our exception types. Each message says what is wrong and how to fix it, in one line.

The CLI maps every `Gpt2esError` to a one-line message on stderr and exit code 1.
"""


class Gpt2esError(Exception):
    """Base class: a problem the user can act on (bad input, missing file, ...)."""


class ConfigError(Gpt2esError):
    """An invalid model, training or generation setting."""


class CheckpointError(Gpt2esError):
    """A checkpoint that is missing, corrupt, unsafe, or not ours."""


class TokenizerError(Gpt2esError):
    """A tokenizer that cannot be found, read or used."""


class DataError(Gpt2esError):
    """Input data or a prepared dataset that cannot be used."""


class GenerationError(Gpt2esError):
    """Generation settings or a prompt that cannot be used."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), at most `limit` characters.

    Library code wraps foreign exceptions (torch, yaml, json, datasets) in ours with this, so a
    message stays one line whatever the original said.
    """
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
