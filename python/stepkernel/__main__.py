"""``python -m stepkernel ...``: run the stepkernel binary with this interpreter as the user's Python.

This is also what the wheel's kernelspec runs: Jupyter puts its own
``sys.executable`` in place of ``python``, so the kernel runs code in the
interpreter Jupyter was started from.
"""

from __future__ import annotations

import os
import sys

from ._find_stepkernel import LAUNCHER_ENV, LAUNCHER_VERSION_ENV, StepkernelNotFound, find_stepkernel_bin


def main() -> int:
    """Replace this process with the binary (POSIX), or run it and pass on its status."""
    try:
        binary = find_stepkernel_bin()
    except StepkernelNotFound as err:
        print(f"stepkernel: error: {err}", file=sys.stderr)
        return 2
    if sys.executable:
        os.environ[LAUNCHER_ENV] = sys.executable
        # kernel_info can then answer before the worker has started.
        os.environ[LAUNCHER_VERSION_ENV] = "%d.%d.%d" % sys.version_info[:3]
    argv = [binary, *sys.argv[1:]]
    if sys.platform == "win32":
        import subprocess

        try:
            return subprocess.run(argv).returncode
        except KeyboardInterrupt:
            return 2
    os.execv(binary, argv)
    return 2  # not reached: execv replaced this process


if __name__ == "__main__":
    sys.exit(main())
