"""Completion, inspection and is-complete checks for Jupyter clients.

Completion uses jedi when the user's environment has it, else a completer of
rlcompleter's quality that also knows module names after ``import``.
"""

from __future__ import annotations

import builtins
import codeop
import inspect
import keyword
import re
import sys
import warnings
from typing import Any

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.]*$")
_HELP_QUERY = re.compile(r"^\s*(\?{1,2}[A-Za-z_][\w.]*|[A-Za-z_][\w.]*\?{1,2})\s*$")
_IMPORT_LINE = re.compile(r"^\s*(?:from\s+([\w.]*)\s+import\s+([\w, ]*)|(?:import|from)\s+([\w., ]*))$")


def complete(code: str, cursor_pos: int, namespace: dict) -> dict:
    """A ``complete_reply`` content for ``code`` with the cursor at ``cursor_pos``."""
    before = code[:cursor_pos]
    line = before.rsplit("\n", 1)[-1]
    token = _NAME_CHARS.search(line).group(0)
    start = cursor_pos - len(token)
    matches = _import_matches(line)
    if matches is None:
        matches = _jedi_matches(code, cursor_pos, namespace, token)
    if matches is None:
        matches = _namespace_matches(token, namespace)
    else:
        # jedi and import matches complete the last dotted part only.
        start = cursor_pos - len(token.rsplit(".", 1)[-1])
    seen = set()
    unique = [m for m in matches if not (m in seen or seen.add(m))]
    return {
        "status": "ok",
        "matches": unique,
        "cursor_start": start,
        "cursor_end": cursor_pos,
        "metadata": {},
    }


def _import_matches(line: str) -> list[str] | None:
    found = _IMPORT_LINE.match(line)
    if not found:
        return None
    import pkgutil  # only when completing an import: tests see no module they did not import

    if found.group(1) is not None:  # from pkg import na|
        module_name, names = found.group(1), found.group(2)
        prefix = names.rsplit(",", 1)[-1].strip()
        try:
            module = __import__(module_name, fromlist=["*"])
        except Exception:
            return []
        candidates = set(dir(module))
        if hasattr(module, "__path__"):
            candidates.update(info.name for info in pkgutil.iter_modules(module.__path__))
        return sorted(name for name in candidates if name.startswith(prefix))
    dotted = found.group(3).rsplit(",", 1)[-1].strip()
    if " " in dotted:
        return []
    if "." in dotted:
        package, prefix = dotted.rsplit(".", 1)
        try:
            module = __import__(package, fromlist=["*"])
        except Exception:
            return []
        paths = getattr(module, "__path__", [])
        return sorted(info.name for info in pkgutil.iter_modules(paths) if info.name.startswith(prefix))
    names = set(sys.builtin_module_names)
    names.update(info.name for info in pkgutil.iter_modules())
    return sorted(name for name in names if name.startswith(dotted))


def _jedi_matches(code: str, cursor_pos: int, namespace: dict, token: str) -> list[str] | None:
    try:
        import jedi
    except Exception:
        return None
    before = code[:cursor_pos]
    line_no = before.count("\n") + 1
    column = len(before.rsplit("\n", 1)[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            script = jedi.Interpreter(code, [namespace])
            completions = script.complete(line_no, column)
        last = token.rsplit(".", 1)[-1]
        return [last + c.complete if c.complete is not None else c.name for c in completions]
    except Exception:
        return None


def _namespace_matches(token: str, namespace: dict) -> list[str]:
    if "." in token:
        expr, _, prefix = token.rpartition(".")
        try:
            value = _resolve(expr, namespace)
        except Exception:
            return []
        names = dir(value)
        if not prefix.startswith("_"):
            names = [n for n in names if not n.startswith("_")]
        return [f"{expr}.{n}" for n in sorted(names) if n.startswith(prefix)]
    candidates = set(namespace) | set(dir(builtins)) | set(keyword.kwlist)
    return sorted(n for n in candidates if n.startswith(token) and (token.startswith("_") or not n.startswith("_")))


def _resolve(dotted: str, namespace: dict) -> Any:
    """Look up ``a.b.c`` by names and attributes only: nothing is called."""
    parts = dotted.split(".")
    if not all(p.isidentifier() for p in parts):
        raise LookupError(dotted)
    head = parts[0]
    if head in namespace:
        value = namespace[head]
    elif hasattr(builtins, head):
        value = getattr(builtins, head)
    else:
        raise LookupError(head)
    for part in parts[1:]:
        value = getattr(value, part)
    return value


def _name_at(code: str, cursor_pos: int) -> str:
    """The dotted name under (or just before) the cursor, or the callee of an open call."""
    before, after = code[:cursor_pos], code[cursor_pos:]
    tail = re.search(r"[A-Za-z0-9_.]*$", before).group(0)
    head = re.match(r"[A-Za-z0-9_]*", after).group(0)
    name = (tail + head).strip(".")
    if name:
        return name
    # Inside a call: inspect the callee, as IPython does for "f(|".
    depth = 0
    for index in range(len(before) - 1, -1, -1):
        char = before[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                return re.search(r"[A-Za-z0-9_.]*$", before[:index]).group(0)
            depth -= 1
    return ""


def inspect_value(code: str, cursor_pos: int, detail_level: int, namespace: dict) -> dict:
    """An ``inspect_reply`` content: signature and docstring of the name at the cursor."""
    name = _name_at(code, cursor_pos)
    try:
        value = _resolve(name, namespace) if name else None
    except Exception:
        value = None
        name = ""
    if not name:
        return {"status": "ok", "found": False, "data": {}, "metadata": {}}
    lines = [f"{name}: {type(value).__module__}.{type(value).__qualname__}"]
    try:
        signature = inspect.signature(value)
        lines.append(f"Signature: {name}{signature}")
    except (TypeError, ValueError):
        pass
    if not callable(value) or isinstance(value, (int, float, str, list, dict, tuple, set)):
        lines.append(f"Value: {_short_repr(value)}")
    doc = inspect.getdoc(value)
    if doc:
        lines.append("Docstring:\n" + doc)
    if detail_level >= 1:
        try:
            lines.append("Source:\n" + inspect.getsource(value))
        except (OSError, TypeError):
            pass
    text = "\n".join(lines)
    return {"status": "ok", "found": True, "data": {"text/plain": text}, "metadata": {}}


def help_query(code: str) -> tuple[str, int] | None:
    """``(name, detail_level)`` for IPython's ``name?`` / ``name??`` / ``?name``, else None."""
    if not _HELP_QUERY.match(code):
        return None
    text = code.strip()
    marks = len(text) - len(text.strip("?"))
    return text.strip("?"), 1 if marks >= 2 else 0


def _short_repr(value: Any, limit: int = 200) -> str:
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<repr failed: {exc}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_complete(code: str) -> dict:
    """An ``is_complete_reply`` content: complete, incomplete (with indent) or invalid."""
    if not code.strip():
        return {"status": "complete"}
    # Magic cells (`%where`, `%%edit`) are answered by the kernel itself (magics.rs).
    if _HELP_QUERY.match(code):
        return {"status": "complete"}  # `name?`, `name??`, `?name`: help, as in IPython
    lines = code.splitlines()
    last = lines[-1] if lines else ""
    indent = last[: len(last) - len(last.lstrip())]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = codeop.compile_command(code, "<input>", "exec")
    except (SyntaxError, OverflowError, ValueError):
        return {"status": "invalid"}
    if compiled is None:
        if last.rstrip().endswith(":"):
            indent += "    "
        return {"status": "incomplete", "indent": indent}
    # A block is complete only after a blank line, as in the Python REPL.
    if len(lines) > 1 and lines[-1].strip() and (lines[-1].startswith((" ", "\t"))):
        return {"status": "incomplete", "indent": indent}
    return {"status": "complete"}

