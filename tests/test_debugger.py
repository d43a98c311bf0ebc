"""JupyterLab's debugger protocol against a paused `stepkernel run`, with jupyter_client.

The requests follow JupyterLab's order when it meets a paused kernel
(debugInfo, initialize, attach, setBreakpoints, setExceptionBreakpoints,
stackTrace, scopes, variables, source, evaluate, continue; its
packages/debugger/src/service.ts) and the checks read the fields JupyterLab
reads. Every request must be answered by a `debug_reply` and an iopub idle
whose parent is the request: JupyterLab waits for both.
"""

from __future__ import annotations

import json
import os
import queue
import time

import pytest

from conftest import execute, wait_for, write_project

PROJECT = {
    "shop_calc.py": '''
        def total(prices):
            running = 0
            for price in prices:
                running += price
            assert running > 100, f"too small: {running}"
            return running
        ''',
    "test_dbg.py": '''
        from shop_calc import total


        class Box:
            def __init__(self):
                self.label = "box"
                self.size = 3


        def test_first():
            basket = [1, 2, 3]
            box = Box()
            mapping = {"a": 1}
            total(basket)


        def test_second():
            # step: start
            value = 41
            # step: bump
            value += 1
            # step: check
            assert value == 42
        ''',
}


def line_of(path, text: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


class Dap:
    """A debugger client speaking as JupyterLab does: debug_request on control, events on iopub."""

    def __init__(self, client):
        self.client = client
        self.seq = 0
        self.iopub: list[dict] = []
        self.seen = 0

    def _pull_iopub(self, timeout: float = 0.05) -> None:
        try:
            self.iopub.append(self.client.get_iopub_msg(timeout=timeout))
        except queue.Empty:
            pass

    def send(self, content: dict, timeout: float = 30) -> dict:
        """Sends one debug_request; returns its reply once its iopub idle has come too."""
        msg = self.client.session.msg("debug_request", content)
        msg_id = msg["header"]["msg_id"]
        self.client.control_channel.send(msg)
        reply = None
        deadline = time.monotonic() + timeout
        def idle():
            return any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                       and m["parent_header"].get("msg_id") == msg_id for m in self.iopub)
        while reply is None or not idle():
            assert time.monotonic() < deadline, f"no debug_reply and idle for {content}"
            if reply is None:
                try:
                    m = self.client.control_channel.get_msg(timeout=0.05)
                    if m["parent_header"].get("msg_id") == msg_id:
                        assert m["msg_type"] == "debug_reply"
                        reply = m["content"]
                except queue.Empty:
                    pass
            self._pull_iopub()
        assert any(m["msg_type"] == "status" and m["content"]["execution_state"] == "busy"
                   and m["parent_header"].get("msg_id") == msg_id for m in self.iopub)
        return reply

    def request(self, command: str, arguments: dict | None = None, **kw) -> dict:
        self.seq += 1
        reply = self.send({"type": "request", "seq": self.seq, "command": command,
                           "arguments": arguments or {}}, **kw)
        assert reply["type"] == "response" and reply["request_seq"] == self.seq
        assert reply["command"] == command
        return reply

    def ok(self, command: str, arguments: dict | None = None) -> dict:
        reply = self.request(command, arguments)
        assert reply["success"] is True, reply
        return reply["body"]

    def execute(self, code: str, timeout: float = 60) -> dict:
        """Runs a cell, keeping every iopub message (debug events have no parent)."""
        msg_id = self.client.execute(code)
        deadline = time.monotonic() + timeout
        while not any(m["msg_type"] == "status" and m["content"]["execution_state"] == "idle"
                      and m["parent_header"].get("msg_id") == msg_id for m in self.iopub):
            assert time.monotonic() < deadline, f"no idle for {code!r}"
            self._pull_iopub(0.2)
        reply = self.client.get_shell_msg(timeout=timeout)
        assert reply["parent_header"]["msg_id"] == msg_id
        return reply["content"]

    def events(self) -> list[dict]:
        return [m["content"] for m in self.iopub if m["msg_type"] == "debug_event"]

    def wait_event(self, name: str, timeout: float = 60, **body) -> dict:
        """The next debug event `name` (with these body fields) after those already taken."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events()[self.seen:] if e["event"] == name
                     and all(e["body"].get(k) == v for k, v in body.items())]
            if found:
                self.seen = self.events().index(found[0]) + 1
                return found[0]
            assert time.monotonic() < deadline, f"no {name} event {body}; got {self.events()}"
            self._pull_iopub(0.2)


def named(variables: list[dict]) -> dict[str, dict]:
    return {v["name"]: v for v in variables}


@pytest.fixture
def paused(tmp_path, run_session):
    project = write_project(tmp_path / "project", PROJECT)
    session = run_session(project, "test_dbg.py")
    session.wait_paused()
    client = session.client()
    return project, session, client


def test_jupyterlab_sequence_on_a_paused_test(paused):
    project, session, client = paused
    test_file = os.path.realpath(project / "test_dbg.py")
    calc_file = os.path.realpath(project / "shop_calc.py")
    dap = Dap(client)

    info = dap.ok("debugInfo")
    # A paused test: JupyterLab opens the debugger by itself.
    assert info["stoppedThreads"] == [1]
    assert info["hashMethod"] == "Murmur2" and isinstance(info["hashSeed"], int)
    assert info["tmpFilePrefix"].endswith("/") and info["tmpFileSuffix"] == ".py"
    assert info["breakpoints"] == [] and info["isStarted"] is False

    caps = dap.ok("initialize", {"clientID": "jupyterlab", "adapterID": "stepkernel", "pathFormat": "path",
                                 "linesStartAt1": True, "columnsStartAt1": True, "supportsVariableType": True,
                                 "supportsVariablePaging": True})
    assert caps["exceptionBreakpointFilters"][0]["filter"] == "let-steps-fail"
    dap.ok("attach")
    stopped = dap.wait_event("stopped")
    assert stopped["body"]["reason"] == "exception" and stopped["body"]["threadId"] == 1
    assert "too small: 6" in stopped["body"]["text"]

    # A breakpoint on a later test's step marker moves to the step's first line.
    marker = line_of(project / "test_dbg.py", "# step: bump")
    bump = line_of(project / "test_dbg.py", "value += 1")
    answer = dap.ok("setBreakpoints", {"source": {"path": test_file}, "breakpoints": [{"line": marker}],
                                       "sourceModified": False})
    assert [(b["verified"], b["line"]) for b in answer["breakpoints"]] == [(True, bump)]
    # A line in no test's steps is refused with a reason.
    answer = dap.ok("setBreakpoints", {"source": {"path": calc_file}, "breakpoints": [{"line": 3}]})
    assert answer["breakpoints"][0]["verified"] is False and answer["breakpoints"][0]["message"]
    dap.ok("setBreakpoints", {"source": {"path": calc_file}, "breakpoints": []})
    dap.ok("setExceptionBreakpoints", {"filters": []})
    remembered = dap.ok("debugInfo")["breakpoints"]
    assert [(b["source"], [(x["line"], x["verified"]) for x in b["breakpoints"]]) for b in remembered] == [
        (test_file, [(bump, True)])]

    # The call stack: the test function at the failing line, then the code under test where it raised.
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    assert [(f["name"], f["source"]["path"], f["line"]) for f in frames] == [
        ("test_first", test_file, line_of(project / "test_dbg.py", "total(basket)")),
        ("total", calc_file, line_of(project / "shop_calc.py", "assert running")),
    ]
    assert all(isinstance(f["id"], int) and f["column"] == 1 for f in frames)

    scopes = dap.ok("scopes", {"frameId": frames[0]["id"]})["scopes"]
    assert [s["name"] for s in scopes] == ["Locals", "Globals"]
    local_vars = named(dap.ok("variables", {"variablesReference": scopes[0]["variablesReference"]})["variables"])
    assert set(local_vars) == {"basket", "box", "mapping"}
    assert (local_vars["basket"]["value"], local_vars["basket"]["type"]) == ("[1, 2, 3]", "list")
    assert local_vars["box"]["type"] == "Box"
    globals_ = named(dap.ok("variables", {"variablesReference": scopes[1]["variablesReference"]})["variables"])
    assert "Box" in globals_ and "total" in globals_

    # Expanding a list and an object asks the worker for their children.
    items = dap.ok("variables", {"variablesReference": local_vars["basket"]["variablesReference"]})["variables"]
    assert [(v["name"], v["value"]) for v in items] == [("0", "1"), ("1", "2"), ("2", "3")]
    attrs = named(dap.ok("variables", {"variablesReference": local_vars["box"]["variablesReference"]})["variables"])
    assert (attrs["label"]["value"], attrs["size"]["value"]) == ("'box'", "3")
    paged = dap.ok("variables", {"variablesReference": local_vars["basket"]["variablesReference"],
                                 "start": 1, "count": 1})["variables"]
    assert [v["value"] for v in paged] == ["2"]

    # The frame of the code under test has its own variables.
    callee = dap.ok("scopes", {"frameId": frames[1]["id"]})["scopes"]
    callee_vars = named(dap.ok("variables", {"variablesReference": callee[0]["variablesReference"]})["variables"])
    assert callee_vars["running"]["value"] == "6"

    source = dap.ok("source", {"source": {"path": test_file}, "sourceReference": 0})
    assert source["content"] == (project / "test_dbg.py").read_text()

    # dumpCell of the test file's text: JupyterLab's hash path for it.
    from ipykernel.compiler import murmur2_x86

    text = (project / "test_dbg.py").read_text()
    dumped = dap.ok("dumpCell", {"code": text})
    assert dumped["sourcePath"] == f"{info['tmpFilePrefix']}{murmur2_x86(text, info['hashSeed'])}.py"
    # A file editor's gutter names the file by that path: its breakpoints are the file's.
    answer = dap.ok("setBreakpoints", {"source": {"path": dumped["sourcePath"]}, "breakpoints": [{"line": bump}]})
    assert [(b["verified"], b["line"]) for b in answer["breakpoints"]] == [(True, bump)]
    assert dap.ok("source", {"source": {"path": dumped["sourcePath"]}})["content"] == text
    cell = dap.ok("dumpCell", {"code": "x = 1\n"})["sourcePath"]
    answer = dap.ok("setBreakpoints", {"source": {"path": cell}, "breakpoints": [{"line": 1}]})
    assert answer["breakpoints"][0]["verified"] is False
    assert "not a test file" in answer["breakpoints"][0]["message"]

    # Rich rendering and JupyterLab's cheap variables view.
    rich = dap.ok("richInspectVariables", {"variableName": "mapping", "frameId": frames[0]["id"]})
    assert rich["data"]["text/plain"] == "{'a': 1}"
    assert set(named(dap.ok("inspectVariables")["variables"])) == {"basket", "box", "mapping"}

    # evaluate runs in the paused namespace, like a cell: assignments stay.
    result = dap.ok("evaluate", {"expression": "len(basket) + 10", "frameId": frames[0]["id"], "context": "repl"})
    assert result["result"] == "13"
    # As JupyterLab does after an evaluate: fetch the frames again. Nothing changed: same ids
    # (JupyterLab then keeps its view; new ids would make it refetch and re-show the source).
    assert dap.ok("stackTrace", {"threadId": 1})["stackFrames"] == frames
    dap.ok("evaluate", {"expression": "extra = basket[0] * 7", "frameId": frames[0]["id"], "context": "repl"})
    reply, messages = execute(client, "extra")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["7"]
    # A variable changed: fresh frame ids, so JupyterLab refetches the variables; old ids are refused.
    refreshed = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    assert refreshed[0]["id"] != frames[0]["id"]
    stale = dap.request("evaluate", {"expression": "1", "frameId": frames[0]["id"], "context": "repl"})
    assert stale["success"] is False and "fetch the stack again" in stale["message"]
    new_locals = dap.ok("scopes", {"frameId": refreshed[0]["id"]})["scopes"][0]
    assert named(dap.ok("variables", {"variablesReference": new_locals["variablesReference"]})["variables"])[
        "extra"]["value"] == "7"
    failed = dap.request("evaluate", {"expression": "no_such_name", "frameId": refreshed[0]["id"], "context": "repl"})
    assert failed["success"] is False and "NameError" in failed["message"]
    # A cell that changes the test's variables makes the debugger show them anew (a stopped event).
    assert dap.execute("basket.append(100)")["status"] == "ok"
    dap.wait_event("stopped", reason="exception")
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    scope = dap.ok("scopes", {"frameId": frames[0]["id"]})["scopes"][0]
    assert named(dap.ok("variables", {"variablesReference": scope["variablesReference"]})["variables"])[
        "basket"]["value"] == "[1, 2, 3, 100]"
    dap.ok("evaluate", {"expression": "basket.pop()", "frameId": frames[0]["id"], "context": "repl"})

    # stepIn has no meaning between steps: refused with a message.
    step_in = dap.request("stepIn", {"threadId": 1})
    assert step_in["success"] is False and "Next" in step_in["message"]

    # Continue is %continue: the failing step runs again; unchanged, it fails again and pauses.
    assert dap.ok("continue", {"threadId": 1}) == {"allThreadsContinued": True}
    dap.wait_event("continued")
    dap.wait_event("stopped", reason="exception")
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    # Fix the state from the debug console; the step then passes and the run goes on
    # to test_second, which pauses at the breakpoint.
    dap.ok("evaluate", {"expression": "basket.append(200)", "frameId": frames[0]["id"], "context": "repl"})
    dap.ok("continue", {"threadId": 1})
    dap.wait_event("continued")
    stopped = dap.wait_event("stopped", reason="breakpoint")
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    assert [(f["name"], f["line"]) for f in frames] == [("test_second", bump)]
    scope = dap.ok("scopes", {"frameId": frames[0]["id"]})["scopes"][0]
    values = named(dap.ok("variables", {"variablesReference": scope["variablesReference"]})["variables"])
    assert values["value"]["value"] == "41"

    # next runs one step and pauses again.
    dap.ok("next", {"threadId": 1})
    dap.wait_event("continued")
    dap.wait_event("stopped", reason="step")
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    scope = dap.ok("scopes", {"frameId": frames[0]["id"]})["scopes"][0]
    values = named(dap.ok("variables", {"variablesReference": scope["variablesReference"]})["variables"])
    assert values["value"]["value"] == "42"

    dap.ok("continue", {"threadId": 1})
    dap.wait_event("terminated")
    assert session.wait_exit() == 0
    assert [e["outcome"] for e in session.events() if e["event"] == "test_finish"] == ["passed", "passed"]


def test_malformed_and_unknown_requests_get_a_failure_and_the_kernel_serves_on(paused):
    project, session, client = paused
    dap = Dap(client)
    for content in [
        {"type": "request", "seq": 1, "command": "restartFrame", "arguments": {"frameId": 1}},
        {"type": "request", "seq": 2, "command": "goto", "arguments": {}},
        {"type": "request", "seq": 3},
        {"type": "request", "seq": 4, "command": "scopes", "arguments": "not an object"},
        {"type": "event", "seq": 5, "command": "stackTrace"},
        {"seq": 6, "command": "variables"},
        {"type": "request", "seq": 7, "command": "variables", "arguments": {"variablesReference": 987654}},
        {"type": "request", "seq": 8, "command": "scopes", "arguments": {"frameId": 987654}},
        {"type": "request", "seq": 9, "command": "setBreakpoints", "arguments": {}},
        {"type": "request", "seq": 10, "command": "evaluate", "arguments": {}},
    ]:
        reply = dap.send(content)
        assert reply["type"] == "response" and reply["success"] is False, (content, reply)
        assert reply["message"], reply
        assert reply["request_seq"] == content["seq"]
    # A debug_request whose content is not even an object.
    msg = client.session.msg("debug_request", {})
    msg["content"] = b"[1, 2]"  # sent as is: not a JSON object
    client.control_channel.send(msg)
    reply = client.control_channel.get_msg(timeout=30)
    assert reply["msg_type"] == "debug_reply" and reply["content"]["success"] is False
    # The kernel says it debugs, and names its kernelspec.
    content = client.kernel_info(reply=True, timeout=30)["content"]
    assert content["supported_features"] == ["debugger"] and content["debugger"] is True
    connection = json.loads((session.session_dir / "connection.json").read_text())
    assert connection["kernel_name"] == "stepkernel"
    # Once a step is edited, the source view shows the edited text.
    reply, _ = execute(client, "%%edit\ntotal(basket + [500])\n")
    assert reply["status"] == "ok", reply
    test_file = os.path.realpath(project / "test_dbg.py")
    shown = dap.ok("source", {"source": {"path": test_file}})["content"]
    assert "total(basket + [500])" in shown and "    total(basket)\n" not in shown
    assert (project / "test_dbg.py").read_text() != shown, "the file itself is untouched"
    # Still serving: the debugger and the paused namespace answer.
    assert dap.ok("debugInfo")["stoppedThreads"] == [1]
    reply, messages = execute(client, "basket")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["[1, 2, 3]"]
    assert session.meta()["state"] == "paused"

    # Turning the debugger off detaches it: the test stays paused and its breakpoints go.
    dap.ok("initialize", {"clientID": "jupyterlab", "adapterID": "stepkernel"})
    bump = line_of(project / "test_dbg.py", "value += 1")
    assert dap.ok("setBreakpoints", {"source": {"path": test_file},
                                     "breakpoints": [{"line": bump}]})["breakpoints"][0]["verified"]
    dap.ok("disconnect", {"restart": False, "terminateDebuggee": False})
    info = dap.ok("debugInfo")
    assert info["isStarted"] is False and info["breakpoints"] == [] and info["stoppedThreads"] == [1]
    assert session.meta()["state"] == "paused"
    reply, _ = execute(client, "%continue")
    assert reply["status"] == "ok"
    session.wait_exit()
    assert [e["reason"] for e in session.events() if e["event"] == "pause"] == ["error"]
    assert not [e for e in dap.events() if e["event"] in ("continued", "terminated")], "no events once detached"


def test_pause_button_pauses_a_running_test_before_its_next_step(tmp_path, run_session):
    project = write_project(tmp_path / "project", {"test_wait.py": '''
        import os
        import time


        def test_waits():
            # step: wait for the flag
            open("started.flag", "w").close()
            while not os.path.exists("go.flag"):
                time.sleep(0.02)
            # step: after
            done = True


        def test_fails():
            assert 1 == 2
        '''})
    session = run_session(project, "test_wait.py")
    client = session.client()
    wait_for(lambda: (project / "started.flag").exists(), timeout=60, what="the first step to run")
    dap = Dap(client)
    assert dap.ok("debugInfo")["stoppedThreads"] == []
    dap.ok("initialize", {"clientID": "jupyterlab", "adapterID": "stepkernel"})
    dap.ok("attach")
    # Not paused: nothing to show yet, and JupyterLab's cheap queries answer at once.
    assert dap.ok("stackTrace", {"threadId": 1})["stackFrames"] == []
    assert dap.ok("inspectVariables") == {"variables": []}
    assert dap.request("continue", {"threadId": 1})["success"] is False
    dap.ok("pause", {"threadId": 1})
    (project / "go.flag").write_text("")
    stopped = dap.wait_event("stopped", reason="pause")
    assert stopped["body"]["threadId"] == 1
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    assert [(f["name"], f["line"]) for f in frames] == [("test_waits", line_of(project / "test_wait.py", "done = True"))]
    # Already paused: the Pause button is refused with the reason.
    again = dap.request("pause", {"threadId": 1})
    assert again["success"] is False and "already paused" in again["message"]
    # "Let failing steps fail": the next failing test fails as under pytest, without pausing.
    assert dap.ok("setExceptionBreakpoints", {"filters": ["let-steps-fail"]})["breakpoints"][0]["verified"]
    dap.ok("continue", {"threadId": 1})
    dap.wait_event("terminated")
    assert session.wait_exit() == 1
    assert [e["outcome"] for e in session.events() if e["event"] == "test_finish"] == ["passed", "failed"]
    assert [e["reason"] for e in session.events() if e["event"] == "pause"] == ["pause"]


def test_a_notebook_kernel_between_tests_and_in_a_loaded_test(kernel):
    """The kernelspec's kernel (a notebook): the plain namespace, then `%test` pausing a test."""
    (kernel.tmp / "test_nb.py").write_text("def test_loaded():\n    seen = [1, 2]\n    assert seen\n")
    client = kernel.client
    dap = Dap(client)
    info = dap.ok("debugInfo")
    assert info["stoppedThreads"] == [] and info["isStarted"] is False
    dap.ok("initialize", {"clientID": "jupyterlab", "adapterID": "stepkernel"})
    dap.ok("attach")
    assert dap.execute("answer = 42\nitems = ['a']")["status"] == "ok"
    # Not paused: JupyterLab's Variables panel shows the notebook's names (asked often: cheap).
    shown = named(dap.ok("inspectVariables")["variables"])
    assert shown["answer"]["value"] == "42" and shown["items"]["variablesReference"] > 0
    assert dap.ok("richInspectVariables", {"variableName": "answer"})["data"]["text/plain"] == "42"
    refused = dap.request("evaluate", {"expression": "answer", "context": "repl"})
    assert refused["success"] is False and "paused" in refused["message"]
    # %test loads a test paused before its body: the debugger stops there.
    reply = dap.execute("%test test_nb.py::test_loaded")
    assert reply["status"] == "ok", reply
    stopped = dap.wait_event("stopped")
    assert stopped["body"]["reason"] == "entry"
    frames = dap.ok("stackTrace", {"threadId": 1})["stackFrames"]
    assert [(f["name"], f["line"]) for f in frames] == [("test_loaded", 2)]
    assert dap.ok("debugInfo")["stoppedThreads"] == [1]
    dap.ok("next", {"threadId": 1})
    dap.wait_event("stopped", reason="step")
    scope = dap.ok("scopes", {"frameId": dap.ok("stackTrace", {"threadId": 1})["stackFrames"][0]["id"]})["scopes"][0]
    assert named(dap.ok("variables", {"variablesReference": scope["variablesReference"]})["variables"])[
        "seen"]["value"] == "[1, 2]"
