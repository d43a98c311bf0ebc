"""Per-test dependency recorder for ``stepkernel watch`` (a pytest plugin).

``stepkernel watch`` runs each cycle with ``-p stepkernel_worker.deps`` and
``STEPKERNEL_DEPS_FILE`` naming a JSON-lines file; without that variable the
plugin does nothing. (A cycle's worker registers this module as a plugin
object before pytest starts, so that ``-p`` finds it and pytest reads no
distribution's entry points for it.) Per test (setup, call and teardown) it
records:

- the code objects of the project that ran (file, qualified name, first
  line): on 3.12+ through ``sys.monitoring`` PY_START under tool ids of its
  own (never coverage's or hypothesis's). One tool sees every code object
  once in the process from the first test on (global events, each disabled
  after its first hit and never re-armed) and arms the second on the
  project's code objects only (local events); the second is disabled after a
  code object's first hit in a test and re-armed on just the code objects
  that fired, at the next test. So pytest's own code costs one callback per
  process, the project's one per test, and nothing is ever re-instrumented
  wholesale. The audit hook below, on 3.12+, is added at the first test too
  (what is recorded is what runs in tests); the record's JSON is put together
  from pieces made once per code object and file. With one free tool id
  the recorder falls back to one tool re-armed by ``restart_events()`` at each
  test (every code object then calls back once per test). On 3.10/3.11
  through entry marks (``entry_marks.py``): the project's modules are
  compiled, once at import, with a one-byte store at the entry of each
  function, so no tracer runs at all. Where project code runs that was not
  compiled so (imported before the recorder, exec'd or swapped in from
  elsewhere: seen through ``sys.modules`` and the ``exec`` and ``__code__``
  audit events) the recorder falls back, from then on, to cProfile's C
  profiler (the ``sys.setprofile`` hook with no Python callback per call);
- files of the project opened for reading, and paths written or removed
  (``sys.addaudithook``; the watch ignores the run's own writes);
- the SHA-1 of each source file when first seen, so a file saved during the
  cycle is known to be newer than what ran.

Collection errors are recorded with the modules they miss, so the watch reruns
an ImportError test file when a file providing that module appears.
"""

from __future__ import annotations

import _thread
import hashlib
import json
import os
import re
import sys
import time
import types
from typing import Any, Callable

import pytest

if sys.version_info < (3, 12):
    # 3.10/3.11 only (3.12+ records with sys.monitoring): importing these is
    # about 2 ms of every cycle that would not use them.
    import cProfile

    from . import entry_marks

ENV = "STEPKERNEL_DEPS_FILE"
#: ``profile`` records with cProfile on 3.10/3.11 instead of entry marks (the benchmark's "before").
RECORDER_ENV = "STEPKERNEL_WATCH_RECORDER"

# Tool ids other tools claim: 0 debuggers, 1 coverage.py, 2 profilers,
# 3 hypothesis (its branch scrutineer), 5 optimizers. Ours is the first free
# one of these, 4 first.
_TOOL_CANDIDATES = (4, 5, 2)
_TOOL_NAME = "stepkernel-watch"

_MISSING_MODULE = re.compile(r"No module named '([^']+)'")
_CANNOT_IMPORT = re.compile(r"cannot import name '[^']+' from '([^']+)'")

_WRITE_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.utime"}


if sys.version_info < (3, 12):

    class _CodeProfiler(cProfile.Profile):
        """cProfile's C profiler, also callable as a Python profile function: a
        test that saves ``sys.getprofile()`` and sets it back gets a working hook."""

        def __init__(self, add: Any) -> None:
            super().__init__()
            self._add = add

        def __call__(self, frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                self._add(frame.f_code)


def project_files(root: str) -> Callable[[str], bool]:
    """Whether a code object's file is the project's: under ``root``, outside
    ``site-packages`` (decided once per file: realpath costs syscalls)."""
    root = os.path.join(os.path.realpath(root), "")
    keep: dict[str, bool] = {}

    def is_project(filename: str) -> bool:
        wanted = keep.get(filename)
        if wanted is None:
            wanted = keep[filename] = (
                os.path.isabs(filename)
                and "site-packages" not in filename
                and (filename.startswith(root) or os.path.realpath(filename).startswith(root))
            )
        return wanted

    return is_project


_marks_installed = False


def _install_marks() -> None:
    """On 3.10/3.11 in watch mode: mark the project's modules imported from now on."""
    global _marks_installed
    if (_marks_installed or sys.version_info >= (3, 12) or not os.environ.get(ENV)
            or os.environ.get(RECORDER_ENV) == "profile"):
        return
    _marks_installed = True
    entry_marks.install(project_files(os.getcwd()))


# As early as pytest loads this plugin (``-p``, before conftest.py files and
# entry-point plugins): whatever imports the project's modules later gets them marked.
_install_marks()


_dumps = json.dumps
#: A str as JSON (json.dumps's own C escaper, without its per-call set-up).
_str = json.encoder.encode_basestring_ascii


def _sha1(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha1(handle.read()).hexdigest()
    except OSError:
        return None


class Recorder:
    """What one test ran and read; see the module docstring."""

    def __init__(self, rootdir: str, out_path: str) -> None:
        self.root = os.path.join(os.path.realpath(rootdir), "")
        self.cwd = os.getcwd()
        self.out = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the session
        self.codes: set[Any] = set()
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.hashes: dict[str, str | None] = {}
        self.active = False
        self.busy = False
        self.incomplete: str | None = None
        self.tool: int | None = None
        self.started = 0.0
        self.reports: list[Any] = []
        #: 3.10/3.11: entry marks record (else the profiler); why not, once project code ran unmarked.
        self.marks = _marks_installed
        self.unmarked: str | None = None
        self.thread = 0
        self._modules_seen: set[str] = set()
        self._modules_count = -1
        self._hooked = False
        self._armed = False
        #: Relative paths and JSON text, made once (the same few recur in every record).
        self._rels: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._code_json: dict[tuple[str, str, int], str] = {}
        self._hash_json: dict[str, str] = {}
        if sys.version_info < (3, 12):
            # From now on: the entry marks' fallback looks at every exec and __code__ swap.
            self._hook()
        self.profiler: Any = None
        # 3.12+: the tool that sees each code object once, and the per-test one.
        self.first_tool: int | None = None
        #: 3.12+: code objects whose PY_START fired (and was disabled) since the last
        #: test's start; the project's ones that fired first in the process during a test.
        self.fired: list[Any] = []
        self.first_hits: list[Any] = []
        self._project = project_files(self.root)
        if sys.version_info >= (3, 12):
            self._claim_tool()

    def _hook(self) -> None:
        """The audit hook; on 3.12+ added at the first test (it records only
        during tests), which spares it the thousands of events of collection."""
        self._hooked = True
        if sys.version_info >= (3, 12):
            watched = frozenset(("open", *_WRITE_EVENTS))
        else:
            watched = frozenset(("open", "sys.setprofile", "exec", "object.__setattr__", *_WRITE_EVENTS))
        audit = self._audit

        def on_audit(event: str, args: tuple) -> None:
            # Most audit events (id(), getattr hooks, imports) are not ours: leave at once.
            if event in watched:
                audit(event, args)

        sys.addaudithook(on_audit)

    # --------------------------------------------------------- code objects

    def _check_modules(self) -> None:
        """Project modules imported without marks (before the recorder, or by another loader)."""
        modules = sys.modules
        if len(modules) == self._modules_count:
            return
        self._modules_count = len(modules)
        seen = self._modules_seen
        for name, module in list(modules.items()):
            if name in seen:
                continue
            seen.add(name)
            filename = getattr(module, "__file__", None)
            if (type(filename) is str and filename.endswith(".py") and self._project(filename)
                    and entry_marks.MARKS not in getattr(module, "__dict__", {})):
                self._unmarked(f"{self._rel(filename)} was imported without marks")
                return

    def _unmarked(self, reason: str) -> None:
        """Project code runs that has no marks: the profiler records from now on (this test too)."""
        if self.unmarked is not None:
            return
        self.unmarked = reason
        if self.active and self.profiler is None:
            if _thread.get_ident() == self.thread:
                self._start_profiler()
            elif self.incomplete is None:
                # Another thread (a pause's client swapping code in): the profiler
                # would only see that thread, so this test's record is incomplete.
                self.incomplete = f"{reason} during the test"

    def _start_profiler(self) -> None:
        if sys.getprofile() is None:
            # cProfile's C profiler: no Python callback per call (a Python
            # hook costs one, and reading frame.f_code one audit event more).
            self.busy = True
            try:
                self.profiler = _CodeProfiler(self.codes.add)
                self.profiler.enable(subcalls=False, builtins=False)
            finally:
                self.busy = False
        else:
            self.incomplete = "another profiler (sys.setprofile) was active"

    def _claim_tool(self) -> None:
        monitoring = sys.monitoring
        free = [tool for tool in _TOOL_CANDIDATES if monitoring.get_tool(tool) is None]
        if not free:
            self.incomplete = "no free sys.monitoring tool id"
            return
        disable = monitoring.DISABLE
        fired = self.fired.append
        py_start = monitoring.events.PY_START
        if len(free) == 1:
            # One tool: every code object is re-armed at each test (restart_events).
            self.tool = free[0]
            monitoring.use_tool_id(self.tool, _TOOL_NAME)

            def on_start(code: Any, offset: int) -> Any:
                fired(code)
                return disable

            monitoring.register_callback(self.tool, py_start, on_start)
            return
        first, tool = free[0], free[1]
        monitoring.use_tool_id(first, _TOOL_NAME)
        monitoring.use_tool_id(tool, _TOOL_NAME)
        self.first_tool, self.tool = first, tool
        project = self._project
        set_local = monitoring.set_local_events
        first_hit = self.first_hits.append
        recorder = self

        def on_first(code: Any, offset: int) -> Any:
            # Once per code object in the process: the project's get the per-test tool.
            if project(code.co_filename):
                set_local(tool, code, py_start)
                if recorder.active:
                    first_hit(code)
            return disable

        def on_start(code: Any, offset: int) -> Any:
            # The project's code objects, once per test (disabled until re-armed).
            # What fires between two tests is re-armed at the next one, not recorded.
            fired(code)
            return disable

        monitoring.register_callback(first, py_start, on_first)
        monitoring.register_callback(tool, py_start, on_start)
        # Its events go on at the first test (``_arm``), not now: what runs only
        # during collection (pytest's collecting, test modules' bodies) is then
        # never instrumented, and import-time code is the import graph's to see.

    def _arm(self) -> None:
        """At the first test: the audit hook, and on 3.12+ the first tool's
        events, on from now on (never toggled: a toggle would re-arm every code object)."""
        self._armed = True
        if not self._hooked:
            self._hook()
        if self.first_tool is not None:
            sys.monitoring.set_events(self.first_tool, sys.monitoring.events.PY_START)

    def start(self, nodeid: str) -> None:
        if not self._armed:
            self._arm()
        self.reads.clear()
        self.writes.clear()
        self.reports = []
        self.incomplete = None if self.tool is not None or sys.version_info < (3, 12) else self.incomplete
        self.thread = _thread.get_ident()
        if self.first_tool is not None:
            # Re-arms the per-test tool on the code objects that fired since the
            # last test: a DISABLE'd event comes back only when the code's events
            # change, hence off and on.
            set_local = sys.monitoring.set_local_events
            tool = self.tool
            py_start = sys.monitoring.events.PY_START
            fired = self.fired
            count = len(fired)
            for code in fired[:count]:
                set_local(tool, code, 0)
                set_local(tool, code, py_start)
            # Only those: what another thread's code appended meanwhile stays, to be recorded and re-armed.
            del fired[:count]
            self.first_hits.clear()
        elif self.tool is not None:
            self.fired.clear()
            sys.monitoring.set_events(self.tool, sys.monitoring.events.PY_START)
            # Re-arms the code objects disabled during the previous test.
            sys.monitoring.restart_events()
        elif sys.version_info < (3, 12):
            self.codes.clear()
            if self.marks:
                entry_marks.clear()
                self._check_modules()  # may start the profiler (code without marks)
                if self.unmarked is not None and self.profiler is None:
                    self._start_profiler()
            else:
                self._start_profiler()
        else:
            self.fired.clear()
        self._write(f'{{"start": {_str(self._test_id(nodeid))}}}\n')
        self.started = time.perf_counter()
        self.active = True

    def stop(self, item: Any, record: bool = True) -> None:
        duration = time.perf_counter() - self.started
        self.active = False
        if self.first_tool is not None:
            # The per-test tool's code objects are all the project's; the callbacks
            # look at `active` (toggling events would re-arm every code object).
            ran = {(co.co_filename, co.co_qualname, co.co_firstlineno) for co in self.fired}
            ran.update((co.co_filename, co.co_qualname, co.co_firstlineno) for co in self.first_hits)
        elif self.tool is not None:
            sys.monitoring.set_events(self.tool, 0)
            project = self._project
            ran = {(co.co_filename, co.co_qualname, co.co_firstlineno)
                   for co in self.fired if project(co.co_filename)}
        elif sys.version_info < (3, 12):
            profiler, self.profiler = self.profiler, None
            if profiler is not None:
                current = sys.getprofile()
                replaced = current is not profiler
                self.busy = True
                try:
                    if not replaced:
                        profiler.disable()
                        if sys.getprofile() is profiler:
                            # Set back by the test as a Python hook: disable() does not undo that.
                            sys.setprofile(None)
                    self.codes.update(e.code for e in profiler.getstats() if not isinstance(e.code, str))
                finally:
                    self.busy = False
                if replaced and self.incomplete is None:
                    # The test installed its own profiler: it keeps it (we step aside),
                    # and this test's record is marked incomplete so it always reruns.
                    self.incomplete = "the test replaced sys.setprofile"
            project = self._project
            ran = {(co.co_filename, getattr(co, "co_qualname", co.co_name), co.co_firstlineno)
                   for co in list(self.codes) if project(co.co_filename)}
            if self.marks:
                ran.update(entry_marks.collected())
        else:
            ran = set()
        if not record:
            return
        self._write(self._finish_line(item, duration, ran))

    def _finish_line(self, item: Any, duration: float, ran: set[tuple[str, str, int]]) -> str:
        """The test's record, one JSON line; the JSON of each code object and
        each file's hash is made once per process (most tests run the same few)."""
        code_json = self._code_json
        hash_json = self._hash_json
        code = []
        files = set()
        for key in ran:
            text = code_json.get(key)
            if text is None:
                filename, qualname, line = key
                text = code_json[key] = f"[{_str(filename)}, {_str(qualname)}, {int(line)}]"
            code.append(text)
            files.add(key[0])
        hashes = []
        for filename in files:
            text = hash_json.get(filename)
            if text is None:
                if filename not in self.hashes:
                    self.busy = True
                    try:
                        self.hashes[filename] = _sha1(filename)
                    finally:
                        self.busy = False
                sha = self.hashes[filename]
                text = hash_json[filename] = f"{_str(filename)}: {'null' if sha is None else _str(sha)}"
            hashes.append(text)
        reads = {}
        if self.reads:
            self.busy = True
            try:
                for path in sorted(self.reads - self.writes):
                    reads[path] = _sha1(path)
            finally:
                self.busy = False
        outcome, report = _outcome(self.reports)
        incomplete = "null" if self.incomplete is None else _str(self.incomplete)
        # json.dumps per value costs more than the rest of the record: strings go
        # through its C escaper directly, the usual empty values are constants.
        return (
            f'{{"test": {_str(self._test_id(item.nodeid))}, '
            f'"file": {_str(self._rel(os.fspath(getattr(item, "path", "") or "")))}, '
            f'"outcome": {_str(outcome)}, "report": {_str(report)}, "duration": {duration!r}, '
            f'"code": [{", ".join(code)}], "hashes": {{{", ".join(hashes)}}}, '
            f'"reads": {_dumps(reads) if reads else "{}"}, '
            f'"writes": {_dumps(sorted(self.writes)) if self.writes else "[]"}, '
            f'"incomplete": {incomplete}, "recorder": {_str(self._how())}}}\n'
        )

    def _how(self) -> str:
        """How this test's code was recorded (for whoever reads the records)."""
        if sys.version_info >= (3, 12):
            return "sys.monitoring"
        if self.marks and self.unmarked is None:
            return "entry marks"
        return f"cProfile ({self.unmarked})" if self.marks else "cProfile"

    # --------------------------------------------------------- files

    def _audit(self, event: str, args: tuple) -> None:
        if self.busy:
            return
        if event == "exec" or event == "object.__setattr__":
            # Project code about to run without marks: an exec'd code object, or a
            # function's __code__ swapped (a hot reload, %%edit).
            if self.marks and self.unmarked is None:
                try:
                    code = args[0] if event == "exec" else (args[2] if args[1] == "__code__" else None)
                    if (type(code) is types.CodeType and not entry_marks.is_marked(code)
                            and self._project(code.co_filename)):
                        self._unmarked(f"{self._rel(code.co_filename)} ran code without marks")
                except Exception:  # noqa: BLE001 - recording must never break a test
                    pass
            return
        if not self.active:
            return
        try:
            if event == "sys.setprofile":
                if sys.version_info < (3, 12) and (self.profiler is not None or not self.marks):
                    # The test's own profiler replaces ours (we step aside): what runs
                    # meanwhile is not seen, so the test always reruns.
                    self.incomplete = "the test replaced sys.setprofile"
            elif event == "open":
                path, mode, flags = args
                if not isinstance(path, (str, bytes)):
                    return
                path = os.fsdecode(path)
                if mode is None:
                    writing = (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & (os.O_CREAT | os.O_TRUNC))
                else:
                    writing = any(c in mode for c in "wax+")
                self._note(path, writing)
            elif event in _WRITE_EVENTS:
                for path in args[:2] if event == "os.rename" else args[:1]:
                    if isinstance(path, (str, bytes)):
                        self._note(os.fsdecode(path), True)
        except Exception:  # noqa: BLE001 - recording must never break a test
            pass

    def _note(self, path: str, writing: bool) -> None:
        full = os.path.realpath(os.path.join(self.cwd, path))
        if not full.startswith(self.root):
            return
        if writing:
            self.writes.add(full)
        elif not full.endswith((".py", ".pyc")) and os.path.isfile(full):
            self.reads.add(full)

    # --------------------------------------------------------- output

    def _rel(self, path: str) -> str:
        rel = self._rels.get(path)
        if rel is None:
            rel = self._rels[path] = self._relpath(path)
        return rel

    def _relpath(self, path: str) -> str:
        if not path:
            return path
        try:
            return os.path.relpath(path, self.cwd).replace(os.sep, "/")
        except ValueError:
            return path

    def _test_id(self, nodeid: str) -> str:
        """The node id relative to the watch's directory (pytest's rootdir may differ)."""
        file, sep, rest = nodeid.partition("::")
        rel = self._ids.get(file)
        if rel is None:
            rootpath = getattr(self, "pytest_root", None)
            if rootpath is None:
                return nodeid
            rel = self._ids[file] = self._rel(os.path.join(rootpath, file))
        return rel + sep + rest

    def collect_error(self, report: Any) -> None:
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        missing = sorted(set(_MISSING_MODULE.findall(text)) | set(_CANNOT_IMPORT.findall(text)))
        path = os.path.join(getattr(self, "pytest_root", self.cwd), report.nodeid.split("::")[0])
        self._write(_dumps({"collect_error": self._rel(path), "missing": missing, "text": text}) + "\n")

    def not_found(self, args: list, invocation_dir: str) -> None:
        ids = []
        for arg in args:
            file, sep, rest = str(arg).partition("::")
            ids.append(self._rel(os.path.join(invocation_dir, file)) + sep + rest)
        self._write(_dumps({"not_found": ids}) + "\n")

    def _write(self, line: str) -> None:
        """Writes one JSON line at once: the watch reads the file as it grows."""
        self.busy = True
        try:
            self.out.write(line)
            self.out.flush()
        finally:
            self.busy = False


def _outcome(reports: list) -> tuple[str, str]:
    outcome, text = "passed", ""
    for report in reports:
        wasxfail = hasattr(report, "wasxfail")
        if report.failed:
            text = getattr(report, "longreprtext", "") or str(report.longrepr)
            if report.when == "call":
                outcome = "failed"
            elif outcome == "passed":
                outcome = "error"
        elif report.skipped and outcome == "passed":
            outcome = "xfailed" if wasxfail else "skipped"
            text = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
    return outcome, text


_recorder: Recorder | None = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any) -> None:
    # This plugin imported before the cycle's environment was set (a
    # pre-imported worker): still before any conftest.py.
    _install_marks()


def pytest_configure(config: Any) -> None:
    global _recorder
    out = os.environ.get(ENV)
    if out and _recorder is None:
        _recorder = Recorder(os.getcwd(), out)
        _recorder.pytest_root = str(config.rootpath)  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: Any, nextitem: Any):
    recorder = _recorder
    if recorder is None:
        yield
        return
    recorder.start(item.nodeid)
    outcome = None
    try:
        outcome = yield
    finally:
        error = getattr(outcome, "exception", None) if outcome is not None else None
        # A test cut short (the watch restarts the cycle: SIGTERM, KeyboardInterrupt)
        # has no result to record; the watch runs it again.
        recorder.stop(item, record=outcome is not None and not isinstance(error, KeyboardInterrupt))


def pytest_runtest_logreport(report: Any) -> None:
    if _recorder is not None and _recorder.active:
        _recorder.reports.append(report)


_session: Any = None


def pytest_sessionstart(session: Any) -> None:
    global _session
    _session = session


def pytest_collectreport(report: Any) -> None:
    if _recorder is None:
        return
    if report.failed:
        _recorder.collect_error(report)
    if report.nodeid == "" and _session is not None:
        # The session's own report, just before pytest turns node ids that match
        # nothing into a usage error that runs no test at all. The watch's ids
        # come from earlier runs: one renamed since (or a TestCase made a mixin)
        # is reported to the watch, which forgets it, and the others run.
        notfound = getattr(_session, "_notfound", None)
        if isinstance(notfound, list) and notfound:
            gone = [arg for arg, collectors in notfound if collectors and "::" in str(arg)]
            if gone:
                _recorder.not_found(gone, str(_session.config.invocation_params.dir))
                notfound[:] = [(arg, collectors) for arg, collectors in notfound if arg not in gone]
