"""The install test: build the package into ./build/site and import it from there."""

import importlib
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
SITE = HERE / "build" / "site"


def test_install():
    # step: copy the package into the install prefix
    shutil.rmtree(SITE, ignore_errors=True)
    shutil.copytree(HERE / "fastsum", SITE / "fastsum")
    # step: a broken install (set JOBS_EXAMPLE_BREAK_INSTALL=1 to see the benchmark skipped)
    if os.environ.get("JOBS_EXAMPLE_BREAK_INSTALL"):
        (SITE / "fastsum" / "__init__.py").unlink()
    # step: import the installed copy
    sys.path.insert(0, str(SITE))
    try:
        module = importlib.import_module("fastsum")
    finally:
        sys.path.remove(str(SITE))
    assert Path(module.__file__).is_relative_to(SITE), module.__file__
    assert module.total(range(4)) == 6
