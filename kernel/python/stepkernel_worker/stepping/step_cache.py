"""Compiled steps cached on disk, the way pytest caches rewritten test modules.

Compiling a function's steps (copying its AST, rewriting its asserts,
``compile()``) costs far more than running most tests, so the step code
objects of each source file are marshalled into
``__pycache__/<name>.<cache tag>-stepkernel[-pytest-<version>].steps`` next to
it (under ``sys.pycache_prefix`` when set, like pytest). A file holds one
header and the entries of the file's functions; the header names everything
the code depends on (the source's hash and path, the interpreter, pytest's
version when asserts are rewritten, a hash of this package's own source and
the instrumenter's fingerprint),
so any change invalidates the whole file. Nothing is written under
``sys.dont_write_bytecode`` (``PYTHONDONTWRITEBYTECODE``); writes are atomic
renames; an unreadable or corrupt file is ignored and rewritten.
``STEPKERNEL_STEP_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import os
import sys
from typing import Any

__tracebackhide__ = True
__unittest = True

#: Bumped when the layout of an entry changes.
FORMAT = 2
SUFFIX = ".steps"


def enabled() -> bool:
    """Whether the cache may be used at all (``STEPKERNEL_STEP_CACHE=0`` disables it)."""
    return os.environ.get("STEPKERNEL_STEP_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def source_hash(directory: str) -> str:
    """Hash of the ``.py`` files of ``directory`` (names and contents)."""
    digest = hashlib.sha256()
    try:
        for name in sorted(n for n in os.listdir(directory) if n.endswith(".py")):
            with open(os.path.join(directory, name), "rb") as fh:
                digest.update(name.encode() + b"\0" + fh.read() + b"\0")
    except OSError:
        # Without the source we cannot tell versions apart: a fresh value per
        # process keeps stale entries from being trusted.
        digest.update(os.urandom(16))
    return digest.hexdigest()


@functools.lru_cache(maxsize=None)
def package_hash() -> str:
    """Hash of the stepping package's source: a changed engine never reads old steps."""
    return source_hash(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(source_path: str) -> str:
    """Where pytest would put the rewritten pyc of ``source_path``."""
    source_path = os.path.abspath(source_path)
    if sys.pycache_prefix:
        drive, rest = os.path.splitdrive(os.path.dirname(source_path))
        return os.path.join(sys.pycache_prefix, rest.lstrip(os.sep))
    return os.path.join(os.path.dirname(source_path), "__pycache__")


def cache_path(source_path: str, tag: str) -> str:
    """The cache file of ``source_path`` for compile mode ``tag``."""
    stem = os.path.basename(source_path)
    if stem.endswith(".py"):
        stem = stem[:-3]
    mode = f"-{tag}" if tag else ""
    return os.path.join(cache_dir(source_path), f"{stem}.{sys.implementation.cache_tag}-stepkernel{mode}{SUFFIX}")


class StepCache:
    """The cached step entries of one source file (loaded once, saved when changed)."""

    def __init__(self, path: str, header: tuple) -> None:
        self.path = path
        self.header = header
        self.entries: dict[Any, tuple] = {}
        self.dirty = False
        self.loaded = False

    @classmethod
    def for_source(cls, filename: str, source_bytes: bytes, tag: str, fingerprint: str | None = None) -> StepCache:
        """The cache of ``filename`` whose current content is ``source_bytes``.

        ``fingerprint`` names the instrumenter that split the file (None:
        unknown, and then entries are checked against its report).
        """
        header = (
            FORMAT,
            sys.version,
            importlib.util.MAGIC_NUMBER,
            package_hash(),
            tag,
            fingerprint,
            filename,
            hashlib.sha256(source_bytes).digest(),
        )
        return cls(cache_path(filename, tag), header)

    def load(self) -> None:
        """Read the file once; a missing, stale or corrupt file leaves the cache empty."""
        if self.loaded:
            return
        self.loaded = True
        try:
            # One read, then loads: marshal.load on a file reads object by
            # object and is several times slower.
            with open(self.path, "rb") as fh:
                data = marshal.loads(fh.read())
        except Exception:  # noqa: BLE001 - any unreadable cache is just a miss
            return
        if (
            type(data) is tuple
            and len(data) == 2
            and data[0] == self.header
            and type(data[1]) is dict
        ):
            self.entries = data[1]

    def get(self, key: Any) -> tuple | None:
        self.load()
        entry = self.entries.get(key)
        return entry if type(entry) is tuple else None

    def put(self, key: Any, entry: tuple) -> None:
        self.load()
        self.entries[key] = entry
        self.dirty = True

    def save(self) -> bool:
        """Write the entries if they changed (never raises; False when nothing was written)."""
        if not self.dirty or sys.dont_write_bytecode or not enabled():
            return False
        self.dirty = False
        try:
            data = marshal.dumps((self.header, self.entries))
        except ValueError:  # an unmarshallable constant: keep compiling this file
            return False
        tmp = f"{self.path}.{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError:
            # Read-only tree, a file where __pycache__ should be, a full disk:
            # the steps are simply compiled again next time.
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        return True
