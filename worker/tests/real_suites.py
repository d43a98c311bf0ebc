"""Compare plain pytest with stepped runs (on_error=fail) on real PyPI projects' test suites.

Not part of the default test run. Usage::

    python worker/tests/real_suites.py --workdir /tmp/real [--install] [--stepkernel BIN] [SUITE...]

With ``--stepkernel target/release/stepkernel`` the stepped side is the whole
``stepkernel run --on-error fail`` path, run ``--rounds`` times (default 3):
cold (stepped and pytest ``.pyc`` removed, PYTHONDONTWRITEBYTECODE=1), then
with bytecode writing on (it writes the step cache), then warm (it reads it);
every round must agree with plain pytest.

With ``--install`` the sdists are downloaded (``pip download --no-binary``)
into ``WORKDIR/sdists`` and installed with their test dependencies into the
interpreter running this script (use a throwaway virtualenv). Prints, per
suite, how many tests agree, which differ, and the time ratio.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

from fidelity import junit_outcomes, run_stepped

# name -> (pip requirement, source dir glob, test args, extra test dependencies,
#          extra pytest options for both sides)
SUITES = {
    "more-itertools": ("more-itertools==11.2.1", "more_itertools-*", ["tests"], [], []),
    "toolz": ("toolz==1.2.0", "toolz-*", ["toolz/tests"], [], []),
    "python-dateutil": (
        "python-dateutil==4.0.0",
        "python_dateutil-*",
        ["tests"],
        # pytest-cov registers the no_cover mark its conftest adds (unknown marks are errors there).
        ["hypothesis", "freezegun", "pytest-cov"],
        [],
    ),
    "attrs": ("attrs==26.1.0", "attrs-*", ["tests"], ["hypothesis", "cloudpickle", "pympler"], []),
    "packaging": ("packaging==24.2", "packaging-*", ["tests"], ["pretend"], []),
    # click's own filterwarnings=error meets a pytest 9 deprecation in its parametrize.
    "click": ("click==8.1.8", "click-*", ["tests"], [], ["-W", "ignore::pytest.PytestRemovedIn10Warning"]),
    "pyparsing": (
        "pyparsing==3.2.0",
        "pyparsing-*",
        ["tests"],
        [],
        ["--ignore=tests/test_matplotlib_cases.py", "--ignore=tests/test_diagram.py"],
    ),
    "pyflakes": ("pyflakes==3.2.0", "pyflakes-*", ["pyflakes/test"], [], []),
    "humanize": ("humanize==4.11.0", "humanize-*", ["tests"], ["freezegun", "coverage"], []),
    "sqlparse": ("sqlparse==0.5.3", "sqlparse-*", ["tests"], [], []),
    "itsdangerous": ("itsdangerous==2.2.0", "itsdangerous-*", ["tests"], ["freezegun"], []),
    "tabulate": ("tabulate==0.9.0", "tabulate-*", ["test"], [], []),
    "cachetools": ("cachetools==5.5.0", "cachetools-*", ["tests"], [], []),
    "parse": ("parse==1.20.2", "parse-*", ["tests"], [], []),
    "jmespath": ("jmespath==1.0.1", "jmespath-*", ["tests"], [], []),
    "tenacity": ("tenacity==9.0.0", "tenacity-*", ["tests"], ["tornado", "typeguard"], []),
    # Markdown's test_md_in_html has a TestSuite class pytest 9 refuses to collect.
    "markdown": (
        "markdown==3.7",
        "markdown-*",
        ["tests"],
        ["pyyaml"],
        ["--ignore=tests/test_syntax/extensions/test_md_in_html.py"],
    ),
    "python-dotenv": ("python-dotenv==1.0.1", "python[-_]dotenv-*", ["tests"], ["sh"], []),
    "natsort": ("natsort==8.4.0", "natsort-*", ["tests"], ["hypothesis", "pytest-mock"], []),
    "jinja2": ("jinja2==3.1.4", "jinja2-*", ["tests"], ["trio"], []),
    "wrapt": ("wrapt==2.0.1", "wrapt-*", ["tests"], [], []),
    "networkx": ("networkx==3.4.2", "networkx-*", ["networkx"], [], []),
    "docutils": ("docutils==0.21.2", "docutils-*", ["test"], [], []),
    # Frames (loguru caches and walks them) and the clock (freezegun patches it): families 2 and 3.
    "loguru": (
        "loguru==0.7.2",
        "loguru-*",
        ["tests"],
        ["freezegun", "colorama"],
        ["--ignore=tests/test_type_hinting.py", "--ignore=tests/typesafety"],
    ),
    "freezegun": ("freezegun==1.5.1", "freezegun-*", ["tests"], [], []),
    "trio": (
        "trio==0.27.0",
        "trio-*",
        [],
        ["trustme", "pyOpenSSL", "cryptography", "astor"],
        # The tests live in the installed package (the sdist's copy is another module).
        ["-p", "trio._tests.pytest_plugin", "--skip-optional-imports", "--pyargs", "trio._tests"],
    ),
    # Suites added in session 11 for seams not yet tried: patched os/io/open (pyfakefs), another
    # import hook (typeguard), event-loop plugins (anyio), ptys and signals (pexpect, ptyprocess),
    # threads and fds (filelock), sys.path and imports (zipp, importlib-metadata), pytest's own
    # machinery (pluggy), and a few ordinary libraries.
    "pyfakefs": ("pyfakefs==5.7.4", "pyfakefs-*", ["pyfakefs/tests", "pyfakefs/pytest_tests"], [], []),
    # These suites make warnings errors, and pytest-asyncio warns when the loop scope is unset.
    "typeguard": ("typeguard==4.4.1", "typeguard-*", ["tests"], [], ["--ignore=tests/mypy", "-o", "asyncio_default_fixture_loop_scope=function"]),
    "anyio": (
        "anyio==4.6.2.post1",
        "anyio-*",
        # The socket and stream tests take minutes here and some need IPv6; the rest run both backends.
        [f"tests/{name}.py" for name in ("test_debugging", "test_eventloop", "test_fileio", "test_from_thread",
                                          "test_lowlevel", "test_pytest_plugin", "test_signals", "test_subprocesses",
                                          "test_synchronization", "test_taskgroups", "test_to_process",
                                          "test_to_thread", "test_typedattr")],
        ["trio==0.27.0", "exceptiongroup", "hypothesis", "psutil", "pytest-mock", "trustme", "truststore", "uvloop"],
        ["-m", "not network"],
    ),
    "pexpect": ("pexpect==4.9.0", "pexpect-*", ["tests"], [], []),
    "ptyprocess": ("ptyprocess==0.7.0", "ptyprocess-*", ["tests"], [], []),
    "filelock": (
        "filelock==3.16.1",
        "filelock-*",
        ["tests"],
        ["pytest-asyncio", "pytest-mock", "pytest-timeout", "virtualenv"],
        [],
    ),
    "structlog": (
        "structlog==24.4.0",
        "structlog-*",
        ["tests"],
        ["freezegun", "pretend", "pytest-asyncio", "simplejson"],
        [],
    ),
    "zipp": (
        "zipp==3.21.0",
        "zipp-*",
        ["tests"],
        ["jaraco.itertools", "jaraco.functools", "more_itertools", "big-O", "pytest-ignore-flaky", "jaraco.test"],
        # big-O timing fits: they fail by chance under plain pytest on a loaded machine.
        ["--ignore=tests/test_complexity.py"],
    ),
    "importlib-metadata": (
        "importlib-metadata==8.5.0",
        "importlib_metadata-*",
        ["tests"],
        ["packaging", "pyfakefs", "jaraco.test"],
        [],
    ),
    "pluggy": ("pluggy==1.6.0", "pluggy-*", ["testing"], [], ["--ignore=testing/benchmark.py", "-o", "asyncio_default_fixture_loop_scope=function"]),
    # Its test_invalid_datetime_deserialization ids hold the current time (no two runs share them).
    "marshmallow": (
        "marshmallow==3.23.1",
        "marshmallow-*",
        ["tests"],
        ["simplejson"],
        ["-k", "not test_invalid_datetime_deserialization"],
    ),
    "blinker": ("blinker==1.9.0", "blinker-*", ["tests"], ["pytest-asyncio"], ["-o", "asyncio_default_fixture_loop_scope=function"]),
    "werkzeug": (
        "werkzeug==3.1.3",
        "werkzeug-*",
        ["tests"],
        ["pytest-timeout", "cryptography", "watchdog", "ephemeral-port-reserve"],
        # The dev-server tests spin a reloader for minutes on a loaded machine.
        ["-m", "not dev_server", "-o", "asyncio_default_fixture_loop_scope=function"],
    ),
    "h11": ("h11==0.14.0", "h11-*", ["h11/tests"], [], []),
    "exceptiongroup": ("exceptiongroup==1.2.2", "exceptiongroup-*", ["tests"], [], []),
    "outcome": ("outcome==1.3.0.post0", "outcome-*", ["tests"], ["pytest-asyncio"], []),
    "decorator": ("decorator==5.1.1", "decorator-*", ["src/tests"], [], ["-o", "python_files=test*.py"]),
    # mock's test files are named test*.py (unittest's default), not test_*.py.
    "mock": ("mock==5.1.0", "mock-*", ["mock/tests"], [], ["-o", "python_files=test*.py"]),
    # C extensions built from source (msgpack, simplejson: run from the sdist, their tests import the
    # source tree's pure-Python fallback on both sides), pytest plugins that patch and time tests
    # (pytest-mock, pytest-timeout; both run pytester sessions), pytest's own suite, and more libraries.
    "six": ("six==1.17.0", "six-*", ["test_six.py"], [], []),
    "msgpack": ("msgpack==1.2.4", "msgpack-*", ["test"], [], []),
    "pytest-mock": ("pytest-mock==3.17.0", "pytest_mock-*", ["tests"], ["pytest-asyncio"], []),
    "pytest-timeout": ("pytest-timeout==2.4.0", "pytest_timeout-*", ["test_pytest_timeout.py"], ["pexpect"], []),
    "simplejson": ("simplejson==4.3.0", "simplejson-*", ["simplejson/tests"], [], []),
    "jsonschema": (
        "jsonschema==4.26.0",
        "jsonschema-*",
        ["jsonschema/tests"],
        ["jsonpath-ng", "fqdn", "idna", "isoduration", "jsonpointer", "rfc3339-validator", "rfc3986-validator",
         "rfc3987-syntax", "uri_template", "webcolors"],
        [],
    ),
    # arrow's tox.ini addopts run it under pytest-cov on both sides.
    "arrow": ("arrow==1.4.0", "arrow-*", ["tests"], ["dateparser", "pytest-cov", "pytest-mock", "pytz", "simplejson"], []),
    "babel": ("babel==2.19.0", "babel-*", ["tests"], ["freezegun", "jinja2", "pytz", "setuptools"], []),
    # Without pytest-randomly (pygments' tox.ini has it): the two sides would run in different orders.
    "pygments": ("pygments==2.21.0", "pygments-*", ["tests"], ["wcag-contrast-ratio"], []),
    # A part of pytest's own testing/ (about 1,850 tests, most of them pytester sessions, in-process and in
    # subprocesses; its filterwarnings=error meets pytest-asyncio's unset loop scope, installed for other suites).
    # TestPyCacheDir::test_sys_pycache_prefix_integration differs: see cases/test_hard_pyc_cache.py.
    "pytest": (
        "pytest==9.2.0",
        "pytest-*",
        [f"testing/{name}.py" for name in ("test_assertrewrite", "test_assertion", "test_capture", "test_collection",
                                             "test_mark", "test_skipping", "test_monkeypatch", "test_recwarn",
                                             "test_runner", "test_conftest", "test_warnings",
                                             "python/approx", "python/collect", "python/fixtures",
                                             "python/integration", "python/metafunc", "python/raises",
                                             "python/raises_group", "python/show_fixtures_per_test")],
        ["argcomplete", "attrs", "hypothesis", "mock", "pexpect", "pyyaml", "requests", "xmlschema"],
        ["-o", "asyncio_default_fixture_loop_scope=function"],
    ),
    # cattrs' addopts need pytest-benchmark; the preconf tests need each serialization library.
    "cattrs": (
        "cattrs==26.2.1",
        "cattrs-*",
        ["tests"],
        ["hypothesis", "immutables", "pytest-benchmark", "msgpack", "pyyaml", "tomlkit", "tomli-w", "cbor2",
         "pymongo", "ujson", "orjson", "msgspec"],
        [],
    ),
}


def install(workdir: str, names: list[str]) -> None:
    sdists = os.path.join(workdir, "sdists")
    os.makedirs(sdists, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name in names:
        requirement, pattern, _, deps, _ = SUITES[name]
        if not glob.glob(os.path.join(sdists, pattern + ".tar.gz")):
            subprocess.run(
                # Only the suite's own package from source: its build backend comes as a wheel.
                [*pip, "download", "--no-binary", requirement.split("==")[0], "--no-deps", requirement, "-d", sdists],
                check=True,
            )
        archive = glob.glob(os.path.join(sdists, pattern + ".tar.gz"))[0]
        with tarfile.open(archive) as tar:
            # The data filter (3.12, and backported to 3.10.12/3.11.4) also drops group and
            # other write bits, which stepkernel refuses on a session's directory.
            tar.extractall(sdists, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(sdists)
        source = archive[: -len(".tar.gz")]
        subprocess.run([*pip, "install", *deps, source], check=True)


def run_through_stepkernel(
    binary: str, source: str, targets: list[str], options: list[str], xml: str, session: str, env: dict | None = None
):
    """`stepkernel run --on-error fail` (kernel, worker, event ring, step cache): (process, events)."""
    proc = subprocess.run(
        [binary, "run", "--on-error", "fail", "--python", sys.executable, "-q", "--junit-xml", xml,
         "--session-dir", session, *targets, "--", "-p", "no:cacheprovider", *options],
        cwd=source,
        capture_output=True,
        text=True,
        env=env,
    )
    events_path = os.path.join(session, "events.jsonl")
    events = []
    if os.path.exists(events_path):
        with open(events_path) as fh:
            events = [json.loads(line) for line in fh if line.strip()]
    return proc, events


def compare(workdir: str, name: str, extra: list[str], stepkernel: str | None = None, rounds: int = 1) -> dict:
    _, pattern, args, _, options = SUITES[name]
    extra = [*options, *extra]
    matches = [p for p in glob.glob(os.path.join(workdir, "sdists", pattern)) if os.path.isdir(p)]
    if not matches:
        raise SystemExit(f"{name}: source not found under {workdir}/sdists (use --install)")
    source = matches[0]
    plain_xml = os.path.join(source, "plain.xml")
    stepped_xml = os.path.join(source, "stepped.xml")
    common = ["-p", "no:cacheprovider", *extra, *args]
    t0 = time.perf_counter()
    plain = subprocess.run(
        [sys.executable, "-m", "pytest", f"--junitxml={plain_xml}", *common],
        cwd=source,
        capture_output=True,
        text=True,
    )
    t1 = time.perf_counter()
    a = junit_outcomes(plain_xml)
    differ_sets = []
    for round_ in range(rounds):
        if stepkernel is None:
            stepped, events = run_stepped(source, [*extra, *args], xml=stepped_xml)
        else:
            env = dict(os.environ)
            if round_ == 0:
                # Cold: no stepped or pytest .pyc to read, and none written (the shell may set
                # PYTHONDONTWRITEBYTECODE anyway; later rounds unset it, so they write, then read).
                for pyc in glob.glob(os.path.join(source, "**", "__pycache__", "*-pytest-*.pyc"), recursive=True):
                    os.unlink(pyc)
                env["PYTHONDONTWRITEBYTECODE"] = "1"
            else:
                env.pop("PYTHONDONTWRITEBYTECODE", None)
            session = os.path.join(source, f".stepkernel-check-{round_}")
            shutil.rmtree(session, ignore_errors=True)
            stepped, events = run_through_stepkernel(stepkernel, source, args, extra, stepped_xml, session, env)
        b = junit_outcomes(stepped_xml)
        differ_sets.append({k for k in set(a) | set(b) if a.get(k, "absent") != b.get(k, "absent")})
    t2 = time.perf_counter()
    differ = sorted(set().union(*differ_sets))
    steps = sum(1 for e in events if e["event"] == "step_start")
    stepped_tests = {
        e["test"] for e in events if e["event"] == "test_start" and any(p["stepped"] for p in e["phases"])
    }
    tests = sum(1 for e in events if e["event"] == "test_start")
    return {
        "suite": name,
        "tests": len(set(a) | set(b)),
        "agree": len(set(a) | set(b)) - len(differ),
        "differ": [(f"{k[0]}::{k[1]}", a.get(k, "absent"), b.get(k, "absent")) for k in differ],
        "differ_rounds": {f"{k[0]}::{k[1]}": [r for r, d in enumerate(differ_sets) if k in d] for k in differ},
        "plain_exit": plain.returncode,
        "stepped_exit": stepped.returncode,
        "plain_s": round(t1 - t0, 2),
        "stepped_s": round((t2 - t1) / rounds, 2),
        "steps": steps,
        "stepped_tests": len(stepped_tests),
        "test_events": tests,
        "outcomes": {o: sum(1 for v in a.values() if v == o) for o in sorted(set(a.values()))},
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--install", action="store_true")
    parser.add_argument("--pytest-arg", action="append", default=[])
    parser.add_argument(
        "--stepkernel",
        help="the stepkernel binary: compare through the whole `stepkernel run` path, "
        "--rounds times (cold, writing, warm step cache), instead of the engine alone",
    )
    parser.add_argument("--rounds", type=int, default=3, help="stepped rounds with --stepkernel (default 3)")
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    ns = parser.parse_args(argv)
    if ns.install:
        install(ns.workdir, ns.suites)
    failed = 0
    for name in ns.suites:
        result = compare(ns.workdir, name, ns.pytest_arg, ns.stepkernel, ns.rounds if ns.stepkernel else 1)
        print(
            f"{name}: {result['agree']}/{result['tests']} agree; "
            f"plain {result['plain_s']}s (exit {result['plain_exit']}), "
            f"stepped {result['stepped_s']}s (exit {result['stepped_exit']}); "
            f"{result['stepped_tests']}/{result['test_events']} tests stepped, {result['steps']} steps; "
            f"plain outcomes {result['outcomes']}"
        )
        for test, plain, stepped in result["differ"]:
            print(f"  DIFF {test}: plain={plain} stepped={stepped} (rounds {result['differ_rounds'][test]})")
        failed += bool(result["differ"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
