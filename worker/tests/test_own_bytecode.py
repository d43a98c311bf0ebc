"""The unpacked worker caches its own bytecode under PYTHONDONTWRITEBYTECODE; nobody else's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import stepkernel_worker

TAG = sys.implementation.cache_tag

# What a worker start imports first, then a module of the engine and a user module beside it.
IMPORTS = """
import sys
sys.path.insert(0, sys.argv[1])
import stepkernel_worker.raw_json, stepkernel_worker.stepping.transform
del sys.path[0]
sys.path.append(sys.argv[2])
import user_module
print(sys.dont_write_bytecode, type(stepkernel_worker.raw_json.__loader__).__name__)
"""


def unpacked(tmp_path: Path, complete: bool) -> Path:
    """A copy of the package laid out as the kernel unpacks it (``.complete`` beside it)."""
    root = tmp_path / "worker-hash"
    shutil.copytree(Path(stepkernel_worker.__file__).parent, root / "stepkernel_worker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if complete:
        (root / ".complete").write_text("")
    user = tmp_path / "user"
    user.mkdir()
    (user / "user_module.py").write_text("VALUE = 1\n")
    return root


def start(tmp_path: Path, root: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-B", "-c", IMPORTS, str(root), str(tmp_path / "user")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_unpacked_package_writes_the_bytecode_of_what_it_imports(tmp_path):
    root = unpacked(tmp_path, complete=True)
    assert start(tmp_path, root) == "True OwnBytecodeLoader"
    package = root / "stepkernel_worker"
    raw_json = package / "__pycache__" / f"raw_json.{TAG}.pyc"
    transform = package / "stepping" / "__pycache__" / f"transform.{TAG}.pyc"
    assert raw_json.is_file() and transform.is_file()
    # Only what was imported: nothing compiled for nothing.
    assert not (package / "__pycache__" / f"worker.{TAG}.pyc").exists()
    # The flag is the user's: their module is compiled, never cached.
    assert not (tmp_path / "user" / "__pycache__").exists()

    # The next start reads the files instead of compiling (they are not written again)...
    written = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (raw_json, transform)}
    os.utime(raw_json, ns=(1, 1))
    mtime = raw_json.stat().st_mtime_ns
    assert start(tmp_path, root) == "True OwnBytecodeLoader"
    assert raw_json.stat().st_mtime_ns == mtime
    assert transform.read_bytes() == written[transform][1]

    # ...and a .pyc Python itself would read: valid for the source as it is.
    import importlib.util

    data = raw_json.read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER
    source = package / "raw_json.py"
    assert int.from_bytes(data[8:12], "little") == int(source.stat().st_mtime) & 0xFFFFFFFF
    assert int.from_bytes(data[12:16], "little") == source.stat().st_size


def test_a_copy_the_kernel_did_not_unpack_follows_pythons_rules(tmp_path):
    root = unpacked(tmp_path, complete=False)
    assert start(tmp_path, root) == "True SourceFileLoader"
    assert not list(root.rglob("*.pyc"))
