"""`gpt2es prepare`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("prepare")
def prepare() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es prepare is not built yet")
