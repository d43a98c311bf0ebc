"""`stepkernel kernel` against jupyter_client: kernel_info, execute, stdin, introspection, history.

These tests share one kernel per module (they only add state); tests that
kill, interrupt or restart the kernel live in test_kernel_lifecycle.py.
"""

from __future__ import annotations

import queue

import pytest

from conftest import (
    PYTHON,
    KernelProcess,
    execute,
    get_reply,
    iopub_until_idle,
    python_version_of,
    request,
    send_request,
    stream_text,
)


@pytest.fixture
def kc(shared_kernel):
    return shared_kernel.client


def types_of(messages):
    return [m["msg_type"] for m in messages]


def assert_busy_idle(messages):
    """The first message for a request is status busy, the last one status idle."""
    assert messages, "no iopub messages for the request"
    first, last = messages[0], messages[-1]
    assert (first["msg_type"], first["content"].get("execution_state")) == ("status", "busy"), types_of(messages)
    assert (last["msg_type"], last["content"].get("execution_state")) == ("status", "idle"), types_of(messages)


# ----------------------------------------------------------------- kernel_info


@pytest.mark.parametrize("channel", ["shell", "control"])
def test_kernel_info(kc, channel):
    reply, messages = request(kc, "kernel_info_request", channel=channel)
    assert reply["msg_type"] == "kernel_info_reply"
    content = reply["content"]
    assert content["status"] == "ok"
    major, minor = (int(part) for part in content["protocol_version"].split(".")[:2])
    assert (major, minor) >= (5, 3)
    assert content["implementation"] == "stepkernel"
    language = content["language_info"]
    assert language["name"] == "python"
    assert language["version"] == python_version_of(PYTHON)
    assert language["file_extension"] == ".py"
    assert language["mimetype"] == "text/x-python"
    assert "stepkernel" in content["banner"]
    assert_busy_idle(messages)


def test_busy_idle_around_every_request(kc):
    execute(kc, "import os")
    requests = [
        ("execute_request", {"code": "1", "silent": False}),
        ("complete_request", {"code": "os.pa", "cursor_pos": 5}),
        ("inspect_request", {"code": "len", "cursor_pos": 3, "detail_level": 0}),
        ("is_complete_request", {"code": "x = 1"}),
        ("history_request", {"hist_access_type": "tail", "n": 3, "output": False, "raw": True}),
        ("comm_info_request", {}),
        ("kernel_info_request", {}),
    ]
    for msg_type, content in requests:
        reply, messages = request(kc, msg_type, content)
        assert reply["msg_type"] == msg_type.replace("_request", "_reply")
        assert_busy_idle(messages)
        # Exactly one busy and one idle per request.
        states = [m["content"]["execution_state"] for m in messages if m["msg_type"] == "status"]
        assert states == ["busy", "idle"], (msg_type, states)


# ----------------------------------------------------------------- execute


def test_output_at_fd_level_arrives_before_reply(kc):
    code = (
        "import os, sys\n"
        "print('py-out')\n"
        "os.write(1, b'c-out\\n')\n"
        "os.system('echo sub-out')\n"
        "print('py-err', file=sys.stderr)\n"
        "os.write(2, b'c-err\\n')\n"
        "os.system('echo sub-err 1>&2')\n"
    )
    msg_id = send_request(kc, "execute_request", {"code": code, "silent": False})
    reply = get_reply(kc, msg_id)
    messages = iopub_until_idle(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    streams = [(m["content"]["name"], m["content"]["text"]) for m in messages if m["msg_type"] == "stream"]
    stdout = "".join(text for name, text in streams if name == "stdout")
    stderr = "".join(text for name, text in streams if name == "stderr")
    assert stdout == "py-out\nc-out\nsub-out\n"
    assert stderr == "py-err\nc-err\nsub-err\n"
    # All output was sent before the reply: iopub is ordered, so the streams come
    # before idle, and the kernel stamped each of them no later than the reply.
    reply_date = reply["header"]["date"]
    for m in messages:
        if m["msg_type"] == "stream":
            assert m["header"]["date"] <= reply_date


def test_one_print_is_one_stream_message_even_unbuffered(tmp_path, monkeypatch):
    # PYTHONUNBUFFERED is common in containers; print() must still arrive as whole lines.
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    kp = KernelProcess(tmp_path)
    try:
        for _ in range(10):
            reply, messages = execute(kp.client, "print('a', 'b', 'c')")
            assert reply["status"] == "ok"
            assert [c["text"] for t, c in messages if t == "stream"] == ["a b c\n"]
    finally:
        kp.close()


def test_execute_input_result_and_counts(kc):
    reply, messages = execute(kc, "6 * 7")
    count = reply["execution_count"]
    inputs = [c for t, c in messages if t == "execute_input"]
    results = [c for t, c in messages if t == "execute_result"]
    assert inputs == [{"code": "6 * 7", "execution_count": count}]
    assert len(results) == 1
    assert results[0]["data"]["text/plain"] == "42"
    assert results[0]["execution_count"] == count
    # The next request gets the next number; errors also take a number.
    reply2, _ = execute(kc, "x_count = 1")
    assert reply2["execution_count"] == count + 1
    reply3, _ = execute(kc, "1/0")
    assert reply3["execution_count"] == count + 2
    reply4, messages4 = execute(kc, "x_count")
    assert reply4["execution_count"] == count + 3
    assert [c["execution_count"] for t, c in messages4 if t == "execute_result"] == [count + 3]


def test_no_result_for_statement_none_or_semicolon(kc):
    for code in ("y_stmt = 3", "None", "y_stmt;"):
        reply, messages = execute(kc, code)
        assert reply["status"] == "ok"
        assert "execute_result" not in [t for t, _ in messages], code


def test_html_repr(kc):
    code = (
        "class Fancy:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>fancy</b>'\n"
        "    def __repr__(self):\n"
        "        return 'Fancy()'\n"
        "Fancy()"
    )
    reply, messages = execute(kc, code)
    assert reply["status"] == "ok"
    (result,) = [c for t, c in messages if t == "execute_result"]
    assert result["data"]["text/html"] == "<b>fancy</b>"
    assert result["data"]["text/plain"] == "Fancy()"


def test_display_builtin(kc):
    code = (
        "class Shown:\n"
        "    def _repr_html_(self):\n"
        "        return '<i>shown</i>'\n"
        "display(Shown(), 'plain')"
    )
    reply, messages = execute(kc, code)
    assert reply["status"] == "ok"
    shown = [c["data"] for t, c in messages if t == "display_data"]
    assert [d.get("text/html") for d in shown] == ["<i>shown</i>", None]
    assert shown[1]["text/plain"] == "'plain'"


def test_error(kc):
    code = "def inner():\n    raise ValueError('bad value 17')\ninner()"
    reply, messages = execute(kc, code)
    assert reply["status"] == "error"
    assert reply["ename"] == "ValueError"
    assert reply["evalue"] == "bad value 17"
    traceback = "\n".join(reply["traceback"])
    assert "inner()" in traceback
    assert "raise ValueError('bad value 17')" in traceback
    assert "ValueError: bad value 17" in traceback
    # The worker's own frames are not shown.
    assert "stepkernel_worker" not in traceback
    (error,) = [c for t, c in messages if t == "error"]
    assert (error["ename"], error["evalue"]) == ("ValueError", "bad value 17")
    assert error["traceback"] == reply["traceback"]


def test_syntax_error(kc):
    reply, messages = execute(kc, "def broken(:\n    pass")
    assert reply["status"] == "error"
    assert reply["ename"] == "SyntaxError"
    assert "error" in [t for t, _ in messages]


def test_silent(kc):
    before, _ = execute(kc, "silent_value = 0")
    reply, messages = execute(kc, "silent_value = 5\nprint('from silent')\nsilent_value", silent=True)
    assert reply["status"] == "ok"
    assert reply["execution_count"] == before["execution_count"]
    kinds = [t for t, _ in messages]
    assert "execute_input" not in kinds
    assert "execute_result" not in kinds
    # Output of a silent request still reaches the client (as in ipykernel).
    assert stream_text(messages) == "from silent\n"
    after, messages = execute(kc, "silent_value")
    assert after["execution_count"] == before["execution_count"] + 1
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["5"]


def test_store_history_false(kc):
    before, _ = execute(kc, "unstored = 0")
    reply, messages = execute(kc, "unstored = 11\nunstored * 2", store_history=False)
    assert reply["status"] == "ok"
    assert reply["execution_count"] == before["execution_count"]
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["22"]
    history = kc.history(hist_access_type="tail", n=50, output=False, raw=True, reply=True)["content"]["history"]
    inputs = [entry[2] for entry in history]
    assert "unstored = 0" in inputs
    assert not any("unstored = 11" in source for source in inputs)
    after, _ = execute(kc, "unstored")
    assert after["execution_count"] == before["execution_count"] + 1


def test_user_expressions(kc):
    execute(kc, "ue = 20")
    reply, _ = execute(kc, "ue += 1", user_expressions={"plus": "ue + 1", "broken": "1/0", "name": "'n' * 2"})
    assert reply["status"] == "ok"
    results = reply["user_expressions"]
    assert results["plus"]["status"] == "ok"
    assert results["plus"]["data"]["text/plain"] == "22"
    assert results["name"]["data"]["text/plain"] == "'nn'"
    assert results["broken"]["status"] == "error"
    assert results["broken"]["ename"] == "ZeroDivisionError"


def _send_batch(kc, first_code, stop_on_error):
    """Queue a failing request and two more behind it; return their replies in order."""
    ids = [
        send_request(kc, "execute_request", {"code": first_code, "silent": False, "stop_on_error": stop_on_error}),
        send_request(kc, "execute_request", {"code": "ran_second = True", "silent": False}),
        send_request(kc, "execute_request", {"code": "ran_third = True", "silent": False}),
    ]
    replies = [get_reply(kc, msg_id) for msg_id in ids]
    iopub_until_idle(kc, ids[-1])
    return replies


def test_stop_on_error_aborts_queued_requests(kc):
    execute(kc, "ran_second = ran_third = False")
    # The sleep only makes sure the other two are queued before the error.
    replies = _send_batch(kc, "import time\ntime.sleep(0.3)\nraise RuntimeError('stop here')", True)
    statuses = [r["content"]["status"] for r in replies]
    assert statuses == ["error", "aborted", "aborted"]
    assert replies[0]["content"]["ename"] == "RuntimeError"
    reply, messages = execute(kc, "(ran_second, ran_third)")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["(False, False)"]
    # Aborted requests take no execution number.
    assert reply["execution_count"] == replies[0]["content"]["execution_count"] + 1
    # The queue is not poisoned: the next request runs normally.
    assert execute(kc, "ran_second")[0]["status"] == "ok"


def test_request_sent_after_the_error_reply_runs(kc):
    # Only requests queued *before* the error is answered are aborted.
    for _ in range(3):
        assert execute(kc, "raise KeyError('k')")[0]["status"] == "error"
        reply, messages = execute(kc, "'ran'")
        assert reply["status"] == "ok"
        assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["'ran'"]


def test_stop_on_error_false_runs_queued_requests(kc):
    execute(kc, "ran_second = ran_third = False")
    replies = _send_batch(kc, "import time\ntime.sleep(0.3)\nraise RuntimeError('go on')", False)
    assert [r["content"]["status"] for r in replies] == ["error", "ok", "ok"]
    _, messages = execute(kc, "(ran_second, ran_third)")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["(True, True)"]


# ----------------------------------------------------------------- stdin


def test_input_round_trip(kc):
    msg_id = kc.execute("answer = input('Your name? ')\nprint('hello', answer)", allow_stdin=True)
    prompt = kc.get_stdin_msg(timeout=30)
    assert prompt["msg_type"] == "input_request"
    assert prompt["parent_header"]["msg_id"] == msg_id
    assert prompt["content"]["prompt"] == "Your name? "
    assert prompt["content"]["password"] is False
    kc.input("Ada")
    reply = get_reply(kc, msg_id)
    messages = iopub_until_idle(kc, msg_id)
    assert reply["content"]["status"] == "ok"
    assert "hello Ada\n" in "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    _, messages = execute(kc, "answer")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["'Ada'"]


def test_getpass_is_a_password_request(kc):
    msg_id = kc.execute("import getpass\nsecret = getpass.getpass('Token: ')", allow_stdin=True)
    prompt = kc.get_stdin_msg(timeout=30)
    assert prompt["content"] == {"prompt": "Token: ", "password": True}
    kc.input("s3cret")
    assert get_reply(kc, msg_id)["content"]["status"] == "ok"
    iopub_until_idle(kc, msg_id)
    _, messages = execute(kc, "secret")
    assert [c["data"]["text/plain"] for t, c in messages if t == "execute_result"] == ["'s3cret'"]


def test_input_without_stdin_is_a_clear_error(kc):
    msg_id = kc.execute("value = input('never asked: ')", allow_stdin=False)
    reply = get_reply(kc, msg_id)
    iopub_until_idle(kc, msg_id)
    assert reply["content"]["status"] == "error"
    assert "stdin" in reply["content"]["evalue"]
    with pytest.raises(queue.Empty):
        kc.get_stdin_msg(timeout=0.2)


# ----------------------------------------------------------------- introspection


def completions(kc, code, cursor_pos=None):
    """The texts a client would get by applying each match of a complete_reply."""
    cursor_pos = len(code) if cursor_pos is None else cursor_pos
    reply, _ = request(kc, "complete_request", {"code": code, "cursor_pos": cursor_pos})
    content = reply["content"]
    assert content["status"] == "ok"
    assert content["cursor_end"] == cursor_pos
    start, end = content["cursor_start"], content["cursor_end"]
    return [code[:start] + match + code[end:] for match in content["matches"]]


def test_complete_names(kc):
    execute(kc, "my_special_variable = 1\nmy_special_function = len")
    applied = completions(kc, "my_spec")
    assert "my_special_variable" in applied
    assert "my_special_function" in applied
    assert "print" in completions(kc, "pri")


def test_complete_attributes(kc):
    execute(kc, "import os")
    assert "os.path" in completions(kc, "os.pa")
    assert "x = os.path.join" in completions(kc, "x = os.path.jo")


def test_complete_module_names(kc):
    assert "import json" in completions(kc, "import js")
    assert "import xml.dom" in completions(kc, "import xml.do")
    assert "from os import path" in completions(kc, "from os import pa")


def test_complete_mid_line(kc):
    execute(kc, "import os")
    code = "os.pa + 1"
    assert "os.path + 1" in completions(kc, code, cursor_pos=5)


def test_inspect(kc):
    execute(kc, 'def greet(name, punctuation="!"):\n    """Say hello to someone by name."""\n    return name')
    for code, pos in (("greet", 5), ("greet(", 6), ("greet('x', ", 11)):
        reply, _ = request(kc, "inspect_request", {"code": code, "cursor_pos": pos, "detail_level": 0})
        content = reply["content"]
        assert content["status"] == "ok"
        assert content["found"] is True, code
        text = content["data"]["text/plain"]
        assert "greet(name, punctuation='!')" in text
        assert "Say hello to someone by name." in text
    reply, _ = request(kc, "inspect_request", {"code": "no_such_name_here", "cursor_pos": 5, "detail_level": 0})
    assert reply["content"]["found"] is False


def test_inspect_detail_shows_source(kc):
    execute(kc, "def with_source():\n    return 'unique-source-marker'")
    reply, _ = request(kc, "inspect_request", {"code": "with_source", "cursor_pos": 11, "detail_level": 1})
    assert "unique-source-marker" in reply["content"]["data"]["text/plain"]


@pytest.mark.parametrize(
    "code, status, indent",
    [
        ("x = 1", "complete", None),
        ("for i in range(3):", "incomplete", "    "),
        ("if True:\n    if True:", "incomplete", "        "),
        ("total = (1 +", "incomplete", ""),
        ("x = )", "invalid", None),
    ],
)
def test_is_complete(kc, code, status, indent):
    reply, _ = request(kc, "is_complete_request", {"code": code})
    content = reply["content"]
    assert content["status"] == status
    if indent is not None:
        assert content["indent"] == indent


def test_history(kc):
    first, _ = execute(kc, "hist_a = 'first'")
    execute(kc, "hist_b = 'second'")
    execute(kc, "hist_c = 'third'")
    tail = kc.history(hist_access_type="tail", n=2, output=False, raw=True, reply=True)["content"]
    assert tail["status"] == "ok"
    assert [entry[2] for entry in tail["history"]] == ["hist_b = 'second'", "hist_c = 'third'"]
    n = first["execution_count"]
    # Each entry is (session, line, input); lines are execution counts.
    assert [entry[1] for entry in tail["history"]] == [n + 1, n + 2]
    ranged = kc.history(
        hist_access_type="range", session=0, start=n, stop=n + 2, output=False, raw=True, reply=True
    )["content"]
    assert [entry[2] for entry in ranged["history"]] == ["hist_a = 'first'", "hist_b = 'second'"]
    search = kc.history(hist_access_type="search", pattern="hist_?=*", n=10, output=False, raw=True, reply=True)
    assert search["content"]["history"] == []
    search = kc.history(hist_access_type="search", pattern="hist_c*", n=10, output=False, raw=True, reply=True)
    assert [entry[2] for entry in search["content"]["history"]] == ["hist_c = 'third'"]


def test_comm_info(kc):
    reply, _ = request(kc, "comm_info_request", {})
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["comms"] == {}


def test_exit_asks_the_client_to_leave(kc):
    # As in IPython: `exit`/`quit` answer with an ask_exit payload; the client decides.
    for code, keep in (("exit", False), ("quit()", False), ("exit(keep_kernel=True)", True)):
        reply, messages = execute(kc, code)
        assert reply["status"] == "ok"
        assert reply["payload"] == [{"source": "ask_exit", "keepkernel": keep}], code
        assert "execute_result" not in [t for t, _ in messages]
    # Other cells carry no payload, and the kernel itself keeps running.
    reply, messages = execute(kc, "repr(exit)")
    assert "payload" not in reply or reply["payload"] == []
    assert "keep_kernel=True" in [c for t, c in messages if t == "execute_result"][0]["data"]["text/plain"]
