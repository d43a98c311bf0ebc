"""Test-only stand-in for ``stepkernel steps --json``: split function bodies with ``ast``.

Every function (and method) of a file gets one step per top-level statement,
or per ``# step: NAME`` marker region when the body has markers. The engine
never uses this; it exists so the engine's tests run before (and without) the
Rust binary.
"""

from __future__ import annotations

import ast
import re
import tokenize

MARKER = re.compile(r"^\s*#\s*step:\s*(.*?)\s*$")


def _qualnames(tree: ast.AST):
    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qual = f"{prefix}{child.name}"
                yield qual, child
                yield from walk(child, f"{qual}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _steps(node, lines: list[str]) -> list[dict]:
    body = node.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # a docstring is no step (as the instrumenter says)
    first, last = body[0], body[-1]
    start_line = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
    # Markers between the def line and the end of the body.
    markers = []
    for number in range(node.lineno + 1, last.end_lineno + 1):
        match = MARKER.match(lines[number - 1])
        if match:
            markers.append((number, match.group(1)))
    steps = []
    if markers:
        for k, (line, name) in enumerate(markers):
            end = markers[k + 1][0] - 1 if k + 1 < len(markers) else last.end_lineno
            steps.append({"name": name, "start_line": line + 1, "end_line": end, "marker_line": line})
    else:
        for stmt in body:
            s = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
            text = lines[s - 1].strip()
            steps.append(
                {"name": text[:60], "start_line": s, "end_line": stmt.end_lineno, "marker_line": None}
            )
    out = []
    for index, step in enumerate(steps):
        text = "".join(lines[step["start_line"] - 1 : step["end_line"]])
        indent = (
            re.match(r"\s*", lines[step["start_line"] - 1]).group(0)
            if step["start_line"] <= len(lines)
            else ""
        )
        out.append({"index": index, "source": text, "indent": indent, "flags": [], **step})
    del start_line
    return out


def build_report(path: str) -> dict:
    with tokenize.open(path) as fh:
        text = fh.read()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text, filename=path)
    functions = []
    for qualname, node in _qualnames(tree):
        functions.append(
            {
                "qualname": qualname,
                "def_line": node.lineno,
                "body_start_line": node.body[0].lineno,
                "is_async": isinstance(node, ast.AsyncFunctionDef),
                "is_generator": any(
                    isinstance(n, (ast.Yield, ast.YieldFrom)) for n in ast.walk(node) if _same_scope(node, n)
                ),
                "steps": _steps(node, lines),
            }
        )
    # Phases named like the real instrumenter's: the function's own name.
    phases = [
        {"name": fn["qualname"].rsplit(".", 1)[-1], "function": fn["qualname"]}
        for fn in functions
        if fn["qualname"].rsplit(".", 1)[-1].startswith("test") or fn["qualname"].rsplit(".", 1)[-1] in PHASES
    ]
    return {"path": path, "tests": [{"id": path, "phases": phases}], "functions": functions}


PHASES = {"setUp", "tearDown", "asyncSetUp", "asyncTearDown", "setup_method", "teardown_method"}


def _same_scope(func, target) -> bool:
    todo = list(func.body)
    while todo:
        node = todo.pop()
        if node is target:
            return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False
