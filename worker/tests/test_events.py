"""Step events: the formatted fast path says what the dict path says; the shared event ring."""

from __future__ import annotations

import json
import os

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.channel import EventRing, encode_flat
from stepkernel_worker.stepping.engine import Engine

SOURCE = '''
def steps(n):
    """A docstring is no step."""
    name = "quote \\" and \\u00e9 and \\\\ backslash"
    total = 0
    for i in range(n):
        total += i
    assert total < 100, name
    return total
'''


def test_step_events_carry_index_status_duration_and_error(tmp_path):
    mod = load_module(str(tmp_path), "events_mod", SOURCE)
    engine = Engine(RecordingHost(get_steps=build_report), on_error="fail")
    assert call_stepped(engine, mod.steps, 4, test_id='t.py::test_"odd"[é]')[1] == 6
    with pytest.raises(AssertionError):
        call_stepped(engine, mod.steps, 20, test_id="t.py::test_fails")
    starts = [(e["test"], e["index"]) for e in engine.host.of("step_start")]
    assert starts == [('t.py::test_"odd"[é]', i) for i in range(5)] + [("t.py::test_fails", i) for i in range(4)]
    finished = engine.host.of("step_finish")
    assert all(isinstance(e["duration_s"], float) and e["duration_s"] >= 0 for e in finished)
    assert [e["status"] for e in finished] == ["passed"] * 8 + ["failed"]
    assert finished[-1]["error"].startswith("AssertionError")


def test_without_step_events_no_step_is_reported(tmp_path):
    """The default: passing steps cost a flag test each and send nothing."""
    mod = load_module(str(tmp_path), "quiet_mod", SOURCE)
    host = RecordingHost(get_steps=build_report)
    engine = Engine(host, on_error="fail", step_events=False)
    assert call_stepped(engine, mod.steps, 4)[1] == 6
    assert host.of("step_start") == host.of("step_finish") == []
    assert [p["steps"] for p in host.of("test_start")[0]["phases"]] == [5]


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": "x\"y\u00e9\n\t\\", "c": 1.5, "d": None, "e": True, "f": False},
        {"big": 10**30, "small": 5e-06, "neg": -0.0},
        {"list": [1, 2]},
        {"test": "t.py::x", "phases": [{"name": "test", "step_names": ["a = 1", "é"]}], "at": 1.25, "n": None},
        {"nested": {"x": [1.5, None, {"y": "\u2603"}], "z": object}},
        {"nan": float("nan"), "inf": float("inf")},
        {1: "non-string key"},
    ],
)
def test_encode_flat_matches_json_dumps(value):
    assert encode_flat(value) == json.dumps(value, separators=(",", ":"), default=repr)


def test_encode_flat_writes_seconds_to_the_microsecond():
    # "time" and "duration_s" are seconds: %.6f, the same number as round(x, 6).
    value = {"event": "test_finish", "time": 1764745600.1234567, "duration_s": 0.0001234567, "other": 0.1234567}
    text = encode_flat(value)
    assert text == '{"event":"test_finish","time":1764745600.123457,"duration_s":0.000123,"other":0.1234567}'
    decoded = json.loads(text)
    assert decoded["time"] == round(value["time"], 6)
    assert decoded["duration_s"] == round(value["duration_s"], 6)
    assert decoded["other"] == value["other"]


def test_encode_flat_reuses_its_nested_encoder():
    # The encoder made once gives what a fresh json.dumps gives, call after call.
    phases = [{"name": "test", "steps": 2, "stepped": True, "step_names": ["a = 1", "assert a"]}]
    for _ in range(3):
        assert encode_flat({"phases": phases}) == json.dumps({"phases": phases}, separators=(",", ":"))


def test_encode_flat_writes_raw_json_as_it_is():
    from stepkernel_worker.raw_json import RawJSON

    text = encode_flat({"event": "test_start", "phases": RawJSON('[{"name":"t","steps":1}]'), "n": 1})
    assert text == '{"event":"test_start","phases":[{"name":"t","steps":1}],"n":1}'
    assert json.loads(text)["phases"] == [{"name": "t", "steps": 1}]


PLANNED = '''
def test_planned():
    # step: make [TP-7]
    a = 1
    # step: check "it"
    assert a
'''


@pytest.mark.parametrize("raw", [False, True])
def test_phase_texts_made_at_transform_time_say_what_the_steps_say(tmp_path, raw):
    """test_start's phases from the step table's texts: as JSON for a host that takes it, else decoded."""
    from stepkernel_worker.raw_json import RawJSON

    from hosts import binary_report

    mod = load_module(str(tmp_path), f"planned_{raw}", PLANNED, get_steps=binary_report)
    host = RecordingHost(get_steps=binary_report)
    host.raw_json = raw
    engine = Engine(host, on_error="fail")
    text, code = engine.phase_json("test", mod.test_planned)
    assert code is mod.test_planned.__code__
    expected = {"name": "test_planned", "function": "test_planned", "steps": 2, "stepped": True,
                "step_names": ["make", 'check "it"'], "step_plan_ids": [["TP-7"], []]}
    assert json.loads(text) == expected
    # Made from the function's steps (a table without the texts): the same.
    steps = engine.steps_for(code, mod.__dict__)
    assert '{"name":"test_planned"' + steps.phase_tail() == text
    record = engine.begin_test("t.py::test_planned", mod.__file__, RawJSON("[" + text + "]"), [code])
    sent = host.of("test_start")[0]["phases"]
    assert type(sent) is (RawJSON if raw else list)
    assert (json.loads(sent) if raw else sent) == [expected]
    assert record.phases == [expected]
    assert record.all_plan_ids == ["TP-7"]
    # A function that is not stepped: one step, its own qualname.
    text, code = engine.phase_json("test", len)
    assert (json.loads(text), code) == ({"name": "test", "function": "len", "steps": 1, "stepped": False}, None)


class LineHost(RecordingHost):
    """A host taking whole lines and RawJSON, as the worker does: it records both ways."""

    raw_json = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lines = []

    def emit(self, event):
        from stepkernel_worker.raw_json import RawJSON

        if type(event.get("phases")) is RawJSON:
            event = {**event, "phases": event["phases"].decode()}
        super().emit(event)

    def emit_line(self, line):
        assert line.endswith("\n") and line.count("\n") == 1
        message = json.loads(line)
        assert message["type"] == "event"
        self.lines.append(message["event"])


@pytest.mark.parametrize("test_id", ['t.py::test_"odd"[é\n]', "t.py::test_plain"])
def test_test_events_formatted_by_the_engine_say_what_the_dict_path_says(tmp_path, test_id):
    """test_start and test_finish written as lines give the events the dict path gives (but the clock)."""
    mod = load_module(str(tmp_path), f"lines_{len(test_id)}", SOURCE)
    by_line, by_dict = LineHost(get_steps=build_report), LineHost(get_steps=build_report)
    by_dict.emit_line = None  # no line capability: every event a dict
    for host in (by_line, by_dict):
        engine = Engine(host, on_error="fail", step_events=False)
        text, code = engine.phase_json("test", mod.steps)
        from stepkernel_worker.raw_json import RawJSON

        record = engine.begin_test(test_id, mod.__file__, RawJSON("[" + text + "]"), [code])
        engine.end_test(record, "failed", "AssertionError: \u2603 \"q\"\n" + "x" * 3000)
    assert [e["event"] for e in by_line.lines] == ["test_start", "test_finish"] and by_line.events == []
    assert [e["event"] for e in by_dict.events] == ["test_start", "test_finish"] and by_dict.lines == []
    for line, event in zip(by_line.lines, by_dict.events):
        assert type(line["time"]) is float and line["time"] > 0
        assert {k: v for k, v in line.items() if k not in ("time", "duration_s")} == {
            k: v for k, v in event.items() if k not in ("time", "duration_s")
        }
        assert set(line) == set(event)
    assert by_line.lines[1]["longrepr"].startswith("AssertionError: \u2603")
    assert len(by_line.lines[1]["longrepr"]) == 2000
    assert by_line.lines[0]["file"].endswith(".py")


def test_identical_tests_in_two_files_keep_their_own_steps(tmp_path):
    # Equal code objects (same name, line and body; co_filename is not compared)
    # must not share steps: a pause or an edit of one would point at the other's file.
    source = "def test_same():\n    x = 1\n    assert x\n"
    first = load_module(str(tmp_path), "same_a", source)
    second = load_module(str(tmp_path), "same_b", source)
    assert first.test_same.__code__ == second.test_same.__code__
    engine = Engine(RecordingHost(get_steps=build_report), on_error="fail")
    steps_a = engine.steps_for(first.test_same.__code__, first.__dict__)
    steps_b = engine.steps_for(second.test_same.__code__, second.__dict__)
    assert steps_a is not None and steps_b is not None
    assert steps_a.filename.endswith("same_a.py") and steps_b.filename.endswith("same_b.py")
    assert engine.steps_for(first.test_same.__code__, first.__dict__) is steps_a


def _ring(size=64 + 128):
    fd = os.memfd_create("stepkernel-test-ring")
    os.ftruncate(fd, size)
    reader = os.dup(fd)
    return EventRing(fd, size), reader


def _read(reader: int, size: int) -> tuple[list[bytes], int]:
    """What the kernel's drain would take (mirrors kernel/src/event_ring.rs)."""
    data = os.pread(reader, size, 0)
    write = int.from_bytes(data[0:8], "little")
    read = int.from_bytes(data[8:16], "little")
    capacity = size - 64
    ring = data[64:]
    out = bytearray()
    for pos in range(read, write):
        out.append(ring[pos % capacity])
    os.pwrite(reader, write.to_bytes(8, "little"), 8)
    return [line for line in bytes(out).split(b"\n") if line], write


def test_the_event_ring_keeps_lines_in_order_across_the_wrap_and_refuses_when_full():
    ring, reader = _ring()
    seen = []
    for i in range(40):
        line = f'{{"n":{i}}}\n'.encode()
        if not ring.append(line):
            seen += _read(reader, 64 + 128)[0]
            assert ring.append(line)
    seen += _read(reader, 64 + 128)[0]
    assert seen == [f'{{"n":{i}}}'.encode() for i in range(40)]
    assert ring.append(b"x" * 127 + b"\n")
    assert not ring.append(b"y\n"), "a full ring refuses instead of overwriting"
    os.close(reader)


def test_a_forked_child_does_not_write_to_the_parents_ring():
    ring, reader = _ring()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not ring.append(b'{"from":"child"}\n') else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ring.append(b'{"from":"parent"}\n')
    assert _read(reader, 64 + 128)[0] == [b'{"from":"parent"}']
    os.close(reader)


STOPPED = '''
import pytest


def test_passes():
    assert True


def test_stops_the_session():
    x = 1
    {stop}


def test_never_runs():
    assert True
'''


@pytest.mark.parametrize("stop", ["raise KeyboardInterrupt", "pytest.exit('enough')"])
def test_a_test_the_session_ends_in_is_not_counted_as_passed(tmp_path, stop):
    """pytest counts no outcome for it ("no tests ran" after a KeyboardInterrupt): nor does the summary."""
    from fidelity import run_stepped

    (tmp_path / "test_stop.py").write_text(STOPPED.format(stop=stop))
    _, events = run_stepped(str(tmp_path), ["test_stop.py"])
    finished = {e["test"]: e["outcome"] for e in events if e["event"] == "test_finish"}
    assert finished == {"test_stop.py::test_passes": "passed", "test_stop.py::test_stops_the_session": "interrupted"}
    [summary] = [e for e in events if e["event"] == "summary"]
    assert summary["passed"] == 1 and summary.get("interrupted") == 1


SHARED = '''
import pytest


class Base:
    def setup_method(self):
        self.x = 1

    def test_inherited(self):
        assert self.x


class TestWithTeardown(Base):
    def teardown_method(self):
        self.x = 0


class TestPlain(Base):
    pass


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.plan("TP-1")
def test_param(n):
    assert n
'''


def test_phases_made_once_per_class_and_function_are_each_tests_own(tmp_path):
    """One test function in two classes: each class's test_start lists its own setup and teardown phases."""
    from fidelity import run_stepped

    (tmp_path / "test_shared.py").write_text(SHARED)
    _, events = run_stepped(str(tmp_path), ["test_shared.py"])
    starts = {e["test"]: e for e in events if e["event"] == "test_start"}
    names = {test: [p["name"] for p in e["phases"]] for test, e in starts.items()}
    assert names == {
        "test_shared.py::TestWithTeardown::test_inherited": ["setup_method", "test_inherited", "teardown_method"],
        "test_shared.py::TestPlain::test_inherited": ["setup_method", "test_inherited"],
        "test_shared.py::test_param[1]": ["test_param"],
        "test_shared.py::test_param[2]": ["test_param"],
    }
    assert starts["test_shared.py::test_param[2]"]["plan_ids"] == ["TP-1"]
    finished = {e["test"]: e for e in events if e["event"] == "test_finish"}
    assert finished["test_shared.py::test_param[1]"]["plan_ids"] == ["TP-1"]
    assert "plan_ids" not in finished["test_shared.py::TestPlain::test_inherited"]
    assert {e["outcome"] for e in finished.values()} == {"passed"}
