"""`gpt2es inspect`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("inspect")
def inspect() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es inspect is not built yet")
