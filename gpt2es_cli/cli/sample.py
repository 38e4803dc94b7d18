"""`gpt2es sample`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("sample")
def sample() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es sample is not built yet")
