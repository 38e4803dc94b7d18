"""The Typer app, its global options, and the single exit point for errors.

Command modules register through `command(...)`: it maps our exceptions to a one-line message
on stderr and exit code 1 (usage errors exit 2, from Typer); the traceback only with --debug.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from gpt2es_cli import __version__
from gpt2es_cli.errors import Gpt2esError, first_line

# Typer bundles its own Click; its exception classes are reached through the public BadParameter.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class _PlainHelpFlag:
    """--help is a flag: no `<bool>` placeholder beside it in the help (as for every other flag)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_PlainHelpFlag, TyperCommand):
    pass


class _OneLineErrors(_PlainHelpFlag, TyperGroup):
    """The app's group: a usage error (a mistyped value, an unknown option, a missing argument) is
    one 'error:' line on stderr and a hint line, exit code 2, instead of Typer's boxed panel."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `gpt2es` alone: its help, as Typer shows it
                typer.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
                sys.exit(e.exit_code)
            err_console.print(f"[bold red]error:[/] {escape(_one_line(e.format_message()))}", soft_wrap=True)
            command = e.ctx.command_path if e.ctx is not None else "gpt2es"
            err_console.print(f"[dim]see: {escape(command)} --help[/]", soft_wrap=True)
            sys.exit(e.exit_code)
        except _ClickException as e:
            err_console.print(f"[bold red]error:[/] {escape(_one_line(e.format_message()))}", soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            err_console.print("[bold red]error:[/] aborted", soft_wrap=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _one_line(message: str) -> str:
    """A message on one line: its lines joined, blank ones dropped."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


app = typer.Typer(
    cls=_OneLineErrors,
    name="gpt2es",
    help="Train GPT-2-style language models on Spanish text: prepare, train, sample, eval, inspect, export, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False, emoji=False)  # results: stdout (":-1:" in a path stays text)
err_console = Console(stderr=True, highlight=False, emoji=False)  # errors, warnings and hints: stderr
_state = {"debug": False}
CHECKPOINT_HELP = (
    "A gpt2es checkpoint (.pth), a run directory, a local Hugging Face model directory, or a Hub model id "
    "(owner/name, e.g. DeepESP/gpt2-spanish; from the cache first)."
)


def _version(value: bool) -> None:
    if value:
        console.print(f"gpt2es {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[
        bool, typer.Option("--debug", metavar="", help="Show the full traceback when something fails.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, metavar="", help="Show the version and exit."),
    ] = False,
) -> None:
    """Train GPT-2-style language models on Spanish text."""
    _state["debug"] = debug or os.environ.get("GPT2ES_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print 'error: message' on stderr as one line; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    """A hint on stderr, e.g. which checkpoint a default picked."""
    err_console.print(f"[dim]{escape(message)}[/]", soft_wrap=True)


def command(name: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Register a command whose failures end in one line on stderr, not a traceback."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort, typer.BadParameter):
                raise
            except Gpt2esError as e:
                if _state["debug"]:
                    raise
                raise fail(_one_line(str(e))) from None
            except KeyboardInterrupt:
                if _state["debug"]:
                    raise
                raise fail("interrupted", code=130) from None
            except Exception as e:  # a bug or an environment problem: still one line by default
                if _state["debug"]:
                    raise
                raise fail(f"{type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)") from None

        app.command(name, cls=_Command, **kwargs)(run)
        return fn

    return register
