"""The worker compiles its own package once when Python writes no bytecode (PYTHONDONTWRITEBYTECODE)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import stepkernel_worker
from stepkernel_worker import worker


def test_the_package_is_compiled_once_per_interpreter(tmp_path, monkeypatch):
    package = tmp_path / "stepkernel_worker"
    shutil.copytree(Path(stepkernel_worker.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", ".compiled-*"))
    monkeypatch.setattr(worker, "_PACKAGE_DIR", str(package))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    worker._compile_own_package()
    tag = sys.implementation.cache_tag
    assert (package / f".compiled-{tag}").is_file()
    assert (package / "__pycache__" / f"worker.{tag}.pyc").is_file()
    assert list((package / "stepping" / "__pycache__").glob(f"engine.{tag}.pyc"))

    # The next start does not walk the package again (an error in it would be swallowed: count calls).
    import compileall

    calls = []
    monkeypatch.setattr(compileall, "compile_dir", lambda *a, **k: calls.append(a) or True)
    worker._compile_own_package()
    assert calls == []
    (package / f".compiled-{tag}").unlink()
    worker._compile_own_package()
    assert len(calls) == 1, "without the mark the package is compiled"
