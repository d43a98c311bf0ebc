"""``pytest --stepkernel``: hand the run to ``stepkernel run`` (the stepkernel wheel's pytest plugin).

pytest imports every ``pytest11`` plugin at start-up, so this module is small,
top-level and imports nothing heavy; it does nothing unless ``--stepkernel`` is
given, and nothing inside stepkernel's own worker (which runs pytest itself).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

# (pytest option, `stepkernel run` option, argparse keywords): the mirrored run options.
_RUN_OPTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("--stepkernel-on-error", "--on-error",
     {"choices": ["pause", "fail"], "help": "what a failing step does: pause for a client (default), or fail like plain pytest"}),
    ("--stepkernel-session-dir", "--session-dir",
     {"metavar": "DIR", "help": "session directory (default .stepkernel/sessions/<id>)"}),
    ("--stepkernel-ip", "--ip",
     {"metavar": "ADDR", "help": "address the kernel binds (0.0.0.0 to attach from another machine)"}),
    ("--stepkernel-ports", "--ports",
     {"metavar": "auto|FIRST-LAST", "help": "kernel ports: auto or a range of five, e.g. 9000-9004"}),
    ("--stepkernel-step-marker", "--step-marker",
     {"metavar": "REGEX", "help": "regex for step marker comments, one capture group for the name"}),
    ("--stepkernel-plan-id", "--plan-id",
     {"metavar": "REGEX", "help": "regex for one test plan id in `# step: NAME [ID, ID]`"}),
    ("--stepkernel-hooks", "--hooks",
     {"metavar": "MODULE", "help": "a module of step hooks (stepkernel_step_error, ...) as plain functions"}),
    ("--stepkernel-external-dir", "--external-dir",
     {"metavar": "DIR", "help": "jupyter_server's external kernels directory"}),
]
_RUN_FLAGS: list[tuple[str, str, str]] = [
    ("--stepkernel-quiet", "--quiet", "less stepkernel output"),
    ("--stepkernel-allow-client-shutdown", "--allow-client-shutdown",
     "let an attached client's shutdown request end the session"),
]

# Set by the kernel for its worker (and inherited by what the tests start).
_WORKER_ENV = "STEPKERNEL_CHANNEL_FD"
_LAUNCHER_ENV = "STEPKERNEL_PYTHON"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stepkernel", "stepkernel (run tests step by step, pause on failure)")
    group.addoption(
        "--stepkernel", action="store_true", default=False,
        help="run the tests under stepkernel: a failing step pauses with the test's state alive and "
        "prints how to attach a Jupyter client (the run is handed to `stepkernel run`)",
    )
    for option, _, keywords in _RUN_OPTIONS:
        group.addoption(option, default=None, **keywords)
    for option, _, help_text in _RUN_FLAGS:
        group.addoption(option, action="store_true", default=False, help=help_text)


def pytest_configure(config: pytest.Config) -> None:
    # Registered with or without --stepkernel, so `--strict-markers` runs alike under plain pytest and stepkernel.
    config.addinivalue_line("markers", "plan(*ids): test plan items the test covers (stepkernel reports by them)")


def _inside_worker() -> bool:
    """True in stepkernel's worker (and processes it starts): never hand over again."""
    return "stepkernel_worker" in sys.modules or _WORKER_ENV in os.environ


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def _pytest_args(args: tuple[str, ...] | list[str]) -> list[str]:
    """The command line without this plugin's options (pytest's own options pass through)."""
    valued = {option for option, _, _ in _RUN_OPTIONS}
    flags = {"--stepkernel", *(option for option, _, _ in _RUN_FLAGS)}
    rest: list[str] = []
    skip_value = False
    for index, arg in enumerate(args):
        if skip_value:
            skip_value = False
        elif arg == "--":  # after it, every argument is pytest's positional
            rest.extend(args[index:])
            break
        elif arg in flags:
            continue
        elif arg in valued:
            skip_value = True
        elif arg.split("=", 1)[0] in valued and "=" in arg:
            continue
        else:
            rest.append(arg)
    return rest


def _run_command(config: pytest.Config, binary: str) -> list[str]:
    command = [binary, "run", "--runner", "pytest"]
    for option, run_option, _ in _RUN_OPTIONS:
        value = config.getoption(_dest(option))
        if value is not None:
            command += [run_option, str(value)]
    for option, run_option, _ in _RUN_FLAGS:
        if config.getoption(_dest(option)):
            command.append(run_option)
    return [*command, "--", *_pytest_args(config.invocation_params.args)]


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("stepkernel") or _inside_worker():
        return None
    if config.getoption("help", False) or config.getoption("version", False):
        return None  # pytest answers those itself
    for dest, flag in (("usepdb", "--pdb"), ("trace", "--trace")):
        if config.getoption(dest, default=False):
            raise pytest.UsageError(
                f"{flag} cannot be used with --stepkernel: a failing step already pauses with the "
                "test's state alive for a Jupyter client (drop one of the two)"
            )
    from stepkernel._find_stepkernel import StepkernelNotFound, find_stepkernel_bin

    try:
        binary = find_stepkernel_bin()
    except StepkernelNotFound as err:
        raise pytest.UsageError(str(err)) from None
    return _hand_over(_run_command(config, binary), str(config.invocation_params.dir))


def _hand_over(command: list[str], cwd: str) -> int:
    """Runs ``stepkernel run`` in the foreground; Ctrl-C is its to handle (it ends the session cleanly)."""
    import signal
    import subprocess

    env = dict(os.environ)
    if sys.executable:
        env[_LAUNCHER_ENV] = sys.executable
    process = subprocess.Popen(command, cwd=cwd, env=env)
    previous = None
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (pytest.main from a thread): keep the handler
        pass
    try:
        code = process.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return code if code >= 0 else 128 - code
