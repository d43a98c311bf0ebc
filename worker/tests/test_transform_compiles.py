"""The steps' loop and ``try`` never change what compiles: a test near the compiler's block limit still
imports, and a ``break``/``continue`` outside the test's own loops stays the SyntaxError it is."""

from __future__ import annotations

import ast
import sys
import textwrap

import pytest
from hosts import RecordingHost, call_stepped, load_module
from stepdata import build_report
from stepkernel_worker.stepping import transform
from stepkernel_worker.stepping.engine import Engine

# One level of each kind of block: ``{inner}`` is where the next level goes.
LEVELS = {
    "for": "for _ in [1]:\n    {inner}",
    "for-else": "for _ in []:\n    pass\nelse:\n    {inner}",
    "while": "while True:\n    {inner}\n    break",
    "with": "with NULL:\n    {inner}",
    "with-two": "with NULL, NULL:\n    {inner}",
    "try-body": "try:\n    {inner}\nexcept Exception:\n    pass",
    "except-body": "try:\n    raise ValueError\nexcept ValueError:\n    {inner}",
    "except-as": "try:\n    raise ValueError\nexcept ValueError as e:\n    {inner}",
    "try-else": "try:\n    pass\nexcept Exception:\n    pass\nelse:\n    {inner}",
    "finally-body": "try:\n    pass\nfinally:\n    {inner}",
    "try-finally-body": "try:\n    {inner}\nfinally:\n    pass",
    "except-finally": "try:\n    raise ValueError\nexcept ValueError:\n    {inner}\nfinally:\n    pass",
    "if": "if True:\n    {inner}",
    "match": "match 1:\n    case 1:\n        {inner}",
}
if sys.version_info >= (3, 11):
    LEVELS["except-star"] = "try:\n    raise ValueError\nexcept* ValueError:\n    {inner}"


def nested(kinds: list[str], leaf: str = "hits.append(1)") -> str:
    code = leaf
    for kind in reversed(kinds):
        template = LEVELS[kind]
        # Indent the inner code to the placeholder's column.
        column = template.splitlines()[[i for i, line in enumerate(template.splitlines()) if "{inner}" in line][0]]
        pad = column[: len(column) - len(column.lstrip())]
        code = template.replace("{inner}", textwrap.indent(code, pad)[len(pad):])
    return code


def compiles_with_steps(body: str) -> bool:
    """Whether ``body`` compiles inside the two blocks the steps add (the loop, the try)."""
    source = "def f():\n    while True:\n        try:\n" + textwrap.indent(body, " " * 12) + (
        "\n        except BaseException:\n            raise\n        break\n")
    try:
        compile(source, "<depth>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        assert "nested blocks" in str(exc), exc
        return False
    return True


@pytest.mark.parametrize("kind", sorted(LEVELS))
def test_block_depth_says_what_the_compiler_does(kind):
    """For each kind of block, at every depth around the limit, the estimate and the compiler agree."""
    for depth in (1, 3, 6):
        for filler in range(0, 22):
            code = nested(["for"] * filler) if filler else "pass"
            text = nested([kind] * depth, code)
            estimate = transform.block_depth(ast.parse(text).body)
            fits = not transform.too_deep(ast.parse(text).body)
            assert fits == (estimate + 2 <= transform.max_blocks())
            assert fits == compiles_with_steps(text), (kind, depth, filler, estimate)


def _test_source(name: str, levels: int) -> str:
    body = textwrap.indent(nested(["with"] * levels), "    ")
    return f"def {name}():\n    hits = []\n{body}\n    return hits\n"


DEEP = "import contextlib\nNULL = contextlib.nullcontext()\n\n" + _test_source("test_deep", 20) + "\n" + _test_source(
    "test_shallow", 3)


def test_a_test_too_deep_for_steps_runs_as_one_step(tmp_path):
    """20 nested ``with`` blocks (the limit before 3.13) compile under plain pytest; stepped, the
    module imports and the test runs as one step."""
    compile(DEEP, "<plain>", "exec", dont_inherit=True)  # fine without steps
    mod = load_module(str(tmp_path), f"deep_{abs(hash(str(tmp_path)))}", DEEP)
    engine = Engine(RecordingHost(get_steps=build_report), on_error="fail")
    assert call_stepped(engine, mod.test_deep)[1] == [1]
    assert call_stepped(engine, mod.test_shallow)[1] == [1]
    assert engine.steps_for(mod.test_deep.__code__, mod.test_deep.__globals__) is None
    assert len(engine.steps_for(mod.test_shallow.__code__, mod.test_shallow.__globals__).steps) == 3


# Each snippet is a test body; whether it compiles as a plain function is the truth.
JUMPS = [
    "break",
    "if x:\n    continue",
    "with NULL:\n    break",
    "try:\n    pass\nexcept Exception:\n    continue",
    "try:\n    pass\nfinally:\n    break",
    "match x:\n    case 1:\n        break",
    "for i in []:\n    pass\nelse:\n    break",
    "while x:\n    pass\nelse:\n    continue",
    "for i in []:\n    break",
    "while x:\n    if x:\n        continue\n    break",
    "for i in []:\n    try:\n        pass\n    finally:\n        continue",
    "async_for = 1\nfor i in []:\n    with NULL:\n        break",
    "def inner():\n    for i in []:\n        break",
    "x = [i for i in range(3) if i]",
    "if x:\n    pass\nelse:\n    break",
    "try:\n    pass\nexcept Exception:\n    pass\nelse:\n    continue",
    "with NULL, NULL:\n    if x:\n        break",
    "class C:\n    x = 1\nwhile x:\n    match x:\n        case _:\n            break",
]


@pytest.mark.parametrize("body", JUMPS)
def test_stray_jump_says_what_the_compiler_refuses(body):
    source = "def test_f(x):\n" + textwrap.indent(body, "    ") + "\n"
    try:
        compile(source, "<jump>", "exec", dont_inherit=True)
        plain_compiles = True
    except SyntaxError as exc:
        assert "loop" in str(exc), exc
        plain_compiles = False
    assert transform.stray_jump(ast.parse(source).body[0].body) == (not plain_compiles)
    if not plain_compiles:
        # Inside the steps' loop it would compile: why such a function is left as it is.
        assert compiles_with_steps(body)


def test_a_module_with_a_stray_break_fails_to_import_as_unstepped(tmp_path):
    source = "def test_stray():\n    x = 1\n    if x:\n        break\n    assert x == 2\n"
    with pytest.raises(SyntaxError, match="'break' outside loop"):
        load_module(str(tmp_path), f"stray_{abs(hash(str(tmp_path)))}", source)
