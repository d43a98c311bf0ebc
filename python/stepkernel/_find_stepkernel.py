"""Where pip (or uv, pipx, ``--prefix``, ``--target``, ``--user``) put the ``stepkernel`` binary.

The places and their order follow ruff's ``_find_ruff.py`` (shared with uv).
"""

from __future__ import annotations

import os
import sys
import sysconfig

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~10 ms at every kernel start)
if TYPE_CHECKING:
    from collections.abc import Iterator

#: The variable the binary's interpreter discovery reads: the launching interpreter.
LAUNCHER_ENV = "STEPKERNEL_PYTHON"
#: Beside it: that interpreter's version (the kernel answers kernel_info without waiting for it).
LAUNCHER_VERSION_ENV = "STEPKERNEL_PYTHON_VERSION"


class StepkernelNotFound(FileNotFoundError):
    """The ``stepkernel`` binary is in none of the places an installer puts scripts."""


def find_stepkernel_bin() -> str:
    """The path of the ``stepkernel`` binary installed with this package."""
    exe = "stepkernel" + (sysconfig.get_config_var("EXE") or "")
    tried: list[str] = []
    # Lazily: the first place is the usual answer, and the later ones cost imports.
    for target in _places():
        if not target or target in tried:
            continue
        tried.append(target)
        path = os.path.join(target, exe)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise StepkernelNotFound(
        f"could not find the {exe} binary installed with the stepkernel package; looked in:\n"
        + "".join(f"  - {target}\n" for target in tried)
        + "reinstall stepkernel (pip install --force-reinstall stepkernel), or put the binary on PATH"
    )


def _places() -> Iterator[str | None]:
    """Where installers put scripts, in ruff's order."""
    # The environment's scripts directory (a virtualenv, or the interpreter's own).
    yield sysconfig.get_path("scripts")
    # The base interpreter's, when this is a virtualenv over it.
    yield sysconfig.get_path("scripts", vars={"base": sys.base_prefix})
    here = os.path.dirname(os.path.abspath(__file__))
    # `pip install --prefix` or `uv run --with`: <prefix>/bin above lib/python3.X/site-packages.
    yield _join(_strip_suffix(here, "Lib/site-packages/stepkernel"), "Scripts")
    yield _join(_strip_suffix(here, "lib/python3*/site-packages/stepkernel"), "bin")
    # `pip install --target DIR`: DIR/bin beside the package.
    yield _join(_strip_suffix(here, "stepkernel"), "Scripts" if os.name == "nt" else "bin")
    # `pip install --user`.
    yield _user_scripts()


def _user_scripts() -> str | None:
    try:
        scheme = sysconfig.get_preferred_scheme("user")
        return sysconfig.get_path("scripts", scheme=scheme)
    except (KeyError, AttributeError):
        return None


def _strip_suffix(path: str, pattern: str) -> str | None:
    """``path`` without its last components when they match ``pattern`` (``/``-separated, fnmatch)."""
    from fnmatch import fnmatch

    parts = path.split(os.sep)
    wanted = pattern.split("/")
    if len(parts) <= len(wanted):
        return None
    if not all(fnmatch(part, want) for part, want in zip(reversed(parts), reversed(wanted))):
        return None
    return os.sep.join(parts[: -len(wanted)])


def _join(path: str | None, *parts: str) -> str | None:
    return os.path.join(path, *parts) if path else None
