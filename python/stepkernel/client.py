"""Query and steer stepkernel sessions from Python, and run tests as jobs.

Standard library only. A running ``stepkernel run`` listens on
``control.sock`` in its session directory (JSON lines, protocol version 1,
one request and one response each; the verbs are in README.md). A finished
session answers ``status``, ``tests`` and ``events`` from its files.

    from stepkernel.client import Job, Session

    install = Job(tests=["tests/test_install.py::test_install"], on_error="fail").run()
    if install.passed:
        Job(tests=["tests/test_bench.py::test_benchmark"], on_error="fail").run()

    session = Session.latest()          # the latest live session of ./
    print(session.status()["state"])
    session.pause()
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = [
    "PROTOCOL_VERSION",
    "ControlError",
    "NotSupported",
    "SessionEnded",
    "SessionNotFound",
    "Session",
    "TestResult",
    "Job",
    "JobResult",
]

#: The control protocol version this client speaks.
PROTOCOL_VERSION = 1

_SOCKET = "control.sock"
_FINISHED = "finished"


class ControlError(Exception):
    """A session refused a request; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotSupported(ControlError):
    """The verb exists but this stepkernel cannot do it yet (``queue``, ``run_test``)."""


class SessionEnded(ControlError):
    """The session is not running (finished, died, or ended while we waited)."""


class SessionNotFound(ControlError):
    """No session where one was looked for."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _error(response: Mapping[str, Any]) -> ControlError:
    error = response.get("error") or {}
    code = str(error.get("code", "error"))
    message = str(error.get("message", "the session refused the request"))
    if code == "not_supported":
        return NotSupported(code, message)
    if code == "ended":
        return SessionEnded(code, message)
    return ControlError(code, message)


@dataclasses.dataclass(frozen=True)
class TestResult:
    """One test's outcome."""

    nodeid: str
    outcome: str
    duration_s: float | None = None

    __test__ = False  # not a pytest test class

    @property
    def passed(self) -> bool:
        """True for passed, xfailed and (edited into passing) fixed tests."""
        return self.outcome in ("passed", "xfailed", "fixed")


class Session:
    """A stepkernel session directory: live over its control socket, else from its files."""

    def __init__(self, session_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(session_dir).resolve()
        if not (self.dir / "session.json").exists():
            raise SessionNotFound("not_found", f"{self.dir} is not a stepkernel session (no session.json)")

    # ------------------------------------------------------------ finding

    @classmethod
    def latest(cls, path: str | os.PathLike[str] = ".") -> "Session":
        """The latest live session of the project at ``path``, else its latest session."""
        root = Path(path).resolve() / ".stepkernel" / "sessions"
        found: list[tuple[tuple[str, float], bool, Path]] = []
        for meta_file in root.glob("*/session.json"):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                continue  # being written, or not a session
            try:
                # Ids and start stamps have one-second resolution; the connection
                # file's mtime orders sessions started in the same second.
                written = os.stat(meta_file.parent / "connection.json").st_mtime
            except OSError:
                written = 0.0
            live = meta.get("state") != _FINISHED and _pid_alive(int(meta.get("pid") or 0))
            found.append(((str(meta.get("started", "")), written), live, meta_file.parent))
        if not found:
            raise SessionNotFound("not_found", f"no stepkernel sessions in {root} (start one with `stepkernel run`)")
        live = [f for f in found if f[1]]
        return cls(max(live or found, key=lambda f: f[0])[2])

    # ------------------------------------------------------------ facts

    @property
    def id(self) -> str:
        """The session id."""
        return str(self.meta().get("id", self.dir.name))

    @property
    def socket_path(self) -> Path:
        """The control socket."""
        return self.dir / _SOCKET

    def meta(self) -> dict[str, Any]:
        """``session.json`` (id, pid, state, paused_at, tests, edits, exit_code...)."""
        try:
            return json.loads((self.dir / "session.json").read_text())
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        """Whether the session's process runs and has not finished."""
        meta = self.meta()
        return meta.get("state") != _FINISHED and _pid_alive(int(meta.get("pid") or 0))

    def __repr__(self) -> str:
        return f"Session({str(self.dir)!r})"

    # ------------------------------------------------------------ protocol

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = self.socket_path
        # A deep session directory holds a symlink to a short socket path (sun_path is 108 bytes).
        target = Path(os.readlink(path)) if path.is_symlink() else path
        try:
            sock.connect(str(target))
        except OSError as exc:
            sock.close()
            if os.path.lexists(path) and not _pid_alive(int(self.meta().get("pid") or 0)):
                for stale in {target, path}:  # a dead session's socket
                    try:
                        stale.unlink()
                    except OSError:
                        pass
                raise SessionEnded("ended", f"session {self.id} is not running (its process is gone); "
                                            "the stale control socket was removed") from None
            state = self.meta().get("state", "unknown")
            raise SessionEnded("ended", f"session {self.id} has no control socket ({state}): {exc}") from None
        return sock

    def request(self, verb: str, *args: str, **fields: Any) -> Any:
        """Send one request; return its ``result`` or raise :class:`ControlError`."""
        message = {"v": PROTOCOL_VERSION, "id": uuid.uuid4().hex[:8], "verb": verb, "args": [str(a) for a in args]}
        message.update(fields)
        with self._connect() as sock, sock.makefile("rwb") as stream:
            stream.write(json.dumps(message).encode() + b"\n")
            stream.flush()
            line = stream.readline()
        if not line:
            raise SessionEnded("ended", f"session {self.id} ended before it answered {verb}")
        response = json.loads(line)
        if not response.get("ok"):
            raise _error(response)
        return response.get("result")

    # ------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        """State, the test and step running or paused (file:line), done/total, counts, elapsed, failures."""
        try:
            return self.request("status")
        except SessionEnded:
            return self._status_from_files()

    def _status_from_files(self) -> dict[str, Any]:
        meta = self.meta()
        try:
            report = json.loads((self.dir / "report.json").read_text())
        except (OSError, ValueError):
            report = {}
        counts = report.get("outcomes") or {}
        state = meta.get("state", "unknown")
        if state != _FINISHED and not _pid_alive(int(meta.get("pid") or 0)):
            state = f"died ({state})"
        return {
            "session": meta.get("id"),
            "dir": str(self.dir),
            "pid": meta.get("pid"),
            "state": state,
            "test": None,
            "running": None,
            "paused": None,
            "done": sum(counts.values()) if counts else meta.get("tests", 0),
            "total": report.get("total"),
            "counts": counts,
            "elapsed_s": (report.get("summary") or {}).get("duration_s"),
            "failures": [
                {"test": f.get("test"), "outcome": f.get("outcome"), "error": f.get("error"), "report": f.get("longrepr")}
                for f in report.get("failures", [])
            ],
            "exit_code": meta.get("exit_code", report.get("exit_code")),
            "edits": meta.get("edits", 0),
        }

    def tests(self) -> list[dict[str, Any]]:
        """The tests seen so far: ``[{"id", "status", "duration_s"}]``."""
        try:
            return list(self.request("tests")["tests"])
        except SessionEnded:
            try:
                report = json.loads((self.dir / "report.json").read_text())
            except (OSError, ValueError):
                return []
            return [{"id": t.get("id"), "status": t.get("outcome"), "duration_s": t.get("duration_s")}
                    for t in report.get("tests", [])]

    def steps(self, test: str) -> dict[str, Any]:
        """A test's phases and steps (as ``stepkernel steps``) and the steps that ran."""
        return self.request("steps", test)

    def events(self, follow: bool = False, offset: int = 0) -> Iterator[dict[str, Any]]:
        """Events from line ``offset`` of events.jsonl; with ``follow``, live until the session ends.

        Raises :class:`SessionEnded` if the session goes away without saying
        it finished (killed, crashed).
        """
        if not follow or not self.alive():
            yield from self._events_from_file(offset)
            return
        try:
            sock = self._connect()
        except SessionEnded:
            yield from self._events_from_file(offset)
            return
        with sock, sock.makefile("rwb") as stream:
            request = {"v": PROTOCOL_VERSION, "verb": "events", "offset": offset, "follow": True}
            stream.write(json.dumps(request).encode() + b"\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line:
                    raise SessionEnded("ended", f"session {self.id} ended while following its events")
                message = json.loads(line)
                if not message.get("ok"):
                    raise _error(message)
                if message.get("end"):
                    return
                if "event" in message:
                    yield message["event"]

    def _events_from_file(self, offset: int) -> Iterator[dict[str, Any]]:
        try:
            text = (self.dir / "events.jsonl").read_text()
        except OSError:
            return
        for line in text.splitlines()[offset:]:
            try:
                yield json.loads(line)
            except ValueError:
                return  # a line still being written

    # ------------------------------------------------------------ steering

    def pause(self) -> str:
        """Pause before the next step."""
        return self.request("pause")["message"]

    def resume(self) -> str:
        """``continue`` the paused test."""
        return self.request("continue")["message"]

    def next(self) -> str:
        """Run the current step and pause before the next."""
        return self.request("next")["message"]

    def retry(self) -> str:
        """Run the paused step again and stay paused."""
        return self.request("retry")["message"]

    def skip(self) -> str:
        """Skip the failed step (the test is then *forced*)."""
        return self.request("skip")["message"]

    def fail(self) -> str:
        """Let the error stand: the test fails, the run goes on."""
        return self.request("fail")["message"]

    def abort(self) -> str:
        """Stop the run after tearing down the current test."""
        return self.request("abort")["message"]

    def break_at(self, test: str, step: int, phase: str | None = None) -> dict[str, Any]:
        """Pause before step ``step`` (0-based) of ``test``."""
        args = [test, str(step)] + ([phase] if phase else [])
        return self.request("break", *args)

    def clear(self) -> str:
        """Remove every breakpoint."""
        return self.request("clear")["message"]

    def set_on_error(self, mode: str, test: str | None = None) -> dict[str, Any]:
        """``pause`` or ``fail`` on errors, for the rest of the run or one test."""
        return self.request("set", "on_error", mode, *([test] if test else []))

    def queue(self, nodeids: Sequence[str]) -> list[str]:
        """Run more tests in this session after the selected ones; returns the ids queued.

        Raises :class:`NotSupported` while the run's pytest plugin does not
        take queued tests (this version's does not yet).
        """
        if isinstance(nodeids, str):
            nodeids = [nodeids]
        return list(self.request("queue", "add", *nodeids)["queued"])

    def unqueue(self, nodeids: Sequence[str]) -> list[str]:
        """Take tests off the queue (those not started yet)."""
        if isinstance(nodeids, str):
            nodeids = [nodeids]
        return list(self.request("queue", "remove", *nodeids)["queued"])

    def rerun_failed(self) -> list[str]:
        """Queue the tests that failed so far; returns their ids."""
        return list(self.request("rerun", "failed")["queued"])

    def run_test(self, nodeid: str) -> TestResult:
        """Queue one test and wait for its outcome.

        Raises :class:`NotSupported` as :meth:`queue` does, and
        :class:`SessionEnded` if the session ends before the test finished.
        """
        offset = int(self.status().get("event_count") or 0)
        self.queue([nodeid])
        for event in self.events(follow=True, offset=offset):
            if event.get("event") == "test_finish" and event.get("test") == nodeid:
                return TestResult(nodeid, str(event.get("outcome")), event.get("duration_s"))
        raise SessionEnded("ended", f"session {self.id} ended before {nodeid} ran")

    # ------------------------------------------------------------ waiting

    def wait_paused(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the run pauses; return its status. Raises SessionEnded if it finishes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        offset = 0
        while status.get("state") != "paused":
            if status.get("state") == _FINISHED or not self.alive():
                raise SessionEnded("ended", f"session {self.id} finished without pausing")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"session {self.id} did not pause within {timeout}s")
            for event in self.events(follow=True, offset=offset):
                offset += 1
                if event.get("event") in ("pause", "summary"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
            status = self.status()
        return status


@dataclasses.dataclass
class JobResult:
    """What a finished :class:`Job` did."""

    exit_code: int
    outcomes: dict[str, str]
    session: Session | None
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every test passed (exit code 0)."""
        return self.exit_code == 0

    @property
    def failed(self) -> list[str]:
        """The tests that failed, errored or were forced (to run again in another Job)."""
        return [t for t, o in self.outcomes.items() if o in ("failed", "error", "forced")]

    def outcome(self, nodeid: str) -> str | None:
        """The outcome of one test (None when it did not run).

        ``nodeid`` may also be relative to a subdirectory of pytest's rootdir
        (``tests/test_x.py::test_y`` for ``pkg/tests/test_x.py::test_y``).
        """
        if nodeid in self.outcomes:
            return self.outcomes[nodeid]
        matches = [v for k, v in self.outcomes.items() if k.endswith("/" + nodeid)]
        return matches[0] if len(matches) == 1 else None


class Job:
    """Tests to run in one ``stepkernel run`` session.

    ``on_error="pause"`` pauses a failing test for someone (or a program) to
    attach and steer; ``"fail"`` runs them as plain pytest would.
    """

    def __init__(
        self,
        tests: Sequence[str] = (),
        on_error: str = "pause",
        python: str | os.PathLike[str] | None = None,
        pytest_args: Sequence[str] = (),
        cwd: str | os.PathLike[str] = ".",
        session_dir: str | os.PathLike[str] | None = None,
        stepkernel: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if on_error not in ("pause", "fail"):
            raise ValueError(f"on_error is 'pause' or 'fail', not {on_error!r}")
        if isinstance(tests, str):
            tests = [tests]
        self.tests = list(tests)
        self.on_error = on_error
        self.python = os.fspath(python) if python is not None else None
        self.pytest_args = list(pytest_args)
        self.cwd = Path(cwd).resolve()
        self.session_dir = Path(session_dir).resolve() if session_dir else None
        self.stepkernel = os.fspath(stepkernel) if stepkernel else None
        self.env = dict(env) if env is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.session: Session | None = None

    def _binary(self) -> str:
        binary = self.stepkernel or os.environ.get("STEPKERNEL_BIN") or shutil.which("stepkernel")
        if not binary:
            raise FileNotFoundError("the stepkernel binary was not found: put it on PATH or set $STEPKERNEL_BIN")
        return binary

    def command(self) -> list[str]:
        """The ``stepkernel run`` command line."""
        assert self.session_dir is not None
        command = [self._binary(), "run", "--on-error", self.on_error, "--session-dir", str(self.session_dir)]
        if self.python:
            command += ["--python", self.python]
        command += self.tests
        if self.pytest_args:
            command += ["--", *self.pytest_args]
        return command

    def start(self, timeout: float = 120.0) -> Session:
        """Start the run; return its session once it listens (its output goes to ``run.log`` there)."""
        if self.process is not None:
            raise RuntimeError("this job has already started")
        self._binary()  # a missing binary is said before anything is made
        if self.session_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            self.session_dir = self.cwd / ".stepkernel" / "sessions" / f"{stamp}-job-{uuid.uuid4().hex[:6]}"
        self.session_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        log = open(self.session_dir / "run.log", "wb")  # noqa: SIM115 - the child keeps it
        try:
            self.process = subprocess.Popen(
                self.command(), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        socket_path = self.session_dir / _SOCKET
        while not os.path.lexists(socket_path):
            if "no control socket" in self.log():
                break  # running, but not steerable (the log says why)
            if self.process.poll() is not None:
                break  # ended already (usage error, or a very short run): its files tell
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"stepkernel run did not start within {timeout}s; see {self.session_dir / 'run.log'}")
            time.sleep(0.02)
        if not (self.session_dir / "session.json").exists():
            self.process.wait()
            raise SessionEnded("ended", f"stepkernel run exited {self.process.returncode} before starting a session:\n"
                                        + self.log())
        self.session = Session(self.session_dir)
        return self.session

    def log(self) -> str:
        """What the run printed so far."""
        if self.session_dir is None:
            return ""
        try:
            return (self.session_dir / "run.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait(self, timeout: float | None = None) -> JobResult:
        """Wait for the run to end; return its result."""
        if self.process is None:
            raise RuntimeError("start() the job first")
        code = self.process.wait(timeout=timeout)
        report: dict[str, Any] = {}
        if self.session_dir is not None:
            try:
                report = json.loads((self.session_dir / "report.json").read_text())
            except (OSError, ValueError):
                report = {}
        outcomes = {str(t.get("id")): str(t.get("outcome")) for t in report.get("tests", [])}
        return JobResult(exit_code=code, outcomes=outcomes, session=self.session, report=report)

    def run(self, timeout: float | None = None) -> JobResult:
        """Start the run and wait for it to end (a paused test waits for someone to steer it)."""
        self.start()
        return self.wait(timeout=timeout)

    def stop(self) -> None:
        """End the run: ``abort`` when paused (tearDown runs, the report is written), else SIGTERM."""
        if self.process is None or self.process.poll() is not None:
            return
        if self.session is not None:
            try:
                self.session.abort()
                return
            except ControlError:
                pass
        self.process.send_signal(signal.SIGTERM)
