"""Inside a pytest-xdist worker served by a kernel of its own: step its tests, pause there.

``stepkernel xdist-worker`` (started by execnet in place of the worker's
interpreter, see ``xdist_controller.py``) runs this interpreter with
``prepare()`` before execnet's bootstrap. execnet keeps the worker's stdin
and stdout for its channel; this module then points fd 1 at the kernel's
pipe (execnet leaves /dev/null there), opens the kernel's private channel
and, once pytest configures the worker, runs its tests under the stepping
engine exactly as the single-process worker does. Nothing goes over
execnet's channel but what xdist itself sends.

PYTEST_DONT_REWRITE: imported before pytest registers it by name, so
pytest must not warn that it cannot rewrite its asserts (it has none).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

PLUGIN = __name__
_ENV = "PYTEST_PLUGINS"
#: The user's own ``PYTEST_PLUGINS`` (None: unset), put back once pytest has read it.
_users_plugins: list[str | None] = []
_state: dict[str, Any] = {}
#: Steps asked for this name are the kernel's barrier (session/src/xdist.rs).
BARRIER = "xdist-barrier"


#: The last line of the kernel's text before execnet's own ``-c`` code (kernel/src/worker.rs).
_PRELUDE_END = "del _stepkernel\n"


def prepare() -> None:
    """Before execnet's bootstrap: have pytest register this module by name.

    ``sys.orig_argv`` becomes what plain xdist started: execnet's ``-c``
    code without the kernel's lines before it, and without this package's
    directory after it.
    """
    old = os.environ.get(_ENV)
    _users_plugins.append(old)
    os.environ[_ENV] = f"{old},{PLUGIN}" if old else PLUGIN
    orig = list(getattr(sys, "orig_argv", None) or [])
    if "-c" in orig:
        at = orig.index("-c")
        script = orig[at + 1] if at + 1 < len(orig) else ""
        if _PRELUDE_END in script and at + 2 < len(orig):
            code = script[script.index(_PRELUDE_END) + len(_PRELUDE_END):]
            sys.orig_argv = [*orig[:at + 1], code, *orig[at + 3:]]


def _restore_environment() -> None:
    if not _users_plugins:
        return
    old = _users_plugins.pop()
    if old is None:
        os.environ.pop(_ENV, None)
    else:
        os.environ[_ENV] = old


def _open_worker() -> Any:
    """The kernel's side of this process: fd 1 on its pipe, its channel, the hello."""
    from ..channel import from_environment, ring_from_environment
    from ..worker import Worker

    fd = os.environ.pop("STEPKERNEL_STDOUT_FD", None)
    if fd is not None:
        # Before pytest's capture saves fd 1: what the process prints outside
        # captured tests reaches the kernel (clients), not execnet's /dev/null.
        os.dup2(int(fd), 1)
        os.close(int(fd))
    worker = Worker(from_environment(), ring_from_environment())
    worker._install_hooks()
    worker.channel.send(
        {
            "type": "hello",
            "pid": os.getpid(),
            "python": {
                "version": ".".join(map(str, sys.version_info[:3])),
                "executable": sys.executable,
                "implementation": sys.implementation.name,
            },
        }
    )
    return worker


def pytest_plugin_registered(plugin: Any, manager: Any) -> None:
    if plugin is not sys.modules[__name__] or _state:
        return
    # Test code (and what it starts) sees the user's PYTEST_PLUGINS only.
    _restore_environment()
    if "STEPKERNEL_CHANNEL_FD" in os.environ:
        _state["worker"] = _open_worker()


def pytest_configure(config: Any) -> None:
    worker = _state.get("worker")
    workerinput = getattr(config, "workerinput", None)
    if worker is None or workerinput is None or "engine" in _state:
        return
    from . import _engine_active
    from .engine import Engine
    from .pytest_plugin import SteppingPlugin

    given = workerinput.get("stepkernel") or {}
    worker.steps_fingerprint = given.get("steps_fingerprint")
    worker._share_flag()
    rootdir = str(config.rootpath)
    engine = Engine(worker, on_error=given.get("on_error", "pause"), rootdir=rootdir)
    engine.shared_code_dir = given.get("shared_code")
    active = contextlib.ExitStack()
    active.enter_context(_engine_active(engine))
    _state.update(engine=engine, active=active)
    engine.emit(
        "session_start",
        runner="pytest",
        args=list(workerinput.get("mainargv") or []),
        on_error=engine.on_error,
        rootdir=rootdir,
        python=sys.version.split()[0],
        pid=os.getpid(),
        worker=workerinput.get("workerid"),
    )
    config.pluginmanager.register(SteppingPlugin(engine), "stepkernel-stepping")


def pytest_sessionfinish(session: Any, exitstatus: Any) -> None:
    engine = _state.get("engine")
    worker = _state.get("worker")
    if engine is None or worker is None:
        return
    code = int(exitstatus)
    if code == 0 and engine.counts.get("fixed"):
        code = 1
    engine.summary(code)
    # A `%continue` that ran this worker's last test is answered now.
    worker._answer_pending_resume(None, code)
    # A round trip: the kernel, and through it the session, have handled
    # every event above before xdist tells the controller this worker is done.
    worker.get_steps(os.path.join(str(session.config.rootpath), ".stepkernel", BARRIER))


def pytest_unconfigure(config: Any) -> None:
    active = _state.pop("active", None)
    if active is not None:
        active.close()
