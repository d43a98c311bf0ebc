"""Notebooks executed by nbclient against the kernelspec `stepkernel install` wrote."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

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


def bundled_notebooks() -> list[pathlib.Path]:
    listed = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / line for line in listed.stdout.split()]


def test_the_bundled_notebooks_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in bundled_notebooks()}
    assert {"notebooks/hello.ipynb", "examples/shop/walkthrough.ipynb", "examples/shop/progress.ipynb"} <= names


@pytest.mark.parametrize("notebook", bundled_notebooks(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_bundled_notebook_runs_from_its_own_directory(kernelspec, tmp_path, notebook):
    """JupyterLab starts a notebook's kernel in the notebook's directory: so does this."""
    home = tmp_path / "copy"
    shutil.copytree(notebook.parent, home, ignore=shutil.ignore_patterns("__pycache__", ".stepkernel", "fix.patch"))
    nb = nbformat.read(home / notebook.name, as_version=4)
    run(nb, kernelspec, home)  # raises CellExecutionError on any failing cell
    errors = [o for outs in outputs_of(nb) for o in outs if o.output_type == "error"]
    assert not errors, errors


def test_a_kernel_whose_python_lacks_pytest_says_so_and_how_to_choose_another(tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True)
    python = bare / "bin" / "python"
    assert subprocess.run([python, "-c", "import pytest"], capture_output=True).returncode != 0
    prefix = tmp_path / "prefix"
    done = install_kernelspec(prefix, "--python", str(python))
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    home = tmp_path / "shop"
    shutil.copytree(ROOT / "examples" / "shop", home, ignore=shutil.ignore_patterns("__pycache__", ".stepkernel"))
    nb = new_notebook(cells=[new_code_cell("%test tests/test_checkout.py::test_single_items")])
    run(nb, "stepkernel", home, allow_errors=True)
    (error,) = [o for o in outputs_of(nb)[0] if o.output_type == "error"]
    assert error.ename == "NoPytest"
    assert f"{python} has no pytest" in error.evalue, error.evalue
    assert f"{python} -m pip install pytest" in error.evalue
    assert "stepkernel install --python PATH" in error.evalue
