"""Command-line options made from a settings dataclass, so each setting is declared once.

    @command("train")
    @settings_options(TrainConfig)
    def train_command(given: dict[str, Any], resume: ... = None) -> None: ...

adds one option per field of TrainConfig to the command: `--batch-size` for `batch_size`, the
field's docstring as its help, its default as the shown default (never a copied string), the
field's Spec for the short name, section and placeholder. The command receives in `given` only
the settings the user typed (click's parameter source says which), so a `--config` file or a
resumed run's settings sit below them (`TrainConfig.from_dict(file).updated(given)`).
Values are checked by the dataclass, not here, so a setting from a file and from the command
line get the same check and the same message.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, fields
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from gpt2es_cli.settings import base_type, field_docs, field_types, option_name, spec_of


def _shown_default(f: Field) -> bool:
    """Whether click shows the option's real default (a derived one, e.g. 'lr / 10', is put in the
    help text instead: click would show it in parentheses)."""
    return not spec_of(f).default_text and f.default is not MISSING and f.default is not None


def _parameter(cls: type, f: Field) -> inspect.Parameter:
    spec = spec_of(f)
    kind, _ = base_type(field_types(cls)[f.name])
    name = option_name(f)
    repeated = typing.get_origin(kind) is tuple  # tuple[str, ...]: the option may be given several times
    if spec.parse is not None or spec.auto or kind not in (int, float, bool):
        kind = str  # parsed by the dataclass (durations, sizes) or plain text (paths, names)
    if kind is bool:
        decls = [spec.flag if spec.flag and "/" in spec.flag else f"{name}/--no-{name.removeprefix('--')}"]
    else:
        decls = [name, *spec.aliases] + ([spec.short] if spec.short else [])
    if kind is bool and spec.short:
        decls.append(spec.short)
    help_text = escape(field_docs(cls).get(f.name, ""))  # "gpt2es[wandb]" is text, not rich markup
    if spec.choices and "one of" not in help_text:
        help_text = help_text.rstrip(".") + f" (one of {', '.join(spec.choices)})."
    if spec.default_text:
        help_text += f" \\[default: {spec.default_text}]"  # \[: a bracket, not rich markup
    option = typer.Option(
        *decls,
        help=help_text,
        show_default=_shown_default(f),
        rich_help_panel=spec.panel,
        metavar=spec.metavar if spec.metavar is not None else ("" if kind is bool else None),  # flags take no value
    )
    default = None if f.default is MISSING or spec.default_text else f.default
    if repeated:
        annotation: Any = Annotated[Optional[list[str]], option]
        default = list(default) if default is not None else None
    else:
        annotation = Annotated[Optional[kind], option]
        if default is not None and kind is str:
            default = str(default)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


CONTEXT = "_settings_context"


def _typed(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def settings_options(cls: type, into: str = "given", only: Sequence[str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one option per field of `cls` (or of the fields named in `only`); pass what
    the user set as `into`. Stacked, each decorator adds its own dataclass's options."""

    def decorate(fn: Callable) -> Callable:
        parameters = inspect.signature(fn).parameters
        stacked = CONTEXT in parameters  # fn is already a settings_options command: it takes the context too
        own = [p for name, p in parameters.items() if name not in (into, CONTEXT)]
        chosen = [f for f in fields(cls) if spec_of(f).cli and (only is None or f.name in only)]
        unknown = set(only or ()) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
        generated = [_parameter(cls, f) for f in chosen]
        names = {p.name for p in generated}
        clash = names & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__} declares {', '.join(sorted(clash))}, which {cls.__name__} already has")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            ctx = kwargs[CONTEXT] if stacked else kwargs.pop(CONTEXT)
            values = {k: kwargs.pop(k) for k in names}
            # Only what the user typed: defaults must not override a --config file or a resumed run.
            given = {k: v for k, v in values.items() if _typed(ctx, k)}
            return fn(**kwargs, **{into: given})

        hints = _resolved_hints(fn)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)) for p in own]
        context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        params = [context, *own, *generated]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the new signature, not fn's
        return command

    return decorate


def _resolved_hints(fn: Callable) -> dict[str, Any]:
    """fn's annotations as objects (its module may use `from __future__ import annotations`)."""
    return typing.get_type_hints(fn, include_extras=True)
