"""Steps behave exactly like the original function (engine driven directly, on_error=fail).

These exercise the engine on arbitrary functions (helpers, methods of plain
classes, closures), which the real instrumenter does not describe because
they are not tests; step data comes from the test-only ``ast`` helper.
"""

from __future__ import annotations

import asyncio
import sys

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.stepping.engine import Engine

SOURCE = """
import contextvars
GLOBAL_LOG = []
VAR = contextvars.ContextVar("v", default="unset")

def closures():
    factor = 2
    scale = lambda x: x * factor
    factor = 3
    items = [scale(i) for i in range(3)]
    total = sum(i + factor for i in items)
    return items, total

def nonlocal_counter():
    count = 0
    def bump(n=1):
        nonlocal count
        count += n
    bump()
    bump(4)
    return count

def writes_global():
    global GLOBAL_LOG
    GLOBAL_LOG = GLOBAL_LOG + ["written"]
    return GLOBAL_LOG

def early_return(flag):
    marks = []
    if flag:
        return "early"
    marks.append(1)
    return marks

def deleted_then_read():
    value = 1
    del value
    return value

def walrus():
    values = [3, 9, 1]
    any((big := v) > 5 for v in values)
    return big

def params(a, b=2, *rest, key, opt=None, **extra):
    got = (a, b, rest, key, opt, extra)
    return got

def make_counter():
    calls = 0
    def counted():
        nonlocal calls
        calls += 1
        seen = calls
        return seen
    return counted, lambda: calls

class Base:
    def who(self):
        return "base"

class Child(Base):
    def who(self):
        prefix = "child+"
        return prefix + super().who()

    def private(self):
        self.__hidden = 1
        __local = self.__hidden + 1
        return __local

def nested_class():
    class Inner:
        def name(self):
            return type(self).__qualname__
    obj = Inner()
    return obj.name()

def mutable_default(box=[]):
    box.append(1)
    return len(box)

async def async_steps():
    queue = asyncio.Queue()
    await queue.put(5)
    VAR.set("step0")
    await asyncio.sleep(0)
    got = await queue.get()
    return got, VAR.get()

def generator_test():
    yield 1
"""


@pytest.fixture
def mod(tmp_path):
    return load_module(str(tmp_path), f"semantics_{abs(hash(str(tmp_path)))}", "import asyncio\n" + SOURCE)


@pytest.fixture
def engine():
    return Engine(RecordingHost(get_steps=build_report), on_error="fail")


def steps_run(engine) -> int:
    return len(engine.host.of("step_start"))


def test_closures_see_later_rebinding(engine, mod):
    _, result = call_stepped(engine, mod.closures)
    assert result == mod.closures() == ([0, 3, 6], 18)
    assert steps_run(engine) == 6


def test_nonlocal_and_global(engine, mod):
    assert call_stepped(engine, mod.nonlocal_counter)[1] == 5
    assert call_stepped(engine, mod.writes_global)[1] == ["written"]
    assert mod.GLOBAL_LOG == ["written"]


def test_return_ends_the_function(engine, mod):
    assert call_stepped(engine, mod.early_return, True)[1] == "early"
    assert [e["index"] for e in engine.host.of("step_start")] == [0, 1]
    assert call_stepped(engine, mod.early_return, False)[1] == [1]


def test_deleted_local_raises_unbound_local_error(engine, mod):
    with pytest.raises(UnboundLocalError) as info:
        call_stepped(engine, mod.deleted_then_read)
    with pytest.raises(UnboundLocalError) as plain:
        mod.deleted_then_read()
    assert str(info.value) == str(plain.value)


def test_walrus_binds_function_local(engine, mod):
    assert call_stepped(engine, mod.walrus)[1] == 9


def test_parameters_bind_like_the_original(engine, mod):
    got = call_stepped(engine, mod.params, 1, 5, 6, key="k", extra=1)[1]
    assert got == mod.params(1, 5, 6, key="k", extra=1)
    with pytest.raises(TypeError):
        call_stepped(engine, mod.params, 1)


def test_free_variables_are_shared_with_the_enclosing_function(engine, mod):
    counted, peek = mod.make_counter()
    assert call_stepped(engine, counted)[1] == 1
    assert call_stepped(engine, counted)[1] == 2
    assert peek() == 2


def test_zero_argument_super_and_name_mangling(engine, mod):
    obj = mod.Child()
    assert call_stepped(engine, mod.Child.who, obj)[1] == "child+base"
    assert call_stepped(engine, mod.Child.private, obj)[1] == 2
    assert obj._Child__hidden == 1


def test_nested_definitions_keep_their_qualnames(engine, mod):
    assert call_stepped(engine, mod.nested_class)[1] == mod.nested_class()


def test_mutated_default_is_the_same_object(engine, mod):
    first = call_stepped(engine, mod.mutable_default)[1]
    second = call_stepped(engine, mod.mutable_default)[1]
    assert (first, second) == (1, 2)
    assert mod.mutable_default() == 3


def test_async_steps_share_task_and_context(engine, mod):
    assert call_stepped(engine, mod.async_steps)[1] == (5, "step0")
    assert steps_run(engine) == 6


def test_generator_runs_unstepped_as_one_step(engine, mod):
    _, gen = call_stepped(engine, mod.generator_test)
    assert list(gen) == [1]
    assert engine.host.of("step_start") == []
    phases = engine.host.of("test_start")[0]["phases"]
    assert phases[0]["stepped"] is False


def test_function_the_report_does_not_list_is_unstepped(tmp_path):
    mod = load_module(str(tmp_path), "unlisted_mod", "def f():\n    a = 1\n    return a\n", get_steps=lambda p: {})
    engine = Engine(RecordingHost(get_steps=build_report), on_error="fail")
    record, result = call_stepped(engine, mod.f)
    assert result == 1 and record.phases[0]["stepped"] is False
    assert "@skt" not in vars(mod) and engine.host.of("step_start") == []


def test_step_table_is_one_constant_read_once_and_a_bad_one_means_unstepped(tmp_path):
    from stepkernel_worker.stepping.function_steps import entry_of

    mod = load_module(str(tmp_path), "table_mod", "def f():\n    a = 1\n    return a\n", get_steps=build_report)
    raw = vars(mod)["@skt"]
    assert type(raw) is bytes
    entry = entry_of(mod.f.__code__, vars(mod))
    assert entry is not None and entry[0] == "f" and [s[2] for s in entry[5]] == [2, 3]
    assert entry_of(mod.f.__code__, vars(mod)) is entry  # read once
    assert vars(mod)["@skt"] is raw  # the module's globals are left as they were
    broken = {"@skt": b"not a marshalled table"}
    assert entry_of(mod.f.__code__, broken) is None
    engine = Engine(RecordingHost(get_steps=build_report), on_error="fail")
    mod.__dict__["@skt"] = b"\x00garbage"
    record, result = call_stepped(engine, mod.f)
    assert result == 1 and record.phases[0]["stepped"] is False


@pytest.mark.skipif(sys.version_info < (3, 10), reason="match needs 3.10")
def test_match_statement(engine, tmp_path):
    mod = load_module(
        str(tmp_path),
        "matching_mod",
        """
        def matcher(command):
            match command:
                case ("go", n) if n > 1:
                    out = n * 2
                case _:
                    out = None
            return out
        """,
    )
    assert call_stepped(engine, mod.matcher, ("go", 3))[1] == 6
