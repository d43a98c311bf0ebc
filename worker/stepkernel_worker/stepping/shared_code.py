"""Test modules compiled once for all of a run's local xdist workers.

Every xdist worker imports every test module it collects, so each parsed,
assertion-rewrote, stepped and compiled every one of them (without ``.pyc``
files, as under ``PYTHONDONTWRITEBYTECODE=1``, on every run). Given the
run's shared directory (``<session>/steps``, which the controller names to
its local workers), the first worker to import a module stores its code
there and the others load it: the same code object they would have
compiled, as from a ``.pyc``. A worker compiling a module holds an ``flock``
on its entry meanwhile, so another importing the same module waits for it
rather than compiling it too. An entry is named by the module's path and
the ``.pyc`` tag (Python, pytest, this transform and the instrumenter's
options), and holds the hash of the source it was compiled from: a file that
changed is compiled again. The session removes the directory at its end.
"""

from __future__ import annotations

import fcntl
import hashlib
import marshal
import os
import time
import types
from typing import Callable

#: The first bytes of an entry (then the source's SHA-256, then the code's marshal).
MAGIC = b"stepkernel-code 1\n"
#: How long a worker waits for another compiling the same module before compiling it itself.
WAIT_S = 60.0
#: How often a waiting worker looks at the lock.
POLL_S = 0.002


class SharedCode:
    """One run's shared directory of compiled test modules, for one ``.pyc`` tag."""

    def __init__(self, directory: str, tag: str) -> None:
        self.directory = directory
        self.tag = tag

    def code(self, path: str, source: bytes, compile_it: Callable[[], types.CodeType | None]) -> types.CodeType | None:
        """The code of ``path`` holding ``source``: stored by another worker, else ``compile_it()`` (stored
        unless None)."""
        digest = hashlib.sha256(source).digest()
        key = hashlib.sha256(f"{self.tag}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        entry = os.path.join(self.directory, f"{key}.code")
        code = _read(entry, digest)
        if code is not None:
            return code
        lock = _lock(f"{entry}-lock")
        try:
            if lock is not None:
                # Compiled by the worker that held the lock while this one waited.
                code = _read(entry, digest)
                if code is not None:
                    return code
            code = compile_it()
            if code is not None:
                _write(entry, digest, code)
            return code
        finally:
            if lock is not None:
                os.close(lock)


def shared(directory: str | None, tag: str) -> SharedCode | None:
    """The run's shared code for ``tag`` in ``directory`` (None: not a local xdist worker, or no directory)."""
    if not directory:
        return None
    try:
        # Inside the session's directory, which is this user's only (0700).
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return SharedCode(directory, tag)


def _lock(path: str) -> int | None:
    """An exclusive ``flock`` on ``path`` (waited for up to WAIT_S); None when not had."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        except OSError:
            break
    os.close(fd)
    return None


def _read(entry: str, digest: bytes) -> types.CodeType | None:
    try:
        with open(entry, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    start = len(MAGIC) + len(digest)
    if not data.startswith(MAGIC) or data[len(MAGIC):start] != digest:
        return None
    try:
        code = marshal.loads(data[start:])
    except (EOFError, ValueError, TypeError):
        return None
    return code if isinstance(code, types.CodeType) else None


def _write(entry: str, digest: bytes, code: types.CodeType) -> None:
    """Stores ``code`` (renamed into place: a reader sees the whole entry or none)."""
    tmp = f"{entry}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(MAGIC + digest + marshal.dumps(code))
        os.replace(tmp, entry)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
