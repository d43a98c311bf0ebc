"""The watch's dependency recorder on Python 3.10/3.11 (entry marks,
worker/stepkernel_worker/entry_marks.py): real pytest with the recorder
plugin on a small project made by each test, its records against the
profiler's, and what a test sees against plain pytest (tracebacks,
``inspect``, line events, coverage.py's results, import errors); on
3.12/3.13 (sys.monitoring) its records against the expected code per test,
with two tool ids and with one.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import PYTHON, ROOT, write_project
from test_watch import other_python

WORKER = ROOT / "worker"

LIB = {
    "shop/__init__.py": "",
    "shop/cart.py": '''
        """Carts."""
        from __future__ import annotations

        import functools

        RATE = 0.1
        double = lambda x: 2 * x


        def logged(fn):
            @functools.wraps(fn)
            def wrapper(*args):
                return fn(*args)

            return wrapper


        def subtotal(prices):
            return sum(prices)


        @logged
        def discounted(prices):
            """Ten percent off."""
            return [round(p * 0.9, 2) for p in prices]


        def unused():
            return 1


        def pairs(items):
            for i in range(0, len(items), 2):
                yield items[i : i + 2]


        class Cart:
            """A cart."""

            def total(self, prices):
                return subtotal(prices) + round(subtotal(prices) * RATE, 2)

            def boom(self):
                raise ValueError(
                    "boom"
                )

            def later(self):
                from shop import late

                return late.LATE
    ''',
    "shop/late.py": "LATE = 3\n",
    "tests/__init__.py": "",
    "tests/test_cart.py": '''
        import sys

        from shop.cart import Cart, discounted, double, pairs, subtotal


        def test_subtotal():
            assert subtotal([1, 2]) == 3


        def test_total():
            assert Cart().total([10]) == 11.0


        def test_decorated_lambda_generator():
            assert discounted([10]) == [9.0]
            assert double(2) == 4
            assert list(pairs([1, 2, 3])) == [[1, 2], [3]]


        def test_lazy_import():
            assert Cart().later() == 3


        def test_boom():
            Cart().boom()


        def test_no_profiler():
            assert sys.getprofile() is None
    ''',
    "pytest.ini": "[pytest]\n",
}


def python_for(version: str, tmp_path_factory) -> str:
    """A Python `version` with pytest: this suite's own when it is that version."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return PYTHON
    return other_python(version, tmp_path_factory)


def run_pytest(project: pathlib.Path, python: str, *args: str, recorder: str | None = "marks",
               env: dict | None = None, plugins: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, dict]:
    """pytest in `project` (with the watch's recorder unless `recorder` is None); its output and records."""
    deps = project / "deps.jsonl"
    if deps.exists():
        deps.unlink()
    run_env = {k: v for k, v in os.environ.items() if k not in ("STEPKERNEL_DEPS_FILE", "STEPKERNEL_WATCH_RECORDER")}
    run_env["PYTHONPATH"] = os.pathsep.join([str(project), str(WORKER)])
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(a for p in plugins for a in ("-p", p))]
    if recorder is not None:
        run_env["STEPKERNEL_DEPS_FILE"] = str(deps)
        run_env["STEPKERNEL_WATCH_RECORDER"] = recorder
        argv += ["-p", "stepkernel_worker.deps"]
    run_env.update(env or {})
    proc = subprocess.run([*argv, *args], cwd=project, env=run_env, capture_output=True, text=True, timeout=300)
    records = {}
    if deps.exists():
        for line in deps.read_text().splitlines():
            record = json.loads(line)
            if "test" in record:
                records[record["test"]] = record
    return proc, records


def ran(record: dict) -> set[tuple[str, str, int]]:
    """(file, qualname, first line) of the code a test ran."""
    return {(pathlib.Path(f).name, q, line) for f, q, line in record["code"]}


def names(record: dict) -> set[str]:
    """The last part of each qualname (3.10's profiler records have no more)."""
    return {q.rsplit(".", 1)[-1] for _, q, _ in record["code"]}


def needs_marks(version: str) -> None:
    if tuple(map(int, version.split("."))) >= (3, 12):
        pytest.skip("3.12+ records with sys.monitoring")


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_marks_record_what_each_test_ran_as_the_profiler_did(version, tmp_path, tmp_path_factory):
    needs_marks(version)
    python = python_for(version, tmp_path_factory)
    project = write_project(tmp_path / "p", LIB)
    proc, marked = run_pytest(project, python, "tests")
    assert "1 failed, 5 passed" in proc.stdout, proc.stdout + proc.stderr
    records = {t.split("::")[1]: r for t, r in marked.items()}
    assert ran(records["test_subtotal"]) == {("cart.py", "subtotal", 18), ("test_cart.py", "test_subtotal", 6)}
    assert ran(records["test_total"]) == {
        ("cart.py", "Cart.total", 40), ("cart.py", "subtotal", 18), ("test_cart.py", "test_total", 10)}
    # The decorator ran at import; its wrapper, the lambda and the generator run in the test.
    assert ran(records["test_decorated_lambda_generator"]) == {
        ("cart.py", "logged.<locals>.wrapper", 11), ("cart.py", "discounted", 22), ("cart.py", "<lambda>", 7),
        ("cart.py", "pairs", 32), ("test_cart.py", "test_decorated_lambda_generator", 14)}
    # A module imported during the test: its body is part of the record.
    assert ran(records["test_lazy_import"]) == {
        ("cart.py", "Cart.later", 48), ("late.py", "<module>", 1), ("test_cart.py", "test_lazy_import", 20)}
    assert not any(q == "unused" for r in marked.values() for _, q, _ in r["code"])
    # No profiler, so a test's sys.getprofile() is None, as under plain pytest.
    assert records["test_no_profiler"]["outcome"] == "passed"
    assert all(r["incomplete"] is None for r in marked.values())

    # The profiler, as before: the same code per test (comprehensions aside:
    # they are their own code objects to the profiler, part of their function's block).
    _, profiled = run_pytest(project, python, "tests", recorder="profile")
    for test, record in marked.items():
        seen = {n for n in names(profiled[test]) if not n.startswith("<listcomp")}
        assert names(record) == seen, test
    assert profiled["tests/test_cart.py::test_no_profiler"]["outcome"] == "failed"


PROBE = '''
    import inspect
    import json
    import sys
    import traceback

    from shop import cart


    def test_probe():
        seen = {}
        lines = []

        def tracer(frame, event, arg):
            if frame.f_code.co_filename == cart.__file__:
                lines.append([frame.f_code.co_name, event, frame.f_lineno])
            return tracer

        sys.settrace(tracer)
        try:
            cart.Cart().total([1, 2])
            cart.discounted([1])
            list(cart.pairs([1, 2, 3]))
            cart.double(1)
            cart.Cart().boom()
        except ValueError:
            seen["traceback"] = traceback.format_exc().splitlines()[-6:]
        finally:
            sys.settrace(None)
        seen["lines"] = lines
        seen["source"] = inspect.getsource(cart.Cart.boom)
        seen["firstlineno"] = cart.Cart.boom.__code__.co_firstlineno
        seen["docs"] = [cart.__doc__, cart.discounted.__doc__, cart.Cart.__doc__]
        seen["names"] = sorted(n for n in vars(cart) if n != "_@skr")
        seen["profile"] = repr(sys.getprofile())
        with open("probe.json", "w") as fh:
            json.dump(seen, fh)
'''


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_what_a_test_sees_of_the_library_is_as_under_plain_pytest(version, tmp_path, tmp_path_factory):
    needs_marks(version)
    python = python_for(version, tmp_path_factory)
    project = write_project(tmp_path / "p", {**LIB, "tests/test_probe.py": PROBE})
    seen = {}
    for side, recorder in (("plain", None), ("recorder", "marks")):
        proc, records = run_pytest(project, python, "tests/test_probe.py", recorder=recorder)
        assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
        seen[side] = json.loads((project / "probe.json").read_text())
    # Line events (what coverage and debuggers see), the traceback through the
    # library, inspect, docstrings: the same. The recorder did see the calls.
    assert seen["recorder"] == seen["plain"]
    assert seen["plain"]["traceback"][-1] == "ValueError: boom"
    assert {"Cart.total", "Cart.boom", "pairs"} <= {q for _, q, _ in records["tests/test_probe.py::test_probe"]["code"]}
    # What is left to see: one module global no identifier can name.
    marked_cache = glob.glob(str(project / "shop/__pycache__/cart.*skmarks-*.pyc"))
    assert marked_cache or os.environ.get("PYTHONDONTWRITEBYTECODE")


def test_coverage_results_are_as_under_plain_pytest(tmp_path):
    needs_marks(f"{sys.version_info.major}.{sys.version_info.minor}")
    pytest.importorskip("coverage")
    project = write_project(tmp_path / "p", {**LIB, ".coveragerc": "[run]\nbranch = True\nsource = shop\n"})
    results = {}
    for side, recorder in (("plain", None), ("recorder", "marks")):
        data = project / f".coverage-{side}"
        subprocess.run([PYTHON, "-m", "coverage", "run", "--rcfile", ".coveragerc", "-m", "pytest", "-q", "-p",
                        "no:cacheprovider", *(["-p", "stepkernel_worker.deps"] if recorder else []), "tests"],
                       cwd=project, check=False, capture_output=True, timeout=300,
                       env={**os.environ, "COVERAGE_FILE": str(data),
                            "PYTHONPATH": os.pathsep.join([str(project), str(WORKER)]),
                            **({"STEPKERNEL_DEPS_FILE": str(project / "cov-deps.jsonl")} if recorder else {})})
        out = project / f"{side}.json"
        subprocess.run([PYTHON, "-m", "coverage", "json", "--rcfile", ".coveragerc", "-o", str(out)],
                       cwd=project, check=True, capture_output=True, env={**os.environ, "COVERAGE_FILE": str(data)})
        files = json.loads(out.read_text())["files"]
        results[side] = {name: {k: files[name][k] for k in ("executed_lines", "missing_lines",
                                                            "executed_branches", "missing_branches")}
                         for name in files}
    assert (project / "cov-deps.jsonl").exists()
    assert results["recorder"] == results["plain"]
    assert results["plain"]["shop/cart.py"]["missing_lines"]  # `unused` never ran


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_a_library_file_with_a_syntax_error_gives_pytests_error(version, tmp_path, tmp_path_factory):
    needs_marks(version)
    python = python_for(version, tmp_path_factory)
    project = write_project(tmp_path / "p", {
        **LIB,
        "shop/broken.py": "def price(:\n    return 1\n",
        "tests/test_broken.py": "from shop.broken import price\n\n\ndef test_price():\n    assert price() == 1\n",
    })
    outputs = {}
    for side, recorder in (("plain", None), ("recorder", "marks")):
        proc, _ = run_pytest(project, python, "tests/test_broken.py", recorder=recorder)
        assert proc.returncode == 2, proc.stdout
        # Everything but the timing line.
        outputs[side] = [line for line in proc.stdout.splitlines() if " in " not in line or "error" not in line]
    assert outputs["recorder"] == outputs["plain"]
    assert any("SyntaxError" in line for line in outputs["plain"])


def test_marked_code_is_cached_under_its_own_tag_and_never_in_pythons_or_pytests(tmp_path):
    needs_marks(f"{sys.version_info.major}.{sys.version_info.minor}")
    project = write_project(tmp_path / "p", LIB)
    warm = {"PYTHONDONTWRITEBYTECODE": ""}
    # Cold (no bytecode written anywhere): the records are complete.
    proc, cold = run_pytest(project, PYTHON, "tests", env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert "1 failed, 5 passed" in proc.stdout, proc.stdout + proc.stderr
    assert not list(project.rglob("*.pyc"))
    # Plain pytest writes Python's and pytest's caches; the recorder's go beside them.
    run_pytest(project, PYTHON, "tests", recorder=None, env=warm)
    before = {p.name: p.read_bytes() for p in project.rglob("*.pyc")}
    assert before and not any("skmarks" in name for name in before)
    proc, first = run_pytest(project, PYTHON, "tests", env=warm)
    ours = {p.name for p in project.rglob("*.pyc") if "skmarks" in p.name}
    assert {n.split(".")[0] for n in ours} == {"__init__", "cart", "late", "test_cart"}, ours
    assert {p.name: p.read_bytes() for p in project.rglob("*.pyc") if p.name in before} == before
    # From the cache, the same records.
    proc, second = run_pytest(project, PYTHON, "tests", env=warm)
    assert {t: ran(r) for t, r in second.items()} == {t: ran(r) for t, r in first.items()} == \
        {t: ran(r) for t, r in cold.items()}
    # A saved file is compiled again (not served from the stale cache).
    cart = project / "shop/cart.py"
    cart.write_text(cart.read_text().replace("def subtotal(prices):", "def subtotal(prices, start=0):"))
    proc, third = run_pytest(project, PYTHON, "tests/test_cart.py::test_subtotal", env=warm)
    assert ("cart.py", "subtotal", 18) in ran(third["tests/test_cart.py::test_subtotal"])
    assert proc.returncode == 0


PLUGIN = '''
    def helper():
        return 5
'''

SCRIPT = '''
    def tool():
        return 7
'''

UNMARKED = '''
    import os
    import runpy

    from shop import plugin


    def test_plugin_helper():
        assert plugin.helper() == 5


    def test_script():
        assert runpy.run_path(os.path.abspath("scripts/tool.py"))["tool"]() == 7
'''


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_project_code_without_marks_is_recorded_by_the_profiler(version, tmp_path, tmp_path_factory):
    needs_marks(version)
    python = python_for(version, tmp_path_factory)
    project = write_project(tmp_path / "p", {**LIB, "shop/plugin.py": PLUGIN, "scripts/tool.py": SCRIPT,
                                            "tests/test_unmarked.py": UNMARKED})
    # A project plugin loaded before the recorder's: imported without marks.
    proc, records = run_pytest(project, python, "tests/test_unmarked.py", plugins=("shop.plugin",))
    assert "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "helper" in names(records["tests/test_unmarked.py::test_plugin_helper"])
    assert "tool" in names(records["tests/test_unmarked.py::test_script"])
    # Without that plugin, a script run by path (runpy: no import) switches the profiler on at once.
    proc, records = run_pytest(project, python, "tests/test_unmarked.py::test_script")
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "tool" in names(records["tests/test_unmarked.py::test_script"])


CORPUS_CHECK = r'''
import ast, collections, os, sys, sysconfig, types
from stepkernel_worker import entry_marks

COMPREHENSIONS = {"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"}
stdlib = sysconfig.get_paths()["stdlib"]
files = [os.path.join(stdlib, f) for f in ("inspect.py", "dataclasses.py", "typing.py", "enum.py", "argparse.py",
                                           "functools.py", "pathlib.py", "pprint.py", "textwrap.py")]
for package in ("json", "email", "asyncio", "importlib", "concurrent/futures", "unittest", "logging"):
    base = os.path.join(stdlib, package)
    files += sorted(os.path.join(base, f) for f in os.listdir(base) if f.endswith(".py"))
files += sys.argv[1:]


def walk(code):
    yield code
    for const in code.co_consts:
        if type(const) is types.CodeType:
            yield from walk(const)


def lines(code):
    seq = []
    for _, _, line in code.co_lines():
        if line is not None and (not seq or seq[-1] != line):
            seq.append(line)
    return seq


problems, checked = [], 0
for path in files:
    source = open(path, "rb").read()
    plain = compile(source, path, "exec", dont_inherit=True)
    tree = compile(source, path, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    table = entry_marks.mark_tree(tree, source)
    marked = entry_marks._finish(compile(tree, path, "exec", dont_inherit=True))
    wanted = collections.Counter((getattr(c, "co_qualname", c.co_name), c.co_firstlineno)
                                 for c in walk(plain) if c.co_name not in COMPREHENSIONS)
    got = collections.Counter(table if hasattr(plain, "co_qualname") else
                              [(q if q == "<module>" else q.rsplit(".", 1)[-1], n) for q, n in table])
    if wanted - got:
        problems.append((path, "table", sorted(wanted - got)[:3]))
    for a, b in zip(walk(plain), walk(marked)):
        checked += 1
        if a.co_name != b.co_name or lines(a) != lines(b):
            problems.append((path, a.co_name, a.co_firstlineno, lines(a)[:6], lines(b)[:6]))
        elif a.co_name not in COMPREHENSIONS and not entry_marks.is_marked(b):
            problems.append((path, a.co_name, "no mark"))
        elif a.co_name not in COMPREHENSIONS and a.co_name != "<module>" and a.co_consts[:1] != b.co_consts[:1]:
            problems.append((path, a.co_name, "docstring moved"))
print(checked, problems)
'''


@pytest.mark.parametrize("version", ["3.10", "3.11"])
def test_marks_leave_every_code_objects_lines_and_names_as_compiled_from_the_source(version, tmp_path,
                                                                                    tmp_path_factory):
    """Over the standard library's modules and this worker's own: each code object
    is there with its qualified name and first line in the slot table, has a mark
    (comprehensions aside), keeps its docstring, and has the line sequence a plain
    compile gives it (what line events, tracebacks and coverage see)."""
    needs_marks(version)
    python = python_for(version, tmp_path_factory)
    script = tmp_path / "corpus_check.py"
    script.write_text(CORPUS_CHECK)
    own = sorted(str(p) for p in (WORKER / "stepkernel_worker").rglob("*.py"))
    proc = subprocess.run([python, str(script), *own], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(WORKER)})
    assert proc.returncode == 0, proc.stderr
    checked, problems = proc.stdout.split(" ", 1)
    assert int(checked) > 5000
    assert problems.strip() == "[]", problems


# On 3.12+: what runs between two tests (a conftest wrapper around the
# recorder's), a generator resumed in a later test, a thread.
MONITORED = {
    "conftest.py": '''
        import pytest

        from shop import helpers


        @pytest.hookimpl(hookwrapper=True, tryfirst=True)
        def pytest_runtest_protocol(item, nextitem):
            # Registered after the recorder: around its wrapper, so this runs between two tests.
            helpers.between()
            yield
    ''',
    "shop/helpers.py": '''
        def between():
            return 1


        def in_thread():
            return 2


        def counter():
            yield 1
            yield 2
    ''',
    "tests/test_more.py": '''
        import threading

        from shop import helpers

        GEN = []


        def test_starts_a_generator():
            GEN.append(helpers.counter())
            assert next(GEN[0]) == 1


        def test_resumes_it():
            assert next(GEN[0]) == 2


        def test_calls_what_ran_between_tests():
            assert helpers.between() == 1


        def test_not_again():
            pass


        def test_thread():
            thread = threading.Thread(target=helpers.in_thread)
            thread.start()
            thread.join()
    ''',
    # Holds sys.monitoring ids 5 and 2 before the recorder starts: it has one left (restart_events).
    "holdids.py": '''
        import sys

        sys.monitoring.use_tool_id(5, "another tool")
        sys.monitoring.use_tool_id(2, "a profiler")
    ''',
}


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_monitoring_records_what_each_test_ran(version, tmp_path, tmp_path_factory):
    """sys.monitoring's records (two tools: each code object re-armed at the next
    test after it ran) name the code each test ran, the same as the one-id
    fallback's (every code object re-armed by restart_events())."""
    python = python_for(version, tmp_path_factory)
    project = write_project(tmp_path / "p", {**LIB, **MONITORED})
    expected = {
        "test_subtotal": {("cart.py", "subtotal", 18), ("test_cart.py", "test_subtotal", 6)},
        "test_total": {("cart.py", "Cart.total", 40), ("cart.py", "subtotal", 18), ("test_cart.py", "test_total", 10)},
        "test_decorated_lambda_generator": {
            ("cart.py", "logged.<locals>.wrapper", 11), ("cart.py", "discounted", 22), ("cart.py", "<lambda>", 7),
            ("cart.py", "pairs", 32), ("test_cart.py", "test_decorated_lambda_generator", 14)},
        # A module imported during the test: its body is part of the record.
        "test_lazy_import": {("cart.py", "Cart.later", 48), ("late.py", "<module>", 1),
                             ("test_cart.py", "test_lazy_import", 20)},
        "test_boom": {("cart.py", "Cart.boom", 43), ("test_cart.py", "test_boom", 24)},
        "test_no_profiler": {("test_cart.py", "test_no_profiler", 28)},
        # A generator counts for the test that started it (a resume is no start).
        "test_starts_a_generator": {("helpers.py", "counter", 9), ("test_more.py", "test_starts_a_generator", 8)},
        "test_resumes_it": {("test_more.py", "test_resumes_it", 13)},
        # It ran (unrecorded) between every two tests, so it was re-armed for this one.
        "test_calls_what_ran_between_tests": {("helpers.py", "between", 1),
                                              ("test_more.py", "test_calls_what_ran_between_tests", 17)},
        "test_not_again": {("test_more.py", "test_not_again", 21)},
        "test_thread": {("helpers.py", "in_thread", 5), ("test_more.py", "test_thread", 25)},
    }
    for plugins in ((), ("holdids",)):
        proc, records = run_pytest(project, python, "tests", plugins=plugins)
        assert "1 failed, 10 passed" in proc.stdout, proc.stdout + proc.stderr
        got = {t.split("::")[1]: ran(r) for t, r in records.items()}
        assert got == expected, plugins
        assert {r["recorder"] for r in records.values()} == {"sys.monitoring"}
        assert all(r["incomplete"] is None for r in records.values())
        # Each record names the hash of every file its code is in, as the watch reads it.
        for record in records.values():
            assert set(record["hashes"]) == {f for f, _, _ in record["code"]}
            assert all(len(h) == 40 for h in record["hashes"].values())
        assert records["tests/test_cart.py::test_boom"]["outcome"] == "failed"
        assert "ValueError" in records["tests/test_cart.py::test_boom"]["report"]


REGISTERED = '''
    import importlib.machinery
    import sys


    def pytest_configure(config):
        plugin = config.pluginmanager.get_plugin("stepkernel_worker.deps")
        with open("registered.txt", "w") as out:
            # Imported by the worker (not by pytest's -p, whose import goes through its assertion rewriter).
            # (The unpacked worker's own loader is a SourceFileLoader too; pytest's rewriter is not one.)
            loader = plugin.__loader__
            out.write(repr((plugin is sys.modules.get("stepkernel_worker.deps"),
                            isinstance(loader, importlib.machinery.SourceFileLoader), type(loader).__name__)))
'''

PARSE = """
from stepkernel_worker.stepping.pytest_plugin import _object_plugins
print([p.__name__ for p in _object_plugins(["-q", "-p", "stepkernel_worker.deps", "tests"])],
      len(_object_plugins(["-pstepkernel_worker.deps"])), _object_plugins(["-p", "no:cacheprovider", "tests/-p"]))
"""


def test_a_cycles_worker_registers_the_recorder_once_as_an_object(tmp_path):
    """`stepkernel run ... -- -p stepkernel_worker.deps` (a watch cycle): the worker
    imports and registers the module itself, so pytest's `-p` finds it there (and
    reads no distribution's entry points for it); one record per test."""
    from conftest import stepkernel_bin

    parsed = subprocess.run([PYTHON, "-c", PARSE], env={**os.environ, "PYTHONPATH": str(WORKER)},
                            capture_output=True, text=True, timeout=60)
    assert parsed.stdout.strip() == "['stepkernel_worker.deps'] 1 []", parsed.stderr
    project = write_project(tmp_path / "p", {**LIB, "conftest.py": REGISTERED})
    deps = project / "deps.jsonl"
    proc = subprocess.run([stepkernel_bin(), "run", "--python", PYTHON, "--on-error", "fail", "tests", "--",
                           "-p", "no:cacheprovider", "-p", "stepkernel_worker.deps"], cwd=project,
                          env={**os.environ, "STEPKERNEL_DEPS_FILE": str(deps)}, capture_output=True, text=True,
                          timeout=300)
    assert "1 failed, 5 passed" in proc.stdout, proc.stdout + proc.stderr
    registered, source_loader, loader = ast.literal_eval((project / "registered.txt").read_text())
    assert registered and source_loader and loader != "AssertionRewritingHook", (registered, loader)
    lines = [json.loads(line) for line in deps.read_text().splitlines()]
    assert sorted(r["start"] for r in lines if "start" in r) == sorted(r["test"] for r in lines if "test" in r)
    assert len([r for r in lines if "test" in r]) == 6
    # Plain pytest with that -p imports it itself, through its rewriter: what the worker spares.
    plain, _ = run_pytest(project, PYTHON, "tests")
    assert (project / "registered.txt").read_text() == "(True, False, 'AssertionRewritingHook')", plain.stdout
