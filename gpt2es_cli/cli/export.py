"""`gpt2es export`."""

from gpt2es_cli.cli.app import command
from gpt2es_cli.errors import Gpt2esError


@command("export")
def export() -> None:
    """Not built yet."""
    raise Gpt2esError("gpt2es export is not built yet")
