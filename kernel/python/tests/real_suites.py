"""Compare plain pytest with stepped runs (on_error=fail) on real PyPI projects' test suites.

Not part of the default test run. Usage::

    python kernel/python/tests/real_suites.py --workdir /tmp/real [--install] [SUITE...]

With ``--install`` the sdists are downloaded (``pip download --no-binary``)
into ``WORKDIR/sdists`` and installed with their test dependencies into the
interpreter running this script (use a throwaway virtualenv). Prints, per
suite, how many tests agree, which differ, and the time ratio.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tarfile
import time

from fidelity import junit_outcomes, run_stepped

# name -> (pip requirement, source dir glob, test args, extra test dependencies)
SUITES = {
    "more-itertools": ("more-itertools==11.2.1", "more_itertools-*", ["tests"], []),
    "toolz": ("toolz==1.2.0", "toolz-*", ["toolz/tests"], []),
    "python-dateutil": (
        "python-dateutil==4.0.0",
        "python_dateutil-*",
        ["tests"],
        ["hypothesis", "freezegun"],
    ),
    "attrs": ("attrs==26.1.0", "attrs-*", ["tests"], ["hypothesis", "cloudpickle", "pympler"]),
}


def install(workdir: str, names: list[str]) -> None:
    sdists = os.path.join(workdir, "sdists")
    os.makedirs(sdists, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for name in names:
        requirement, pattern, _, deps = SUITES[name]
        if not glob.glob(os.path.join(sdists, pattern + ".tar.gz")):
            subprocess.run(
                [*pip, "download", "--no-binary", ":all:", "--no-deps", requirement, "-d", sdists], check=True
            )
        archive = glob.glob(os.path.join(sdists, pattern + ".tar.gz"))[0]
        with tarfile.open(archive) as tar:
            tar.extractall(sdists, filter="data") if sys.version_info >= (3, 12) else tar.extractall(sdists)
        source = archive[: -len(".tar.gz")]
        subprocess.run([*pip, "install", *deps, source], check=True)


def compare(workdir: str, name: str, extra: list[str]) -> dict:
    _, pattern, args, _ = SUITES[name]
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
    stepped, events = run_stepped(source, [*extra, *args], xml=stepped_xml)
    t2 = time.perf_counter()
    a, b = junit_outcomes(plain_xml), junit_outcomes(stepped_xml)
    differ = sorted(k for k in set(a) | set(b) if a.get(k, "absent") != b.get(k, "absent"))
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
        "plain_exit": plain.returncode,
        "stepped_exit": stepped.returncode,
        "plain_s": round(t1 - t0, 2),
        "stepped_s": round(t2 - t1, 2),
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
    parser.add_argument("suites", nargs="*", default=list(SUITES))
    ns = parser.parse_args(argv)
    if ns.install:
        install(ns.workdir, ns.suites)
    failed = 0
    for name in ns.suites:
        result = compare(ns.workdir, name, ns.pytest_arg)
        print(
            f"{name}: {result['agree']}/{result['tests']} agree; "
            f"plain {result['plain_s']}s (exit {result['plain_exit']}), "
            f"stepped {result['stepped_s']}s (exit {result['stepped_exit']}); "
            f"{result['stepped_tests']}/{result['test_events']} tests stepped, {result['steps']} steps; "
            f"plain outcomes {result['outcomes']}"
        )
        for test, plain, stepped in result["differ"]:
            print(f"  DIFF {test}: plain={plain} stepped={stepped}")
        failed += bool(result["differ"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
