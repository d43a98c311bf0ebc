"""Notebooks executed by nbclient against the kernelspec `stepkernel install` wrote."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbformat.v4 import new_code_cell, new_notebook

from conftest import PYTHON, ROOT, install_kernelspec, python_version_of


@pytest.fixture
def kernelspec(tmp_path, monkeypatch):
    """The stepkernel kernelspec installed under a temporary prefix, on JUPYTER_PATH."""
    prefix = tmp_path / "prefix"
    done = install_kernelspec(prefix, "--python", PYTHON)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return "stepkernel"


def run(nb, kernel_name, cwd: pathlib.Path, **kwargs):
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=60, startup_timeout=60, resources={"metadata": {"path": str(cwd)}}, **kwargs
    )
    client.execute()
    return nb


def outputs_of(nb):
    return [cell.get("outputs", []) for cell in nb.cells if cell.cell_type == "code"]


def test_hello_notebook(kernelspec, tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "hello.ipynb", as_version=4)
    run(nb, kernelspec, tmp_path)
    printed, value, shown = outputs_of(nb)
    assert [(o.output_type, o.name, o.text) for o in printed] == [("stream", "stdout", "hello from stepkernel\n")]
    (result,) = value
    assert result.output_type == "execute_result"
    assert result.data["text/plain"] == "42"
    (display,) = shown
    assert display.output_type == "display_data"
    assert display.data["text/html"] == "<b>answer = 42</b>"
    assert display.data["text/plain"] == "Badge('answer = 42')"
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert counts == [1, 2, 3]
    assert result.execution_count == 2
    # nbclient stored what the kernel said about itself.
    assert nb.metadata.language_info["name"] == "python"
    assert nb.metadata.language_info["version"] == python_version_of(PYTHON)
    nbformat.validate(nb)


def test_notebook_errors(kernelspec, tmp_path):
    cells = ["x = 1", "raise ValueError('broken cell')", "x + 1"]
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    with pytest.raises(CellExecutionError) as raised:
        run(nb, kernelspec, tmp_path)
    assert "ValueError" in str(raised.value) and "broken cell" in str(raised.value)
    # With allow_errors the next cell runs (it is not aborted by the error before it).
    nb = new_notebook(cells=[new_code_cell(src) for src in cells])
    run(nb, kernelspec, tmp_path, allow_errors=True)
    _, error, after = outputs_of(nb)
    assert [(o.output_type, o.ename, o.evalue) for o in error] == [("error", "ValueError", "broken cell")]
    assert [o.data["text/plain"] for o in after] == ["2"]


def test_notebook_runs_in_its_directory(kernelspec, tmp_path):
    (tmp_path / "data.txt").write_text("from a file next to the notebook")
    nb = new_notebook(cells=[new_code_cell("open('data.txt').read()")])
    run(nb, kernelspec, tmp_path)
    assert outputs_of(nb)[0][0].data["text/plain"] == "'from a file next to the notebook'"
