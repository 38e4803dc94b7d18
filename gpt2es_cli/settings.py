"""Settings declared once: a dataclass field carries its type, default, docstring and limits.

Every settings dataclass (TrainConfig, PrepareConfig, GenerationConfig) declares each setting
as one field:

    lr: float = setting(6e-4, gt=0, le=10, panel=OPTIM)
    \"\"\"Peak learning rate.\"\"\"

From that one declaration come the command-line option (`--lr`, see cli/options.py), its
`--help` text (the docstring) and shown default (the field's default), the key accepted in a
`--config` file (the field name), and the check (`field_problems`): right type, finite, in
range, one of the choices. Cross-field rules stay in the dataclass's own `problems()`.

Also here, beside them, the two parsers for values users type as text, `parse_duration`
('30m') and `parse_size` ('500MB'), and `duration_text`, which writes seconds back as a duration.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import itertools
import math
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from gpt2es_cli.errors import ConfigError, first_line

AUTO = "auto"
"""The value of a setting (spec.auto) that is chosen at run time."""


class Named(str, Enum):
    """An enum of names (a budget, a reason): each member is its name as text, equal to it and printed
    as it, so it reads in messages and records as the plain word."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Spec:
    """What a field declares beyond its type and default."""

    gt: float | None = None
    """Lower bound, exclusive."""
    ge: float | None = None
    """Lower bound, inclusive."""
    lt: float | None = None
    """Upper bound, exclusive."""
    le: float | None = None
    """Upper bound, inclusive."""
    choices: tuple[str, ...] | None = None
    """The values a string setting may take."""
    parse: Callable[[Any], Any] | None = None
    """Turns text (from the command line or a file) into the field's value, e.g. parse_duration."""
    short: str | None = None
    """A one-letter alias on the command line, e.g. '-b'."""
    flag: str | None = None
    """The option's name when it is not --field-name."""
    aliases: tuple[str, ...] = ()
    """More option names (e.g. an old name kept working)."""
    panel: str | None = None
    """The --help section the option is listed in."""
    default_text: str | None = None
    """What a None default resolves to, for --help (e.g. 'runs/<dataset name>')."""
    metavar: str | None = None
    """The placeholder shown in --help (e.g. DURATION)."""
    cli: bool = True
    """False: settable from a --config file or code only."""
    auto: bool = False
    """A number setting that may also be the word 'auto' (chosen at run time, e.g. --batch-size auto)."""


class Settings:
    """What every settings dataclass does with its fields: check them all at once, and build from text.

    A subclass names what it holds (`WHAT`, for the error) and may add cross-field rules by
    extending `problems`."""

    WHAT: ClassVar[str] = "settings"
    """What the error says is invalid, e.g. 'prepare settings'."""
    ERROR: ClassVar[type[Exception]] = ConfigError

    def problems(self) -> list[str]:
        """Every problem with these settings, in words a user can act on (empty when valid)."""
        return field_problems(self)

    def validate(self) -> Any:
        """Raise one error naming every problem; return self when valid."""
        found = self.problems()
        if found:
            raise self.ERROR(f"invalid {self.WHAT}: " + "; ".join(found))
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "options") -> Any:
        """Defaults plus `data`, whose keys must be field names; unknown keys are an error listing the valid ones."""
        return build(cls, data, source)


def setting(default: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field with its Spec (see the module docstring)."""
    if default is MISSING:
        return field(metadata={"spec": Spec(**spec)})
    return field(default=default, metadata={"spec": Spec(**spec)})


def spec_of(f: Field) -> Spec:
    return f.metadata.get("spec") or Spec()


def option_name(f: Field) -> str:
    """The command-line name of a field: --batch-size for batch_size."""
    flag = spec_of(f).flag
    return flag.split("/")[0] if flag else "--" + f.name.replace("_", "-")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string right after its declaration), paragraphs joined into one line."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a frozen app): no help texts, still valid
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of each field."""
    return typing.get_type_hints(cls)  # each class's annotations in its own module's names


def base_type(annotation: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of an annotation such as `int | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 2 and str in args:  # `int | str`: a number or the word auto (Spec.auto)
            args.remove(str)
        return (args[0] if len(args) == 1 else str), optional
    return annotation, False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(x: float) -> str:
    """1048576 -> '1048576', 0.5 -> '0.5', 1e-08 -> '1e-08'."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range_text(spec: Spec) -> str:
    low = f"> {_number(spec.gt)}" if spec.gt is not None else f">= {_number(spec.ge)}" if spec.ge is not None else ""
    high = f"< {_number(spec.lt)}" if spec.lt is not None else f"<= {_number(spec.le)}" if spec.le is not None else ""
    if low and high:
        return f"{low} and {high}"
    return low or high


def _check_value(name: str, kind: type, spec: Spec, value: Any) -> str | None:
    """A problem with one value, or None."""
    if kind is bool:
        return None if isinstance(value, bool) else f"{name} must be true or false (got {value!r})"
    if kind in (int, float):
        if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"{name} must be a whole number (got {value!r})"
        if kind is float and not _is_number(value):
            return f"{name} must be a number (got {value!r})"
        if not math.isfinite(value):
            return f"{name} must be a finite number (got {value!r})"
        if (
            (spec.gt is not None and not value > spec.gt)
            or (spec.ge is not None and not value >= spec.ge)
            or (spec.lt is not None and not value < spec.lt)
            or (spec.le is not None and not value <= spec.le)
        ):
            return f"{name} must be {_range_text(spec)} (got {_number(value)})"
        return None
    if typing.get_origin(kind) is tuple:  # tuple[str, ...]: a repeatable text option
        if not isinstance(value, tuple) or not value:
            return f"{name} must be given at least once (got {value!r})"
        bad = [v for v in value if not isinstance(v, str) or not v.strip()]
        return f"{name} must be text, not empty (got {bad[0]!r})" if bad else None
    if kind in (str, Path):
        if not isinstance(value, (str, Path)):
            return f"{name} must be text (got {value!r})"
        if spec.choices is not None and value not in spec.choices:
            return f"{name} must be one of {', '.join(spec.choices)} (got {value!r})"
    return None


def field_problems(settings: Any, label: Callable[[Field], str] = option_name) -> list[str]:
    """Every field of a settings dataclass that has the wrong type or is out of range, named by `label`
    (the command-line option by default)."""
    found = []
    types_ = field_types(type(settings))
    for f in fields(settings):
        value = getattr(settings, f.name)
        kind, optional = base_type(types_[f.name])
        if value is None:
            if not optional:
                found.append(f"{label(f)} must be set")
            continue
        if spec_of(f).auto and value == AUTO:
            continue
        problem = _check_value(label(f), kind, spec_of(f), value)
        if problem:
            found.append(problem)
    return found


def value_problems(cls: type, data: dict[str, Any]) -> list[str]:
    """Problems of these values on their own (type, finiteness, range, choices), before they are
    combined with other settings; unknown keys are left to `build`."""
    found = []
    types_ = field_types(cls)
    for f in fields(cls):
        if f.name not in data:
            continue
        value = coerce(cls, f.name, data[f.name])
        if value is None or (spec_of(f).auto and value == AUTO):
            continue
        problem = _check_value(option_name(f), base_type(types_[f.name])[0], spec_of(f), value)
        if problem:
            found.append(problem)
    return found


def coerce(cls: type, name: str, value: Any) -> Any:
    """A value from a file or the command line in the field's type (text parsed, 3 -> 3.0 for floats)."""
    f = next(f for f in fields(cls) if f.name == name)
    spec = spec_of(f)
    kind, _ = base_type(field_types(cls)[name])
    if value is None:
        return None
    if spec.auto and isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if spec.parse is not None and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return spec.parse(value, option_name(f))
    if spec.auto and isinstance(value, str) and kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{option_name(f)} must be a number or auto (got {value!r})") from None
    if typing.get_origin(kind) is tuple:  # one value or a list of them
        return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else value
    if kind is float and _is_number(value):
        return float(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    return value


def unknown_keys_error(cls: type, unknown: list[str], source: str) -> ConfigError:
    """A one-line error for keys that are not fields, with close matches and the valid names."""
    names = [f.name for f in fields(cls)]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    return ConfigError(
        f"{source}: unknown setting(s) {', '.join(hints)}; the settings are: {', '.join(names)}"
    )


def build(cls: type, data: dict[str, Any], source: str, base: Any = None) -> Any:
    """`base` (or the defaults) with `data`'s fields replaced, coerced and validated.

    Keys must be field names exactly; an unknown key is an error that lists the valid ones.
    """
    import dataclasses

    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        raise unknown_keys_error(cls, unknown, source)
    values = {k: coerce(cls, k, v) for k, v in data.items()}
    result = dataclasses.replace(base, **values) if base is not None else cls(**values)
    return result.validate()


# --- values typed as text ------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i?))?b?\s*$", re.IGNORECASE)


def parse_duration(value: str | int | float, option: str = "duration") -> float:
    """Seconds from a number (seconds) or a string like '90s', '30m', '1.5h', '2d', '1h30m'."""
    if _is_number(value):
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or not re.fullmatch(r"(?:\d+(?:\.\d+)?[smhd])+", text):
        raise ConfigError(f"invalid duration {value!r} for {option}: use seconds or e.g. 90s, 30m, 1.5h, 1h30m")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION.findall(text))


def duration_text(seconds: float) -> str:
    """Seconds written as parse_duration reads them, for messages: 45s, 4m, 3m30s, 1h30m."""
    seconds = max(1, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    if m:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    return f"{s}s"


def parse_size(value: str | int, option: str = "size") -> int:
    """Bytes from '4MB', '1.5GB', '500k', '2GiB' or '123' (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ConfigError(f"{option} {value!r} is not a size: write e.g. 500MB, 2GB or 1000000")
    number, unit, binary = m.groups()
    power = " kmgt".index(unit.lower()) if unit else 0
    return int(float(number) * (1024 if binary else 1000) ** power)


# --- settings files --------------------------------------------------------------------------


def load_config_file(path: str | Path, section: str = "train") -> dict[str, Any]:
    """Settings from a TOML (.toml) or YAML (.yaml/.yml) file, as a flat dict.

    A `[train]` table (TOML) or `train:` mapping (YAML) is read if it is the only key, else the top level.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {what}: pass a .toml or .yaml file")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({first_line(e)})") from None
    if suffix == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML ({first_line(e)})") from None
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML ({first_line(e)})") from None
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings (key = value)")
    if isinstance(data.get(section), dict) and len(data) == 1:
        data = data[section]
    return data
