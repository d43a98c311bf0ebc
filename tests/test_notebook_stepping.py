"""Notebook-driven stepping: the example notebooks run headless with nbclient
against the installed kernelspec, in a git copy of the bundled example."""

from __future__ import annotations

import os
import shutil
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import GIT_ENV, PYTHON, ROOT, install_kernelspec



@pytest.fixture
def shop(tmp_path, monkeypatch):
    """A git repo holding the example project, and the kernelspec on JUPYTER_PATH."""
    repo = tmp_path / "shop"
    shutil.copytree(ROOT / "examples" / "shop", repo, ignore=shutil.ignore_patterns("__pycache__", ".stepkernel"))
    (repo / ".gitignore").write_text(".stepkernel/\n__pycache__/\nfix.patch\n")
    env = {**os.environ, **GIT_ENV}
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "shop"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    prefix = tmp_path / "prefix"
    done = install_kernelspec(prefix, "--python", PYTHON)
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)
    return repo


def execute(name: str, cwd) -> nbformat.NotebookNode:
    """Runs the notebook that lives in the project `cwd`, from there (as Jupyter does)."""
    nb = nbformat.read(cwd / name, as_version=4)
    NotebookClient(
        nb, kernel_name="stepkernel", timeout=90, startup_timeout=60, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("display_data", "execute_result"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
    return "".join(parts)


def cell_with(nb, source_start: str):
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(source_start):
            return cell
    raise AssertionError(f"no cell starting with {source_start!r}")


def test_walkthrough_fixes_the_test_and_the_patch_applies(shop, tmp_path):
    nb = execute("walkthrough.ipynb", shop)
    assert "tests/test_checkout.py::test_checkout_with_discount" in text_of(cell_with(nb, "%tests"))
    assert "Paused (loaded)" in text_of(cell_with(nb, "%test "))
    assert "assert 2.7 == 4.05" in text_of(cell_with(nb, "%where"))
    assert "Item(name='apple', unit_price=0.5, quantity=4)" in text_of(cell_with(nb, "cart.items"))
    assert text_of(cell_with(nb, "cart.subtotal()")) == "(3.0, 4.5)"
    assert "replaced (journaled" in text_of(cell_with(nb, "%%edit Cart.subtotal"))
    assert text_of(cell_with(nb, "lines")) == "['apple x 4', 'bread x 1']"
    final = [c for c in nb.cells if c.cell_type == "code" and c.source == "%continue"][-1]
    assert "test_checkout_with_discount: fixed" in text_of(final)
    # The progress display was one display updated in place, not a scroll.
    displays = [o for o in final.outputs if o.output_type == "display_data"]
    assert len(displays) == 1 and "text/html" in displays[0].data
    diff = text_of(cell_with(nb, "%diff"))
    assert "item.unit_price * item.quantity" in diff and "{item.quantity} x {item.name}" in diff
    patch = shop / "fix.patch"
    assert patch.exists(), text_of(cell_with(nb, "%patch"))
    assert "git am" in text_of(cell_with(nb, "%patch"))
    # The working tree is untouched; the patch applies to a clean clone and plain pytest passes there.
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=shop,
                          capture_output=True, text=True).stdout == ""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(shop), str(clone)], check=True)
    am = subprocess.run(["git", "am", str(patch)], cwd=clone, capture_output=True, text=True)
    assert am.returncode == 0, am.stderr
    log = subprocess.run(["git", "log", "-1", "--format=%s"], cwd=clone, capture_output=True, text=True).stdout
    assert log.strip() == "Count quantities in Cart.subtotal and fix the receipt test"
    tests = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=clone,
                           capture_output=True, text=True)
    assert tests.returncode == 0, tests.stdout


def test_progress_notebook_steps_table_and_locals(shop):
    nb = execute("progress.ipynb", shop)
    assert "%%edit [N]" in text_of(cell_with(nb, "%help"))
    steps_cells = [c for c in nb.cells if c.cell_type == "code" and c.source == "%steps"]
    first, last = steps_cells
    html = [o for o in first.outputs if o.output_type == "display_data"][0].data["text/html"]
    assert "<table>" in html and "super().setUp()" in html
    assert "pending" in text_of(first) and "passed" in text_of(first)
    assert "pending" not in text_of(last).split("test_half_price", 1)[-1].split("tearDown")[0]
    assert "1.5" in text_of(cell_with(nb, "%locals"))
    assert text_of(cell_with(nb, "total * 2")) == "3.0"
    assert "test_half_price: passed" in text_of(cell_with(nb, "%continue"))
