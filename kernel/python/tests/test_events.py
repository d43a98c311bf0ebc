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


class LineHost(RecordingHost):
    """Takes events both ways, as the worker does: dicts and ready JSON lines."""

    def __init__(self):
        super().__init__(get_steps=build_report)
        self.lines: list[str] = []

    def emit_line(self, line: str) -> None:
        self.lines.append(line)
        message = json.loads(line)
        assert line.endswith("\n") and message["type"] == "event"
        self.events.append(message["event"])


def _without_times(events):
    return [{k: v for k, v in e.items() if k not in ("time", "duration_s")} for e in events]


def test_formatted_step_events_equal_the_dict_events(tmp_path):
    mod = load_module(str(tmp_path), "events_mod", SOURCE)
    fast, slow = Engine(LineHost(), on_error="fail"), Engine(RecordingHost(get_steps=build_report), on_error="fail")
    for engine in (fast, slow):
        assert call_stepped(engine, mod.steps, 4, test_id='t.py::test_"odd"[é]')[1] == 6
        with pytest.raises(AssertionError):
            call_stepped(engine, mod.steps, 20, test_id="t.py::test_fails")
    assert len(fast.host.lines) >= 10, "step events took the fast path"
    assert _without_times(fast.host.events) == _without_times(slow.host.events)
    finished = [e for e in fast.host.events if e["event"] == "step_finish"]
    assert all(isinstance(e["duration_s"], float) and e["duration_s"] >= 0 for e in finished)
    assert finished[-1]["status"] == "failed" and "error" in finished[-1]


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": "x\"y\u00e9\n\t\\", "c": 1.5, "d": None, "e": True, "f": False},
        {"big": 10**30, "small": 5e-06, "neg": -0.0},
        {"list": [1, 2]},
        {"nan": float("nan"), "inf": float("inf")},
        {1: "non-string key"},
    ],
)
def test_encode_flat_matches_json_dumps(value):
    assert encode_flat(value) == json.dumps(value, separators=(",", ":"))


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
