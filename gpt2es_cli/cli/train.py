"""`gpt2es train`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("train")
def train() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es train is not built yet")
