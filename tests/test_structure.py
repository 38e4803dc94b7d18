"""The architecture, checked: imports point one way, the CLI is a thin layer, settings are declared once."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest
import typer

from gpt2es_cli.cli import app
from gpt2es_cli.config import (
    EvalConfig,
    GenerationConfig,
    InferenceConfig,
    InspectConfig,
    PrepareConfig,
    ServeConfig,
    TrainConfig,
)
from gpt2es_cli.settings import field_docs, option_name

PACKAGE = Path(__file__).resolve().parent.parent / "gpt2es_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every package module `path` imports, at the top or inside functions (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule when `sub` is one.
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "gpt2es_cli.checkpoint" in graph and len(graph) > 20  # the walk found the package
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_below_the_cli_imports_it():
    for name, deps in import_graph().items():
        if not name.startswith(("gpt2es_cli.cli", "gpt2es_cli.__main__")):  # python -m gpt2es_cli is the CLI
            assert not {d for d in deps if d.startswith("gpt2es_cli.cli")}, name


def _imported_top_level(path: Path) -> set[str]:
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            tops.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    return tops


def test_the_cli_parses_and_renders_only():
    """CLI modules never touch torch: loading, devices and tensors are the library's."""
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        assert "torch" not in _imported_top_level(path), path.name


def test_the_library_prints_nothing():
    """Only the CLI prints: no print() calls and no rich/typer outside gpt2es_cli/cli."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts[:1]:
            continue
        assert not {"rich", "typer"} & _imported_top_level(path), path
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print"]
        assert not calls, path


def _options(command: str) -> dict[str, object]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in click_command.params if p.name != "_settings_context"}


LOADING = {f.name for f in fields(InferenceConfig)}
"""How a model is loaded (device, dtype, quantize, compile, revision): InferenceConfig's alone."""
COMMANDS = {
    # command: (the settings dataclasses it offers, with the fields it takes (None: all), its own options)
    "train": ([(TrainConfig, None)], {"config_file", "resume", "force"}),
    "prepare": ([(PrepareConfig, None)], set()),
    "sample": ([(GenerationConfig, None), (InferenceConfig, None)],
               {"checkpoint", "prompt", "prompt_file", "no_cache", "json_output", "interactive", "chat"}),
    "eval": ([(EvalConfig, None), (InferenceConfig, ("device", "dtype", "quantize", "revision"))],
             {"checkpoints", "data", "text", "json_output"}),
    "export": ([(InferenceConfig, ("dtype", "revision"))],
               {"checkpoint", "out_dir", "force", "tokenizer", "push_to_hub", "private", "merge", "consolidate"}),
    "inspect": ([(InspectConfig, None), (InferenceConfig, ("revision",))],
                {"target", "tokenizer", "verify", "attention", "image", "json_output"}),
    "serve": ([(ServeConfig, None), (InferenceConfig, ("device", "dtype", "quantize", "revision"))], {"checkpoint"}),
}
"""Every command's options: the fields of settings dataclasses, and the few inputs and output modes of its own."""


def _declared(command: str) -> list[tuple[type, object]]:
    return [(cls, f) for cls, only in COMMANDS[command][0] for f in fields(cls) if only is None or f.name in only]


def test_every_command_is_accounted_for():
    assert set(typer.main.get_command(app).commands) == set(COMMANDS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_comes_from_a_settings_dataclass_or_is_listed_as_the_command_s_own(command):
    """A new hand-written option fails here until it is a field (or, for an input or an output mode, listed)."""
    own = COMMANDS[command][1]
    assert set(_options(command)) == {f.name for _, f in _declared(command)} | own
    assert not own & LOADING, "device, dtype, quantize, compile and revision come from InferenceConfig"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_setting_is_an_option_declared_by_its_field(command):
    """One field = one option, with the field's docstring as help and its default shown: nothing copied."""
    options = _options(command)
    for cls, f in _declared(command):
        option = options[f.name]
        assert option_name(f) in option.opts or option_name(f) in option.secondary_opts or any(
            o.startswith(option_name(f)) for o in option.opts
        ), f.name
        assert field_docs(cls)[f.name].split(" (")[0].rstrip(".") in option.help, f.name
        if f.default is not None and not isinstance(f.default, bool) and option.show_default is True:
            default = list(f.default) if isinstance(f.default, tuple) else f.default  # repeatable: a list
            assert str(option.default) == str(default), f.name


def test_the_loading_options_read_the_same_in_every_command():
    seen: dict[str, tuple] = {}
    for command in COMMANDS:
        for name, option in _options(command).items():
            if name in LOADING and command != "train":
                described = (option.help, option.default, option.opts)
                assert seen.setdefault(name, described) == described, (command, name)
    assert set(seen) == LOADING


def test_the_loggers_are_one_registry():
    """--log-to accepts the registry's names and no others; each names a class that says where it writes."""
    from gpt2es_cli.config import parse_loggers
    from gpt2es_cli.errors import ConfigError
    from gpt2es_cli.training.subscribers import logger_class, registry

    assert parse_loggers(",".join(registry.OPTIONAL)) == ",".join(registry.OPTIONAL)
    with pytest.raises(ConfigError, match="choose from " + ", ".join(registry.OPTIONAL) + "$"):
        parse_loggers("spreadsheet")
    for name in registry.OPTIONAL:
        assert "run" in logger_class(name).where(Path("run"))
    assert imports_of(PACKAGE / "training" / "subscribers" / "registry.py", set(modules())) == set()


def test_the_training_state_is_read_through_its_type():
    """No module indexes a checkpoint's training state as a dict: TrainingState.from_dict is its one reader."""
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.value if isinstance(node, ast.Subscript) else (
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" else None)
            assert not (isinstance(target, ast.Attribute) and target.attr == "training"), f"{path}:{node.lineno}"


def test_budgets_and_stop_reasons_are_enums():
    from typing import get_type_hints

    from gpt2es_cli.training.budget import Budget, StepPlan
    from gpt2es_cli.training.events import StopReason, TrainSummary

    assert get_type_hints(TrainSummary)["stop_reason"] is StopReason
    assert get_type_hints(StepPlan)["budget"] is Budget
    assert {b.value for b in Budget} <= {r.value for r in StopReason}  # a run stops when its budget is reached


def test_field_docs_are_read_from_the_source():
    docs = field_docs(TrainConfig)
    assert docs["seed"] == "Seed of the initial weights, the data order and dropout."
    assert docs["lr"].startswith("Peak learning rate (the AdamW groups'; see --muon-lr). By default")  # joined lines
    assert len(docs) == len(fields(TrainConfig))
