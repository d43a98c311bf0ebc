"""The worker's main loop: serve the kernel's requests in the user's interpreter.

The kernel starts ``python -m stepkernel_worker`` with its stdout and stderr
connected to pipes it forwards to clients as ``stream`` messages, and with a
private channel (see ``channel.py``) for everything else. The message types
are documented in ``kernel/src/worker.rs``.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.util
import os
import signal
import sys
import time
import traceback
from typing import Any

# display (rich reprs) is imported when a value is first shown: a test run shows none.
from . import cells
from .pause_timers import suspends_alarm
from .channel import (
    Channel,
    ChannelClosed,
    EventRing,
    encode_flat,
    from_environment,
    high_fd,
    message_path,
    path_fields,
    ring_from_environment,
)

# Written to fd 1 and 2 after each request: the kernel forwards everything
# before it as output of that request, so no output arrives after the reply.
SYNC_MARKER = b"\x00\x1eSKSYNC:%d\x1e\x00"
# How long a file's steps may take to come back from the kernel's instrumenter.
STEPS_TIMEOUT_S = 300.0

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MISSING = object()


_SETUP_PHASES = {
    "setUp", "asyncSetUp", "setUpClass", "setup_method", "setup_function", "setup_class", "setup_module",
    "tearDown", "asyncTearDown", "tearDownClass", "teardown_method", "teardown_function",
}


# Bound once: a test that mocks the clock or os.getpid sees no call of the engine's.
_time = time.time
_getpid = os.getpid


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class StdinNotAllowed(RuntimeError):
    """input() was called but the client does not accept input requests."""


class ExitRequest:
    """``exit`` and ``quit`` in cells, as in IPython: ask the client to leave.

    Typed in a cell (bare or called), they add an ``ask_exit`` payload to the
    reply, so ``jupyter console`` exits (and shuts the kernel down unless
    ``keep_kernel=True``). Anywhere else they are the usual ``site`` exiters.
    """

    def __init__(self, worker: "Worker", name: str, original: Any):
        self._worker = worker
        self._name = name
        self._original = original

    def __repr__(self) -> str:
        return f"Use {self._name} or {self._name}() to leave; {self._name}(keep_kernel=True) keeps the kernel running"

    def __call__(self, *args: Any, keep_kernel: bool = False) -> None:
        if not self._worker.in_cell:
            # Code run by the stepping engine (a test) keeps Python's meaning.
            if self._original is None:
                raise SystemExit(*args)
            self._original(*args)
            return
        keep = keep_kernel or bool(args and args[0])  # IPython's exit(True) keeps it too
        self._worker.exit_payload = {"source": "ask_exit", "keepkernel": bool(keep)}


class Worker:
    """Serves requests; also the ``Host`` the stepping engine runs under."""

    #: Events may carry ``RawJSON`` values: ``encode_flat`` writes them as they are.
    raw_json = True

    def __init__(self, channel: Channel, ring: EventRing | None = None):
        self.channel = channel
        self.ring = ring  # progress events go here when the kernel shared one
        #: Names the kernel's instrumenter (from the run request; tags transformed .pyc files).
        self.steps_fingerprint: str | None = None
        self.plain = cells.PlainNamespace()
        self.handler = None  # a PausedHandler while a test is paused or loaded
        self.current_id: int | None = None
        self.allow_stdin = False
        self.executing = False  # SIGINT raises KeyboardInterrupt only while True
        self.in_cell = False  # a client's cell (not test code) is running
        self.pending_resume: dict | None = None
        self.breakpoints: list[dict] = []
        self.pause_flag = False
        #: ``set on_error`` from the control socket: test id (None: every test) -> mode.
        self.on_error: dict[str | None, str] = {}
        #: ``queue add`` from the control socket: node ids for the plugin's ``take_queued()``.
        self.queued: list[str] = []
        self.exit_payload: dict | None = None
        self.pause_at_start = False  # %test: pause before the test body's first step
        self.last_handler = None  # the last paused namespace, kept after a %test ends
        self.last_summary: dict | None = None  # the last run's summary event
        self._next_rpc = 0
        self._sync = 0
        self.pid = os.getpid()
        self._flag_shared = False
        self._said_hello = False
        #: SIGINT as Python set it up (ignored if this process started with it ignored): tests run with it.
        self.python_sigint = signal.getsignal(signal.SIGINT)
        # Private copies of the output pipes: markers must reach the kernel even
        # while pytest's capture has fd 1 and 2 pointing at temporary files.
        self._sync_fds = []
        for fd in (1, 2):
            try:
                self._sync_fds.append(high_fd(os.dup(fd)))
            except OSError:
                pass

    # ----------------------------------------------------------------- main loop
    def serve_forever(self) -> dict | None:
        """Answer requests until a ``run`` request (returned, for :func:`main` to run) or the end (None)."""
        if not self._said_hello:
            self._said_hello = True
            self._install_hooks()
            self.channel.send(
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
        while True:
            try:
                message = self.channel.recv()
            except KeyboardInterrupt:
                continue  # an interrupt that arrived between requests
            except ChannelClosed:
                return None
            if message.get("type") == "shutdown":
                return None
            if message.get("type") == "run":
                return message
            self.dispatch(message)

    def dispatch(self, message: dict) -> dict | None:
        """Handle one request; return it if it is a resume command (paused mode only)."""
        kind = message.get("type")
        request_id = message.get("id")
        if kind == "execute":
            self._execute(message)
        elif kind in ("complete", "inspect", "is_complete"):
            self._introspect(kind, request_id, message)
        elif kind == "breakpoints":
            self.breakpoints = message.get("items", [])
        elif kind == "pause_request":
            self.pause_flag = True
        elif kind == "on_error":
            self.on_error[message.get("test")] = message.get("mode", "pause")
        elif kind == "queue":
            ids = [str(i) for i in message.get("nodeids") or []]
            if message.get("op") == "remove":
                self.queued = [i for i in self.queued if i not in ids]
            else:
                self.queued += [i for i in ids if i not in self.queued]
        elif kind == "run":
            self._run_tests(message)
        elif kind == "test":
            self._load_test(message)
        elif kind == "locals":
            self._locals(message)
        elif kind in ("resume", "edit", "describe", "show_function"):
            return self._paused_command(message)
        elif kind == "debug":
            from . import debug_snapshot  # JupyterLab's debugger (kernel/src/debug_bridge.rs)

            debug_snapshot.serve(self, message)
        else:
            self._reply(request_id, {"status": "error", "ename": "UnknownRequest", "evalue": str(kind), "traceback": []})
        return None

    # ----------------------------------------------------------------- execute
    def _namespace(self) -> dict:
        if self.handler is not None:
            try:
                return dict(self.handler.namespace())
            except Exception:
                pass
        return self.plain.namespace()

    def _execute(self, message: dict) -> None:
        request_id = message["id"]
        count = message.get("execution_count", 0)
        self.current_id = request_id
        self.allow_stdin = bool(message.get("allow_stdin", False))
        code = message.get("code", "")
        silent = bool(message.get("silent", False))
        content: dict[str, Any] = {"status": "ok", "execution_count": count, "user_expressions": {}}
        self.exit_payload = None
        from . import introspect

        query = introspect.help_query(code)
        if query is not None:
            self._reply(request_id, self._help_reply(request_id, query, content, silent))
            return
        try:
            outer = (self.executing, self.in_cell)
            self.executing = self.in_cell = True
            try:
                with self._cell_scope():
                    has_value, value = self._run_cell(code, cells.cell_filename(count))
                if has_value and isinstance(value, ExitRequest):
                    value()  # a bare `exit` means `exit()`, as IPython's autocall does
                    has_value = False
            finally:
                self.executing, self.in_cell = outer
            if has_value and value is not None and not silent:
                builtins._ = value
                from . import display

                data, metadata = display.mime_bundle(value)
                self._iopub(
                    request_id,
                    "execute_result",
                    {"execution_count": count, "data": data, "metadata": metadata},
                )
        except BaseException as exc:  # user code may raise anything, SystemExit included
            if isinstance(exc, ChannelClosed):
                raise
            content = self._error_content(exc)
            content["execution_count"] = count
            if not silent:
                self._iopub(request_id, "error", {k: content[k] for k in ("ename", "evalue", "traceback")})
        content["user_expressions"] = self._user_expressions(message.get("user_expressions") or {})
        if self.exit_payload is not None and content["status"] == "ok":
            content["payload"] = [self.exit_payload]
        self._reply(request_id, content)

    def _introspect(self, kind: str, request_id: Any, message: dict) -> None:
        """Completion, inspection, is-complete (imported when first asked: a run no client attaches to never needs it)."""
        from . import introspect

        if kind == "complete":
            content = introspect.complete(message["code"], message["cursor_pos"], self._namespace())
        elif kind == "inspect":
            content = introspect.inspect_value(
                message["code"], message["cursor_pos"], message.get("detail_level", 0), self._namespace()
            )
        else:
            content = introspect.is_complete(message["code"])
        self._reply(request_id, content)

    def _help_reply(self, request_id, query: tuple[str, int], content: dict, silent: bool) -> dict:
        """``name?`` as IPython answers it: a ``page`` payload with the signature and docstring."""
        from . import introspect

        name, detail = query
        found = introspect.inspect_value(name, len(name), detail, self._namespace())
        if not found.get("found"):
            if not silent:
                self._iopub(request_id, "stream", {"name": "stdout", "text": f"Object `{name}` not found.\n"})
            return content
        content["payload"] = [{"source": "page", "data": found["data"], "start": 0}]
        return content

    def _run_cell(self, code: str, filename: str):
        if self.handler is not None:
            return self.handler.run_cell(code)
        return self.plain.run_cell(code, filename)

    def _user_expressions(self, expressions: dict) -> dict:
        from . import display

        results = {}
        namespace = self._namespace()
        for name, expression in expressions.items():
            try:
                value = eval(expression, namespace)  # noqa: S307 - the client asked for it
                data, metadata = display.mime_bundle(value)
                results[name] = {"status": "ok", "data": data, "metadata": metadata}
            except Exception as exc:
                results[name] = self._error_content(exc)
        return results

    def _error_content(self, exc: BaseException) -> dict:
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not os.path.abspath(frame.filename).startswith(_PACKAGE_DIR)
        ]
        lines = ["Traceback (most recent call last):\n"] if frames else []
        lines += traceback.format_list(frames)
        lines += traceback.format_exception_only(type(exc), exc)
        return {
            "status": "error",
            "ename": type(exc).__name__,
            "evalue": str(exc),
            "traceback": [line.rstrip("\n") for line in lines],
        }

    # ----------------------------------------------------------------- stdin
    def _input(self, prompt: str = "", password: bool = False) -> str:
        if not self.allow_stdin or self.current_id is None:
            raise StdinNotAllowed(
                "input() is not available here: the client did not allow stdin "
                "(allow_stdin is false); pass the value in code instead"
            )
        self._flush_python_streams()
        self.send({"type": "input_request", "id": self.current_id, "prompt": str(prompt), "password": password})
        reply = self.channel.recv_matching(lambda m: m.get("type") == "input_reply")
        if reply.get("interrupted"):
            raise KeyboardInterrupt
        return reply.get("value", "")

    def _install_hooks(self) -> None:
        original_input = builtins.input

        # A client's code asks the client (Jupyter's stdin channel); these are
        # in place only while a client's cell runs, so test code sees Python's
        # own builtins (a test that swaps sys.stdin, or meets pytest's capture,
        # sees what it would under plain pytest).
        def input(prompt=""):
            if not self.in_cell:
                return original_input(prompt)
            return self._input(prompt)

        self._cell_builtins = {"input": input}
        if not hasattr(builtins, "display"):
            self._cell_builtins["display"] = self.display
        for name in ("exit", "quit"):
            self._cell_builtins[name] = ExitRequest(self, name, getattr(builtins, name, None))
        signal.signal(signal.SIGINT, self._on_sigint)

    @contextlib.contextmanager
    def _cell_scope(self):
        """A client's cell runs with IPython-like builtins; test code never sees them."""
        import getpass  # here, not at start: tests see no module of ours they did not import

        saved = {name: builtins.__dict__.get(name, _MISSING) for name in self._cell_builtins}
        saved_getpass = getpass.getpass

        def getpass_(prompt="Password: ", stream=None):
            if not self.in_cell:
                return saved_getpass(prompt, stream)
            return self._input(prompt, password=True)

        builtins.__dict__.update(self._cell_builtins)
        getpass.getpass = getpass_
        buffering = _whole_lines(sys.__stdout__, sys.__stderr__)
        try:
            yield
        finally:
            _whole_lines(*buffering)
            getpass.getpass = saved_getpass
            for name, value in saved.items():
                if value is _MISSING:
                    builtins.__dict__.pop(name, None)
                else:
                    builtins.__dict__[name] = value

    def _on_sigint(self, signum, frame):
        # Only user code is interrupted; between requests the signal is dropped.
        if self.executing:
            raise KeyboardInterrupt

    def display(self, *objects: Any, display_id: str | None = None, update: bool = False, **_ignored) -> None:
        """Show objects as ``display_data`` (the ``display()`` builtin, as in IPython)."""
        from . import display

        for value in objects:
            data, metadata = display.mime_bundle(value)
            content = {"data": data, "metadata": metadata, "transient": {}}
            if display_id is not None:
                content["transient"]["display_id"] = display_id
            self._iopub(self.current_id, "update_display_data" if update else "display_data", content)

    # ----------------------------------------------------------------- plumbing
    def _reply(self, request_id, content: dict) -> None:
        self.send({"type": "reply", "id": request_id, "content": content})

    def _iopub(self, request_id, msg_type: str, content: dict) -> None:
        self.send({"type": "iopub", "id": request_id, "msg_type": msg_type, "content": content})

    def _flush_python_streams(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass

    def send(self, message: dict, ordered: bool = True) -> None:
        """Send a message to the kernel after all output printed before it.

        ``ordered=False`` (progress events) skips the sync markers: the kernel
        then handles the message as soon as it arrives.
        """
        if _getpid() != self.pid:
            return  # a test forked: its child's messages are not ours
        if not ordered:
            self.channel.send(message)
            return
        self._flush_python_streams()
        self._sync += 1
        marker = SYNC_MARKER % self._sync
        for fd in self._sync_fds:
            try:
                os.write(fd, marker)
            except OSError:
                pass
        message["sync"] = self._sync
        self.channel.send(message)

    # ----------------------------------------------------------------- Host API
    def emit(self, event: dict) -> None:
        """Publish a progress event to the kernel (events.jsonl, iopub, terminal)."""
        if "time" not in event:
            event["time"] = _time()
        if event.get("event") == "summary":
            self.last_summary = event
        # emit_line's body, not a call of it.
        if _getpid() != self.pid:
            return
        data = ('{"type":"event","event":' + encode_flat(event) + "}\n").encode()
        if self.ring is None or not self.ring.append(data):
            self.channel.send_encoded(data)

    def emit_line(self, line: str) -> None:
        """Publish one event message already encoded as a JSON line."""
        if _getpid() != self.pid:
            return
        data = line.encode()
        if self.ring is None or not self.ring.append(data):
            self.channel.send_encoded(data)

    def steps_loaded(self, path: str) -> None:
        """Tell the kernel a file's steps came from the step cache (it records the file)."""
        self.channel.send({"type": "steps_loaded", **path_fields(os.path.abspath(path))})

    def get_steps(self, path: str) -> dict:
        """Ask the kernel's instrumenter for the steps of one file.

        Never waits forever: without an answer in STEPS_TIMEOUT_S the file's
        tests run as one step each (and a warning says so).
        """
        self._next_rpc += 1
        rpc = self._next_rpc
        self.channel.send({"type": "need_steps", "id": rpc, **path_fields(os.path.abspath(path))})
        reply = self.channel.recv_matching(
            lambda m: m.get("type") == "steps_reply" and m.get("id") == rpc, timeout=STEPS_TIMEOUT_S
        )
        if reply is None:
            sys.stderr.write(f"stepkernel: no steps for {path!r} from the kernel; its tests run unstepped\n")
            return {}
        return reply.get("report") or {}

    def poll_control(self) -> None:
        """Handle ``%pause``, ``%break`` and control-socket requests that arrived while a test runs."""
        self._take_pause_controls()

    def wants_step_boundaries(self) -> bool:
        """Whether a pause may be due at some step boundary (the engine then looks at each)."""
        return bool(self.breakpoints or self.pause_flag or self.pause_at_start)

    def should_pause_before(self, test_id: str, phase: str, step: int) -> str | None:
        """A reason to pause before this step (breakpoint or ``%pause``), else None."""
        self.poll_control()
        if self.pause_flag:
            self.pause_flag = False
            return "pause"
        if self.pause_at_start and phase not in _SETUP_PHASES:
            self.pause_at_start = False
            return "loaded"
        for item in self.breakpoints:
            if item.get("step") == step and item.get("test") in (None, test_id) and item.get("phase") in (None, phase):
                # A debugger's breakpoint holds in its file only (node ids start with the file).
                if item.get("file") in (None, test_id.split("::", 1)[0]):
                    return "breakpoint"
        return None

    def take_queued(self) -> list[str]:
        """Node ids queued by a client since the last call (the plugin runs them after its selection)."""
        self._take_pause_controls()
        taken, self.queued = self.queued, []
        return taken

    def error_mode(self, test_id: str | None, default: str = "pause") -> str:
        """The ``on_error`` a client set for ``test_id`` (a node id, or its base without parameters)."""
        self._take_pause_controls()
        base = (test_id or "").split("[", 1)[0]
        for key in (test_id, base, None):
            if key in self.on_error:
                return self.on_error[key]
        return default

    _error_mode = error_mode

    def _take_pause_controls(self) -> None:
        self.channel.poll()
        self._take_pause_controls_pending()

    def _take_pause_controls_pending(self) -> None:
        while self.channel.has_pending():
            message = self.channel.take_pending(_is_pause_control)
            if message is None:
                break
            self.dispatch(message)

    @suspends_alarm
    def pause(self, handler, info: dict) -> dict:
        """Serve requests in the paused test's namespace until a resume command."""
        if info.get("error") is not None and info.get("reason") == "error" and self._error_mode(info.get("test")) == "fail":
            # `set on_error fail`: the error stands at once, as %fail would make it.
            return {"action": "fail", "reason": "on_error fail"}
        previous = self.handler
        self.handler = self.last_handler = handler
        outer_executing, self.executing = self.executing, False
        from . import debug_snapshot  # what JupyterLab's debugger shows of this pause

        self.paused_info = info
        self.send({"type": "paused", "info": info, "debug": debug_snapshot.snapshot(handler, info)})
        self._answer_pending_resume(info)
        try:
            while True:
                try:
                    message = self.channel.recv()
                except KeyboardInterrupt:
                    continue
                if message.get("type") == "shutdown":
                    # Hand the kernel's shutdown to the engine as an abort, then exit later.
                    self.channel._pending.appendleft(message)
                    return {"action": "abort", "reason": "shutdown"}
                command = self.dispatch(message)
                if command is not None:
                    self.pending_resume = command
                    return command
                if message.get("type") in ("execute", "edit") and debug_snapshot.STATE.active:
                    # The variables may have changed: the debugger shows them anew.
                    fresh = debug_snapshot.refresh(self)
                    if fresh is not None:
                        self.send({"type": "debug_snapshot", "snapshot": fresh})
        finally:
            self.handler = previous
            self.executing = outer_executing

    def _no_pytest_note(self, what: str, how: str) -> str | None:
        """Why nothing ran when this interpreter lacks pytest (``auto`` fell back
        to unittest, which cannot load pytest tests); None otherwise."""
        if importlib.util.find_spec("pytest") is not None:
            return None
        summary = self.last_summary or {}
        if summary.get("total"):
            return None
        python = sys.executable
        return (f"{python} has no pytest, so {what} ran under unittest, which ran no test. "
                f"Install pytest there ({python} -m pip install pytest) or choose an interpreter "
                f"that has it: {how}")

    def _answer_pending_resume(self, info: dict | None, exit_code: int | None = None) -> None:
        if self.pending_resume is None:
            return
        command, self.pending_resume = self.pending_resume, None
        content = {"status": "ok", "execution_count": command.get("execution_count", 0), "user_expressions": {}}
        if info is not None:
            content["paused"] = info
        if exit_code is not None:
            content["exit_code"] = exit_code
        self._reply(command["id"], content)

    def _paused_command(self, message: dict) -> dict | None:
        kind = message["type"]
        request_id = message.get("id")
        if self.handler is None and kind != "test":
            self._reply(request_id, {"status": "error", "ename": "NotPaused", "evalue": "no test is paused", "traceback": []})
            return None
        if kind == "resume":
            self.current_id = request_id
            return message
        if kind == "show_function":
            self._reply(request_id, {"status": "ok", "result": self._show_function(message["target"])})
        elif kind == "edit" and message.get("target"):
            self._reply(request_id, {"status": "ok", "result": self._edit_function(message)})
        elif kind == "edit":
            result = self.handler.edit(message.get("step"), message.get("source", ""))
            self._reply(request_id, {"status": "ok", "result": result})
        elif kind == "describe":
            self._reply(request_id, {"status": "ok", "result": self.handler.describe()})
        return None

    def _edit_function(self, message: dict) -> dict:
        """``%%edit NAME``: fix a function of the code under test (see code_edits.py)."""
        from . import code_edits

        target = message["target"]
        try:
            func = code_edits.resolve(target, self.handler.namespace())
            edit = code_edits.replace(func, message.get("source", ""))
        except code_edits.CodeEditError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug here must not break the pause loop
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        # A test that passes after this edit passed only thanks to it: it is *fixed*.
        record = getattr(self.handler, "record", None)
        if record is not None and hasattr(record, "edited_ran"):
            record.edited_ran = True
        info = {}
        try:
            info = self.handler.describe()
        except Exception:
            pass
        edit.update({"test": info.get("test"), "phase": info.get("phase"), "step": 0,
                     "name": f"def {edit['function']}", "target": target})
        self.emit({"event": "edit", "kind": "function", "target": target, "function": edit["function"],
                   "test": info.get("test"), "phase": info.get("phase"), "file": edit["file"],
                   "start_line": edit["start_line"], "end_line": edit["end_line"]})
        return {"ok": True, "what": f"{target} (in {os.path.basename(edit['file'])})", "edit": edit}

    def _show_function(self, target: str) -> dict:
        """``%edit NAME``: the source of a function of the code under test, as ``%%edit NAME`` takes it."""
        from . import code_edits

        try:
            func = code_edits.resolve(target, self.handler.namespace())
            return {"ok": True, "target": target, "source": code_edits.current_source(func)}
        except code_edits.CodeEditError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug here must not break the pause loop
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _load_test(self, message: dict) -> None:
        """``%test NODEID``: run one test, paused before its body's first step.

        The request is answered at the first pause (or when the test ends
        without one); afterwards the test's namespace stays inspectable until
        the next ``%test``.
        """
        from . import stepping

        node_id = (message.get("args") or "").strip()
        if not node_id:
            self._reply(message["id"], {"status": "error", "ename": "UsageError",
                                        "evalue": "usage: %test path/to/test_file.py::TestClass::test_name",
                                        "traceback": []})
            return
        self._share_flag()
        self.handler = self.last_handler = None
        self.pending_resume = message
        self.steps_fingerprint = message.get("steps_fingerprint")
        self.pause_at_start = True
        self.executing = True
        exit_code = 3
        self.last_summary = None
        try:
            exit_code = stepping.run(self, [node_id, "-q", "-p", "no:cacheprovider"], runner="auto",
                                     on_error="pause", junit_xml=None, rootdir=os.getcwd())
        except BaseException as exc:  # report, don't die
            traceback.print_exc()
            self.emit({"event": "internal_error", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.executing = False
            self.pause_at_start = False
        self.handler = self.last_handler
        note = self._no_pytest_note(
            f"%test {node_id}",
            "`stepkernel install --python PATH` (the kernelspec then starts that interpreter), or "
            "STEPKERNEL_PYTHON=PATH, $VIRTUAL_ENV or a ./.venv where Jupyter starts the kernel",
        ) if exit_code != 0 else None
        if note is not None and self.pending_resume is not None:
            command, self.pending_resume = self.pending_resume, None
            self._reply(command["id"], {"status": "error", "ename": "NoPytest", "evalue": note, "traceback": []})
            return
        self._answer_pending_resume(None, exit_code)

    def _locals(self, message: dict) -> None:
        """``%locals``: the paused (or last loaded) test's variables as a table."""
        request_id = message["id"]
        if self.handler is None:
            self._reply(request_id, {"status": "error", "ename": "NotPaused",
                                     "evalue": "no test is paused or loaded (%test NODEID loads one)", "traceback": []})
            return
        if hasattr(self.handler, "local_values"):
            values = dict(self.handler.local_values())
        else:
            values = {k: v for k, v in self.handler.namespace().items() if not k.startswith("__")}
        from . import display

        rows = []
        for name, value in values.items():
            rows.append((name, type(value).__qualname__, display.plain_text(value).replace("\n", " ")[:120]))
        text = "\n".join(f"{n:<20} {t:<20} {r}" for n, t, r in rows) or "(no local variables)"
        html = "<table><thead><tr><th>name</th><th>type</th><th>value</th></tr></thead><tbody>" + "".join(
            f"<tr><td><code>{_escape(n)}</code></td><td>{_escape(t)}</td><td><code>{_escape(r)}</code></td></tr>"
            for n, t, r in rows) + "</tbody></table>"
        self.current_id = request_id
        for name, value in values.items():
            if display.has_rich_repr(value):
                data, metadata = display.mime_bundle(value)
                if set(data) - {"text/plain"}:
                    self._iopub(request_id, "display_data", {"data": data, "metadata": metadata, "transient": {}})
        self._reply(request_id, {"status": "ok", "data": {"text/plain": text, "text/html": html}})

    def _share_flag(self) -> None:
        """Point the engine's step flag into the ring, so the kernel's %pause reaches running tests."""
        from .stepping import runtime

        if self.ring is not None and not self._flag_shared:
            runtime.share_flags(self.ring.flag, self.ring.interrupted)
        self._flag_shared = True

    def _run_tests(self, message: dict) -> None:
        """A ``run`` request met while serving another (``main`` runs the others)."""
        from . import stepping

        exit_code = 3
        try:
            exit_code = stepping.run(self, **self.start_run(message))
        except BaseException as exc:  # report, don't die: the kernel decides what next
            self.run_crashed(exc)
        self.finish_run(message, exit_code)

    def start_run(self, message: dict) -> dict:
        """Take a ``run`` request's settings; returns the arguments of ``stepping.run``."""
        self._share_flag()

        self.current_id = message["id"]
        self.steps_fingerprint = message.get("steps_fingerprint")
        #: ``--hooks MODULE`` and the session's attach details (for ``stepkernel_pause`` hooks).
        self.hooks_module = message.get("hooks")
        self.session_info = message.get("session") or {}
        #: How xdist workers get kernels of their own (see stepping/xdist_controller.py).
        self.xdist = message.get("xdist")
        self.executing = True
        self.last_summary = None
        return {
            "args": list(message.get("args", [])),
            "runner": message.get("runner", "auto"),
            "on_error": message.get("on_error", "pause"),
            "junit_xml": message.get("junit_xml"),
            "rootdir": message_path(message, "rootdir") or os.getcwd(),
        }

    def run_crashed(self, exc: BaseException) -> None:
        """The engine itself failed: say so (the kernel decides what next)."""
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        self.emit({"event": "internal_error", "error": f"{type(exc).__name__}: {exc}"})

    def finish_run(self, message: dict, exit_code: int) -> None:
        """Answer a ``run`` request with the run's exit code."""
        self.executing = False
        if exit_code != 0 and message.get("runner", "auto") == "auto":
            note = self._no_pytest_note(
                "the run", "`stepkernel run --python PATH` (default: $VIRTUAL_ENV, then ./.venv, then python3)"
            )
            if note is not None:
                print(f"stepkernel: {note}", file=sys.stderr, flush=True)
        self._answer_pending_resume(None, exit_code)
        self._reply(message["id"], {"status": "ok", "exit_code": exit_code})


def _whole_lines(*streams: Any) -> list:
    """Make ``streams`` (or ``(stream, line_buffering, write_through)`` triples) line-buffered; their old settings.

    A cell's output goes out in whole lines: with PYTHONUNBUFFERED (common in
    containers and CI) each print() would otherwise be several writes, hence
    several stream messages ("a", " ", "b", "\n") in clients and notebooks.
    Only while a cell runs: test code sees the streams as Python set them up.
    """
    saved = []
    for item in streams:
        stream, line_buffering, write_through = item if isinstance(item, tuple) else (item, True, False)
        try:
            old = (stream, stream.line_buffering, stream.write_through)
            stream.reconfigure(line_buffering=line_buffering, write_through=write_through)
        except Exception:  # noqa: BLE001 - closed, replaced or not a TextIOWrapper
            continue
        saved.append(old)
    return saved


def _is_pause_control(message: dict) -> bool:
    return message.get("type") in ("pause_request", "breakpoints", "on_error", "queue")


def _serve(worker: Worker) -> None:
    """Serve requests, running each ``run`` request from here (see :func:`main`)."""
    from . import stepping

    while True:
        message = worker.serve_forever()
        if message is None:
            return
        exit_code = 3
        try:
            exit_code = stepping.run(worker, **worker.start_run(message))
        except BaseException as exc:  # report, don't die: the kernel decides what next
            worker.run_crashed(exc)
        worker.finish_run(message, exit_code)


def main() -> None:
    """Entry point of the worker (the kernel's ``python -c`` bootstrap calls it).

    Runs go from this frame straight into ``stepping.run``, so a test sees a
    stack as deep as under ``python -m pytest`` (``-c``'s module, this, the
    engine's run and pytest's call: where runpy has two frames, pytest's
    ``__main__`` and its console entry), and reaches ``RecursionError`` at
    the same depth.
    """
    from . import stepping

    channel = from_environment()
    worker = Worker(channel, ring_from_environment())
    profile_path = os.environ.get("STEPKERNEL_WORKER_PROFILE")
    if profile_path:
        # For finding where the worker's time goes (bench/README.md).
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(_serve, worker)
        profiler.dump_stats(profile_path)
    else:
        # _serve's loop written out here, not called: a call would put one
        # frame more below every test than python -m pytest has.
        while True:
            message = worker.serve_forever()
            if message is None:
                break
            exit_code = 3
            try:
                exit_code = stepping.run(worker, **worker.start_run(message))
            except BaseException as exc:  # report, don't die: the kernel decides what next
                worker.run_crashed(exc)
            worker.finish_run(message, exit_code)
    # Returning ends the interpreter as python -m pytest's ends: threads
    # joined, atexit callbacks, streams flushed, then the teardown that
    # finalizes what is still alive (files left open are flushed).
