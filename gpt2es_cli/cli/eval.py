"""`gpt2es eval`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("eval")
def eval() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es eval is not built yet")
