"""Check the instrumenter's steps against CPython's own parser.

Usage: ast_crosscheck.py REPORT.json

For every function of the report (a `stepkernel steps --json` document) that
`ast` can find by qualname, the unmarked steps must be exactly the body's
statements (docstring aside) with the same first and last lines, and the
flags must match what the ast says. Exits 1 listing the differences.
"""
import ast
import collections
import json
import sys

data = json.load(open(sys.argv[1], encoding="utf-8"))

def funcs(tree):
    out = {}
    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out[prefix + node.name] = node
            elif isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".")
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, []) or [], prefix)
                for h in getattr(node, "handlers", []) or []:
                    visit(h.body, prefix)
    visit(tree.body, "")
    return out

SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
def flags(stmt):
    f = set()
    def walk(node, own, in_class):
        if isinstance(node, ast.Return) and own: f.add("return")
        if isinstance(node, ast.Await) and own: f.add("await")
        if isinstance(node, (ast.AsyncFor, ast.AsyncWith)) and own: f.add("await")
        if isinstance(node, ast.comprehension) and node.is_async and own: f.add("await")
        if isinstance(node, (ast.Yield, ast.YieldFrom)) and own: f.add("yield")
        if isinstance(node, ast.Global) and own: f.add("global")
        if isinstance(node, ast.Nonlocal) and own:
            f.add("nonlocal")
            if "__class__" in node.names: f.add("super")
        if not in_class:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super" and not node.args and not node.keywords: f.add("super")
            if isinstance(node, ast.Name) and node.id == "__class__": f.add("super")
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST): continue
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and field == "body":
                    walk(child, False, in_class)
                elif isinstance(node, ast.Lambda) and field == "body":
                    walk(child, False, in_class)
                elif isinstance(node, ast.ClassDef) and field == "body":
                    walk(child, False, True)
                else:
                    walk(child, own, in_class)
    walk(stmt, True, False)
    return f

stats = collections.Counter()
bad = []
for fr in data["files"]:
    if fr.get("error"): continue
    path = fr["path"]
    try:
        src = open(path, "rb").read()
        tree = ast.parse(src)
    except Exception:
        continue
    defs = funcs(tree)
    for fn in fr["functions"]:
        node = defs.get(fn["qualname"])
        if node is None or fn.get("error"):
            stats["unmatched"] += 1; continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body = body[1:]
        gen = any("yield" in flags(s) for s in node.body)
        stats["functions"] += 1
        if gen != fn["is_generator"]:
            bad.append((path, fn["qualname"], "generator", gen)); continue
        if isinstance(node, ast.AsyncFunctionDef) != fn["is_async"]:
            bad.append((path, fn["qualname"], "async"))
        if gen:
            continue
        if any(s.get("marker_line") for s in fn["steps"]):
            stats["marked"] += 1; continue
        if len(body) != len(fn["steps"]):
            bad.append((path, fn["qualname"], "count", len(body), len(fn["steps"]))); continue
        for s, step in zip(body, fn["steps"]):
            stats["steps"] += 1
            start = s.lineno if not getattr(s, "decorator_list", None) else min([s.lineno] + [d.lineno for d in s.decorator_list])
            if (start, s.end_lineno) != (step["start_line"], step["end_line"]):
                bad.append((path, fn["qualname"], "lines", (start, s.end_lineno), (step["start_line"], step["end_line"])))
            if flags(s) != set(step["flags"]):
                bad.append((path, fn["qualname"], "flags", step["start_line"], sorted(flags(s)), step["flags"]))
print(dict(stats))
for b in bad[:50]:
    print(*b)
sys.exit(1 if bad or not stats["steps"] else 0)
