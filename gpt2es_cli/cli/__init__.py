"""Command-line interface: parse options, call the library, render with rich. Nothing else.

One module per command; importing them registers them on `app`.
"""

from gpt2es_cli.cli import eval as _eval  # noqa: F401
from gpt2es_cli.cli import export as _export  # noqa: F401
from gpt2es_cli.cli import inspect as _inspect  # noqa: F401
from gpt2es_cli.cli import prepare as _prepare  # noqa: F401
from gpt2es_cli.cli import sample as _sample  # noqa: F401
from gpt2es_cli.cli import serve as _serve  # noqa: F401
from gpt2es_cli.cli import train as _train  # noqa: F401
from gpt2es_cli.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
