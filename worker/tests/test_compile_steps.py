"""A function's steps are compiled together from one fresh tree: same behaviour as the original."""

from __future__ import annotations

import ast

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.stepping import compiler
from stepkernel_worker.stepping.engine import Engine

SOURCE = """
import sys

COUNTER = 0

def outer():
    first = 1
    def inner():
        return first
    class Local:
        size: int = 3
        def who(self):
            return super().__repr__()[:1]
    return inner, Local

def scoped(flag):
    if flag:
        global COUNTER
        COUNTER += 1
    try:
        note: str = "annotated"
        pending: int
    finally:
        done = True
    for i in range(2):
        while True:
            total: int = i * 10
            break
    with open(__file__) as fh:
        first_line = fh.readline()
    match flag:
        case True:
            label: str = "yes"
        case _:
            label = "no"
    return COUNTER, note, done, total, bool(first_line), label

class Base:
    def who(self):
        return "base"

class Child(Base):
    def explicit(self):
        name = "explicit+"
        return name + super(Child, self).who()

    def zero_arg(self):
        name = "zero+"
        return name + super().who()

    def no_super(self):
        value = type(self).__name__
        return value
"""


@pytest.fixture
def mod(tmp_path):
    return load_module(str(tmp_path), f"compile_steps_{abs(hash(str(tmp_path)))}", SOURCE)


@pytest.fixture
def engine():
    return Engine(RecordingHost(get_steps=build_report), on_error="fail")


def _steps(engine, func):
    return engine.steps_for(func.__code__, func.__globals__)


def test_the_transformed_function_keeps_its_code_shape(engine, mod):
    """No local, name or line is added: frames, locals() and tracebacks read as the original's."""
    plain = {}
    exec(compile(open(mod.__file__).read(), mod.__file__, "exec", dont_inherit=True), plain)
    for name in ("outer", "scoped"):
        stepped, original = getattr(mod, name).__code__, plain[name].__code__
        assert stepped is not original and stepped.co_code != original.co_code
        for attr in ("co_name", "co_qualname", "co_firstlineno", "co_varnames", "co_cellvars", "co_freevars",
                     "co_argcount", "co_flags"):
            assert getattr(stepped, attr, None) == getattr(original, attr, None), attr
    inner, local = call_stepped(engine, mod.outer)[1]
    plain_inner, plain_local = mod.outer()
    assert inner.__qualname__ == plain_inner.__qualname__ == "outer.<locals>.inner"
    assert local.__qualname__ == plain_local.__qualname__ == "outer.<locals>.Local"
    assert local.__annotations__ == plain_local.__annotations__ == {"size": int}
    assert inner() == 1
    assert len(_steps(engine, mod.outer).steps) == 4


def test_scope_statements_nested_in_blocks_are_adapted(engine, mod):
    stepped = call_stepped(engine, mod.scoped, True)[1]
    assert stepped == (1, "annotated", True, 10, True, "yes")
    assert mod.scoped(True) == (2, "annotated", True, 10, True, "yes")
    assert call_stepped(engine, mod.scoped, False)[1] == (2, "annotated", True, 10, True, "no")
    assert _steps(engine, mod.scoped).global_names == ["COUNTER"]


def test_only_out_of_band_steps_calling_zero_argument_super_take_self(engine, mod):
    obj = mod.Child()
    assert call_stepped(engine, mod.Child.zero_arg, obj)[1] == "zero+base"
    assert call_stepped(engine, mod.Child.explicit, obj)[1] == "explicit+base"
    assert call_stepped(engine, mod.Child.no_super, obj)[1] == "Child"
    supers = {}
    for name in ("zero_arg", "explicit", "no_super"):
        steps = _steps(engine, getattr(mod.Child, name))
        supers[name] = [steps.compile_step(i, spec.source).super_arg for i, spec in enumerate(steps.steps)]
    assert supers == {"zero_arg": [False, True], "explicit": [False, False], "no_super": [False, False]}


def test_fix_scope_rewrites_only_this_scope():
    tree = ast.parse(
        "if x:\n    global g\n    y: int = 1\nelse:\n    z: int\n"
        "def f():\n    global h\n    w: int = 2\n"
        "class C:\n    a: int = 1\n"
    )
    found: list[str] = []
    body = compiler.fix_scope(tree.body, found)
    assert found == ["g"]
    text = ast.unparse(ast.Module(body=body, type_ignores=[]))
    assert "global g" not in text and "y = 1" in text and "z: int" not in text
    assert "global h" in text and "w: int = 2" in text and "a: int = 1" in text
