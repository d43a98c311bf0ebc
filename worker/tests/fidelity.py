"""Plain pytest versus stepped runs: JUnit outcomes and failure reports must agree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_STEPPED = os.path.join(HERE, "run_stepped.py")
CASES = os.path.join(HERE, "cases")
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))


def shared_fidelity_dir() -> str | None:
    """The shared fidelity corpus: $STEPKERNEL_FIDELITY, else ``../shared/fidelity`` beside the repo."""
    candidates = [os.environ.get("STEPKERNEL_FIDELITY"), os.path.join(REPO, "..", "shared", "fidelity")]
    for path in candidates:
        if path and os.path.isdir(os.path.join(path, "cases")):
            return os.path.abspath(path)
    return None


def junit_outcomes(path: str) -> dict[tuple[str, str], str]:
    """Per-test outcome, the worst of its entries (same rules as compare_junit.py)."""
    rank = ["passed", "skipped", "failed", "error"]
    result: dict[tuple[str, str], str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        kinds = {child.tag for child in case}
        outcome = (
            "error"
            if "error" in kinds
            else "failed"
            if "failure" in kinds
            else "skipped"
            if "skipped" in kinds
            else "passed"
        )
        if key in result and rank.index(result[key]) > rank.index(outcome):
            continue
        result[key] = outcome
    return result


def run_plain(directory: str, args: list[str], xml: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={xml}", *args]
    return subprocess.run(cmd, cwd=directory, capture_output=True, text=True)


def run_stepped(
    directory: str,
    args: list[str],
    *,
    xml: str | None = None,
    runner: str = "pytest",
    on_error: str = "fail",
    script: list | None = None,
    step_events: bool = False,
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    events = os.path.join(directory, f"events-{len(os.listdir(directory))}.jsonl")
    cmd = [
        sys.executable,
        RUN_STEPPED,
        "--runner",
        runner,
        "--on-error",
        on_error,
        "--rootdir",
        directory,
        "--events",
        events,
        "--script",
        json.dumps(script or []),
    ]
    if xml:
        cmd += ["--junit-xml", xml]
    if step_events:
        cmd.append("--step-events")
    extra = ["-p", "no:cacheprovider"] if runner == "pytest" else []
    proc = subprocess.run([*cmd, "--", *extra, *args], cwd=directory, capture_output=True, text=True)
    with open(events) as fh:
        return proc, [json.loads(line) for line in fh]


def failures_section(output: str) -> str:
    """The FAILURES/ERRORS part of pytest's report, without addresses and timings."""
    start = output.find("= FAILURES =")
    if start < 0:
        start = output.find("= ERRORS =")
    end = output.find("short test summary info")
    text = output[start:end] if start >= 0 else ""
    text = "".join(line for line in text.splitlines(True) if "generated xml file" not in line)
    # asyncio's debug mode logs a step that took over 0.1 s: on a loaded
    # machine either side may, so that warning (and its section header when it
    # was the only record) is a timing, not a difference.
    text = re.sub(r"WARNING  asyncio:[^\n]*took [0-9.]+ seconds\n", "", text)
    text = re.sub(r"-+ Captured log call -+\n(?=\S*_{3,}|\Z|=)", "", text)
    text = re.sub(r"0x[0-9a-f]+", "ADDR", text)
    return re.sub(r"id='\d+'", "id=ID", text)


def copy_cases(source: str, dest: str) -> None:
    for name in os.listdir(source):
        if name.endswith(".py"):
            shutil.copy(os.path.join(source, name), dest)
