"""The contract between the stepping engine and the process that hosts it.

The worker's main loop (``worker.py``) talks to the Rust kernel over a private
channel. The stepping engine (``stepping/``) runs tests and must not know how
that channel works; it only calls a ``Host``. Under the kernel the host is the
worker itself; in the engine's own unit tests it can be a small scripted host.
"""

from __future__ import annotations

from typing import Any, Protocol


class PausedHandler(Protocol):
    """What the engine exposes while a test is paused (or loaded in notebook mode)."""

    def run_cell(self, source: str) -> tuple[bool, Any]:
        """Run user code in the paused test's namespace.

        Returns ``(True, value)`` when the code ends with an expression whose
        value should be displayed (and is not None), else ``(False, None)``.
        Exceptions propagate (the host reports them as an execute error; the
        test stays paused). The code is compiled like a step against the
        test's live cells: assignments change the test's variables, new names
        get new cells that later cells (and edited steps) see.

        For an async test the code runs as a coroutine on the test's own
        event loop, in the test's task and context, so top-level ``await``
        works; the call blocks until it has finished there. (``pause`` is
        then running on a helper thread, see ``Host.pause``.)
        """

    def namespace(self) -> dict[str, Any]:
        """A snapshot of the names visible to user code (module globals overlaid with the test's bound locals)."""

    def edit(self, step: int | None, source: str) -> dict:
        """Replace the source of step ``step`` (None: the current one).

        Returns ``{"ok": True, "step": N, "edit": {...journal fields...}}`` or
        ``{"ok": False, "error": "SyntaxError: ... (line L, column C)", "line": L, "column": C}``.
        Syntax-checks first and keeps the old source on error. Journal fields:
        ``file`` (as the interpreter knows it), ``relpath`` (to the run's
        rootdir), ``function``, ``test``, ``phase``, ``step``, ``name``,
        ``start_line``/``end_line``, ``start_byte``/``end_byte``, ``indent``,
        ``marker_line`` (from the instrumenter's report), ``original`` (the
        step's text in the report), ``original_sha256``, ``new_source``
        (as typed, not re-indented) and ``time``. The edit applies to every
        later run of that function in the session (parametrized tests, a
        shared setUp).
        """

    def describe(self) -> dict:
        """State for ``%where``/``%steps``.

        ``{"test", "phase", "phases", "function", "file", "stepped", "state",
        "reason", "step", "error", "steps": [{"index", "name", "status",
        "duration_s", "start_line", "end_line", "source", "edited"}]}``;
        status is pending | running | passed | failed | skipped | edited.
        """


class Host(Protocol):
    """Services the worker gives the engine.

    Optional attributes: ``hooks_module`` (``--hooks MODULE``: step hooks as
    plain functions) and ``session_info`` (``{id, dir, connection_file}``,
    what ``stepkernel_pause`` hooks are told about attaching).
    """

    def emit(self, event: dict) -> None:
        """Publish a progress event; every event is flat JSON with ``event`` and ``time``.

        ``session_start`` (runner, args, on_error, rootdir, python, pid),
        ``test_start`` (test, file, phases: [{name, function, steps, stepped,
        step_names}]), ``step_start`` (test, phase, index, name, line),
        ``step_finish`` (test, phase, index, name, status passed|failed|skipped,
        duration_s, error?, forced?), ``pause`` (test, phase, index, name,
        reason, error, file, line), ``resume`` (test, phase, index, action),
        ``edit`` (test, phase, index, name, file, start_line, end_line),
        ``test_finish`` (test, outcome, duration_s, longrepr) and ``summary``
        (one count per outcome: passed, failed, error, skipped, xfailed,
        xpassed, fixed, forced; total, edits, exit_code, aborted, duration_s);
        step hooks add ``hook_decision`` (test, phase, index, name, decision,
        attempt, error) and ``hook_error`` (hook, test, index, name, error,
        traceback). ``test_start``, ``test_finish`` and step events carry
        ``plan_ids`` when the test or step has any.
        ``test`` is pytest's node id (``path::Class::name``, relative to the
        rootdir) under both runners.

        A host with ``raw_json = True`` gets ``test_start``'s phases as a
        ``raw_json.RawJSON`` (their JSON text, to be written as it is); other
        hosts get the decoded list.
        A host may also offer ``emit_line(line: str)`` taking the whole
        worker message ``{"type":"event","event":{...}}`` as one JSON line:
        with ``raw_json`` too, the engine then formats ``test_start`` and
        ``test_finish`` (two events every test) itself.
        """

    def get_steps(self, path: str) -> dict:
        """The instrumenter's report for one file (the ``files[0]`` object of ``stepkernel steps --json``).

        Optional companions: a ``steps_fingerprint`` attribute naming the
        instrumenter and its options (then steps cached on disk under the same
        fingerprint are used without asking), and ``steps_loaded(path)``,
        called once for a file whose steps all came from that cache.
        """

    def pause(self, handler: PausedHandler, info: dict) -> dict:
        """Block serving client requests until a resume command arrives; return it.

        ``info`` describes the pause: ``test``, ``phase``, ``step`` (index),
        ``name`` (step name), ``steps`` (count), ``function``, ``file``,
        ``line`` (of the failing statement, else the step's first line),
        ``reason`` ("error" | "interrupt" | "retry" | "next" | whatever
        ``should_pause_before`` returned), ``error`` ("Type: message" or
        None), ``traceback`` (formatted lines from the step's frame on, engine
        frames removed), ``locals`` (name -> {type, repr <= 200 chars}) and
        ``stepped`` (False when the function runs as one step). The returned
        command is a dict ``{"action": A, ...}`` with A one of ``retry``,
        ``next``, ``continue``, ``skip``, ``fail``, ``abort`` (anything else
        counts as ``fail``).

        Threads: for a synchronous test ``pause`` is called on the thread that
        runs the test (the main thread). For an async test it is called on a
        helper thread named ``stepkernel-pause`` while the test's event loop
        keeps running on its own thread: ``handler.run_cell`` marshals the code
        onto that loop and blocks until it is done, so code a cell runs
        (``input()``, ``emit``) executes on the loop thread *while* the helper
        thread is inside ``pause``. During such a pause SIGINT interrupts only
        a running cell (KeyboardInterrupt is raised in the cell's code).
        Output capture (pytest's) and SIGALRM timers are suspended while
        ``pause`` runs.
        """

    def take_queued(self) -> list[str]:
        """Optional: node ids a client queued (``queue add``) since the last call, to run
        in this session after the selected tests. A plugin that drains it emits a
        ``queue_ready`` event first (before that the control socket refuses ``queue``)
        and calls it after the last selected item, again after each queued test, until
        it returns nothing; the queued tests report ``test_start``/``test_finish``
        like the others."""

    def should_pause_before(self, test_id: str, phase: str, step: int) -> str | None:
        """Non-blocking, called at a step boundary while the engine's step flag is set
        (breakpoints, ``%pause``, ``%next``, edits: see ``wants_step_boundaries``,
        and ``poll_control``, which reads requests that arrived while a test ran):
        a reason to pause before it
        (``"breakpoint"``, ``"pause"`` after ``%pause``, ``"next"`` after ``%next``),
        else None. When it returns a reason the engine calls ``pause`` with
        ``info["reason"]`` set to it and no error. The engine itself pauses
        before the step after a ``next`` command (reason "next"), so the host
        need not track ``%next``."""
