"""examples/colab.ipynb runs end to end: on the CPU, offline, with its settings cell shrunk to seconds."""

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "colab.ipynb"

# The notebook's settings cell, made tiny: the demo tales, a few seconds of training on the CPU,
# no TensorBoard server, no upload.
TINY_SETTINGS = """
DATASET = "demo"
MAX_BYTES = "200k"
MAX_TIME = "10s"
PRESET = "tiny"
DEVICE = "cpu"
PROMPT = "Había una vez"
TENSORBOARD = False
PUSH_TO = None
DATA_DIR = "data/es"
RUN_DIR = "runs/es"
"""

# Runs first in the test's copy. The kernel must be this interpreter, so that `gpt2es` is this
# checkout's; and a shell command (`!gpt2es ...`) that fails must fail its cell: IPython only
# records its exit status in `_exit_code`.
GUARD = f"""
import shutil
import sys

assert sys.prefix == {sys.prefix!r}, f"the kernel runs {{sys.executable}}, not the tests' Python"
assert shutil.which("gpt2es") == {shutil.which("gpt2es", path=os.path.dirname(sys.executable))!r}, shutil.which("gpt2es")

_shell = get_ipython()
_system = _shell.system


def _system_or_raise(cmd):
    _system(cmd)
    if _shell.user_ns.get("_exit_code"):
        raise RuntimeError(f"!{{cmd}} exited with status {{_shell.user_ns['_exit_code']}}")


_shell.system = _system_or_raise
"""


def read_notebook():
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(NOTEBOOK, as_version=4)


def parameters_cell(nb):
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return cell


def assigned_names(source):
    return {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for target in node.targets}


def test_notebook_is_saved_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = read_notebook()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"
    assert nb.metadata.kernelspec.name == "python3"
    assert assigned_names(parameters_cell(nb).source) == assigned_names(TINY_SETTINGS)


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("tensorboard")  # the train cell logs with --log-to tensorboard
    if shutil.which("gpt2es", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("gpt2es is not installed beside this Python (pip install -e .)")

    nb = read_notebook()
    parameters_cell(nb).source = TINY_SETTINGS.strip()
    nb.cells.insert(0, nbformat.v4.new_code_cell(GUARD.strip()))

    # A kernel spec of our own, found first: a user's python3 kernel could be another Python.
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel and the commands it runs inherit it
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet the kernel's debugger warning
    work = tmp_path / "work"
    work.mkdir()

    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(work)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source

    (sample,) = [c for c in nb.cells if c.get("id") == "sample"]
    text = "".join(o.get("text", "") for o in sample.outputs if o.output_type == "stream")
    assert "Había una vez" in text, text
    continuation = text.split("Había una vez", 1)[1]
    assert len(re.findall(r"[a-záéíóúñü]{3,}", continuation, re.IGNORECASE)) >= 5, text
    assert (work / "runs" / "es" / "last.pth").is_file()
    assert (work / "runs" / "es" / "loss.png").is_file()
