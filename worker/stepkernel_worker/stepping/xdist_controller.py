"""The controller side of a stepped pytest-xdist run (``stepkernel run -n N``).

Each worker's interpreter is started through ``stepkernel xdist-worker``, a
kernel of its own that serves it (``xdist_worker.py`` is the worker's
side): its tests are stepped, and a failing step pauses that worker only,
attachable at ``<session>/workers/<gw-id>/connection.json``. ``--dist
worksteal`` is the default, so idle workers take a paused worker's queue.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

import pytest

#: Where a run's local workers share what they make once (the session's step store, step_store.rs).
SHARED_DIR = "steps"

#: Printed when the user chose ``--dist load``.
LOAD_NOTE = (
    "stepkernel: --dist load keeps the tests queued for a paused worker waiting until it resumes; "
    "--dist worksteal (stepkernel's default under xdist) lets the other workers take them"
)


class XdistController:
    """Registered beside the stepping plugin when the run uses xdist (``start``)."""

    def __init__(self, engine: Any, spec: dict) -> None:
        self.engine = engine
        self.spec = spec
        #: Workers without a kernel (remote gateways): their reports by test, until its teardown.
        self.unstepped: set[str] = set()
        #: Remote workers' setup and TCP relay (``xdist_remote.py``), made on the first.
        self.remote: Any = None

    # xdist's own hooks: optional, so `-p no:xdist` leaves this plugin valid.
    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_setupnodes(self, config: Any, specs: list) -> None:
        for spec in specs:
            if spec.popen and not getattr(spec, "via", None):
                spec.python = self._wrapped(spec)
                continue
            why = "stepkernel steps local workers and direct --tx socket= / ssh= ones"
            if (spec.socket or spec.ssh) and not spec.via:
                why = self._remote().setup(config, spec)
                if why is None:
                    continue
            if not self.unstepped:
                # Registered only now: without unstepped workers, no report of any test needs it.
                config.pluginmanager.register(_UnsteppedReports(self), "stepkernel-unstepped-reports")
            self.unstepped.add(spec.id)
            print(f"stepkernel: xdist worker {spec.id} ({spec}) runs its tests unstepped: {why}",
                  file=sys.stderr, flush=True)

    def _remote(self) -> Any:
        if self.remote is None:
            from .xdist_remote import RemoteWorkers

            self.remote = RemoteWorkers(self.spec)
        return self.remote

    def _wrapped(self, spec: Any) -> str:
        python = spec.python or sys.executable
        command = [
            self.spec["bin"], "xdist-worker",
            "--session-dir", self.spec["session_dir"],
            "--worker", spec.id,
            "--python", python,
            "--ip", self.spec.get("ip") or "127.0.0.1",
        ]
        for flag, key in (("--step-marker", "step_marker"), ("--plan-id", "plan_id"),
                          ("--external-dir", "external_dir")):
            if self.spec.get(key):
                command += [flag, self.spec[key]]
        command.append("--")
        return shlex.join(command)

    @pytest.hookimpl(trylast=True, optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        """A worker died in a test: the session records the test as xdist reports it."""
        if report.outcome == "rerun":  # another plugin runs it again
            return
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        self.engine.emit("test_finish", test=crashitem, outcome=report.outcome, duration_s=0.0,
                         longrepr=str(report.longrepr)[:2000], worker=getattr(gateway, "id", None),
                         crashed=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        given = {"on_error": self.engine.on_error, "steps_fingerprint": self.engine.steps_fingerprint}
        spec = getattr(getattr(node, "gateway", None), "spec", None)
        if spec is not None and spec.popen and not spec.via and self.spec.get("session_dir"):
            # A worker on this machine: it shares compiled test modules with the others (shared_code.py).
            given["shared_code"] = os.path.join(self.spec["session_dir"], SHARED_DIR)
        node.workerinput["stepkernel"] = given


class _UnsteppedReports:
    """The controller's plugin recording the tests of unstepped workers."""

    def __init__(self, controller: XdistController) -> None:
        self.controller = controller
        self._reports: dict[str, list] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        """An unstepped worker's test: the session records it from xdist's reports."""
        gateway = getattr(getattr(report, "node", None), "gateway", None)
        worker = getattr(gateway, "id", None)
        if worker not in self.controller.unstepped:
            return
        self._reports.setdefault(report.nodeid, []).append(report)
        if report.when != "teardown":
            return
        from .pytest_plugin import SteppingPlugin

        reports = self._reports.pop(report.nodeid)
        outcome, longrepr = SteppingPlugin._outcome(reports)
        engine = self.controller.engine
        engine.emit("test_start", test=report.nodeid, phases=[], worker=worker)
        engine.emit("test_finish", test=report.nodeid, outcome=outcome,
                    duration_s=round(sum(r.duration for r in reports), 6), longrepr=longrepr[:2000],
                    worker=worker, stepped=False)


#: pytest-xdist's options (a usage error naming them may mean xdist is missing).
_XDIST_OPTIONS = ("-n", "--numprocesses", "--tx", "--dist", "--maxprocesses")


def usage_hint(args: list[str], code: int) -> None:
    """After pytest's usage error: say so when xdist's options met an interpreter without xdist."""
    if code != 4:
        return
    named = [a for a in args if a.split("=", 1)[0] in _XDIST_OPTIONS or (a.startswith("-n") and a[2:].isdigit())]
    if not named:
        return
    import importlib.util

    disabled = "no:xdist" in args or "-pno:xdist" in args
    if importlib.util.find_spec("xdist") is not None and not disabled:
        return
    why = "it is disabled with -p no:xdist" if disabled else "it is not installed there"
    print(f"stepkernel: {named[0]} is an option of pytest-xdist, which {sys.executable} does not load ({why}); "
          f"install it with: {sys.executable} -m pip install pytest-xdist", file=sys.stderr, flush=True)


def start(engine: Any, config: Any) -> None:
    """A run that uses xdist (``-n``, ``--tx``): the controller registered, worksteal made the default.

    Called from the stepping plugin's ``pytest_cmdline_main`` wrapper, before
    xdist's own (which makes ``-n`` mean ``--dist load``): "no" here is the
    user's choice of nothing.
    """
    config.pluginmanager.register(XdistController(engine, engine.host.xdist), "stepkernel-xdist-controller")
    dist = getattr(config.option, "dist", "no")
    if dist == "no":
        config.option.dist = "worksteal"
    elif dist == "load":
        print(LOAD_NOTE, file=sys.stderr, flush=True)
