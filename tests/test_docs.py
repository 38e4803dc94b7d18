"""The documentation: the CLI reference matches the app, and the site builds with its Spanish pages."""

import difflib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from gpt2es_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGE = DOCS / "en" / "reference" / "cli.md"
WIDE = {"COLUMNS": "1000", "TERMINAL_WIDTH": "1000", "NO_COLOR": "1"}  # one line per option in --help
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", DOCS / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def test_the_cli_reference_is_the_app_s_help():
    """Change a command, an option's help or a default, and this fails until the page is regenerated."""
    committed, generated = PAGE.read_text(encoding="utf-8").splitlines(), _generator().render().splitlines()
    changed = list(difflib.unified_diff(committed, generated, "committed", "app", n=0, lineterm=""))[2:]
    assert not changed, "docs/en/reference/cli.md is out of date with the CLI: run python docs/gen_cli_reference.py\n" + (
        "\n".join(changed[:12])
    )


def test_the_reference_follows_an_option_s_help_and_default():
    """The page is made from the app: another default or help text gives another page."""
    render = _generator().render

    def make(default: int, help_text: str) -> typer.Typer:
        small = typer.Typer(name="gpt2es")

        @small.command("train")
        def train(steps: Annotated[int, typer.Option("--steps", help=help_text, rich_help_panel="Budget")] = default):
            """Train something."""

        @small.command("sample")
        def sample():
            """Sample something."""

        return small

    page = render(make(5, "Steps to run."))
    assert "## gpt2es train" in page and "### Budget {#gpt2es-train-budget}" in page
    assert "| `--steps` | `<int>` | `5` | Steps to run. |" in page
    assert render(make(6, "Steps to run.")) != page
    assert render(make(5, "Optimizer steps to run.")) != page


def test_every_command_option_and_default_in_help_is_on_the_page():
    page = PAGE.read_text(encoding="utf-8")
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    top = _help()
    for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", top):
        assert f"`{option}`" in page, option
    for name in commands:
        assert re.search(rf"^\W*{name}\s", top, re.MULTILINE), name  # listed by `gpt2es --help`
        assert f"\n## gpt2es {name}\n" in page, name
        text = _help(name)
        section = page.split(f"\n## gpt2es {name}\n")[1].split("\n## ")[0]
        usage = next(line.strip() for line in text.splitlines() if "Usage:" in line)
        assert usage in section, usage
        options = re.findall(r"^│\s+(-{1,2}[a-z][a-z0-9-]*)", text, re.MULTILINE)
        assert len(options) > 1, text
        for option in options:
            assert f"`{option}`" in section or option == "--help", (name, option)
        for default in re.findall(r"\[default: ([^\]]*)\]", text):
            assert f"`{default}`" in section, (name, default)


def test_the_site_builds_with_its_spanish_pages(tmp_path):
    for module in ("mkdocs", "material", "mkdocs_static_i18n"):
        pytest.importorskip(module)
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    spanish = sorted(p.stem for p in (DOCS / "es").glob("*.md"))
    assert "index" in spanish and "getting-started" in spanish
    for stem in spanish:
        built = site / "es" / ("index.html" if stem == "index" else f"{stem}/index.html")
        assert built.is_file(), built
        assert '<html lang="es"' in built.read_text(encoding="utf-8")
    english = (site / "getting-started" / "index.html").read_text(encoding="utf-8")
    assert re.search(r'href="\.\./es/getting-started/"[^>]*hreflang="es"', english), "no language switch"
    assert (site / "es" / "reference" / "cli" / "index.html").is_file()  # English-only pages under /es/ too
