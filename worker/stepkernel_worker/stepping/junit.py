"""JUnit XML in pytest's shape (``--junitxml``), for runs without pytest.

Test cases are keyed like pytest's: ``classname`` is the file's dotted path
plus the class (``tests.test_cart.TestCart``), ``name`` the method. Failures
inside a test (setUp, body, tearDown, cleanups, subtests) are ``<failure>``;
errors of class or module fixtures are ``<error>`` entries, as pytest reports
them in its setup/teardown phases.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import xml.etree.ElementTree as ET

# Characters XML 1.0 cannot hold (pytest replaces them the same way).
_ILLEGAL = {c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)}


def _clean(text: str) -> str:
    return "".join(f"#x{ord(ch):02X}" if ord(ch) in _ILLEGAL else ch for ch in text)


@dataclasses.dataclass
class Case:
    """One ``<testcase>`` entry."""

    classname: str
    name: str
    time: float = 0.0
    #: None (passed), "failure", "error" or "skipped".
    kind: str | None = None
    message: str = ""
    text: str = ""
    skip_type: str = "pytest.skip"
    #: ``<properties>`` of the case, as pytest's ``record_property`` writes them (plan ids).
    properties: list = dataclasses.field(default_factory=list)


def write(path: str, cases: list[Case], duration: float) -> None:
    """Write ``cases`` as a pytest-style JUnit XML report."""
    counts = {"failure": 0, "error": 0, "skipped": 0}
    for case in cases:
        if case.kind in counts:
            counts[case.kind] += 1
    suites = ET.Element("testsuites", name="pytest tests")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="pytest",
        errors=str(counts["error"]),
        failures=str(counts["failure"]),
        skipped=str(counts["skipped"]),
        tests=str(len(cases)),
        time=f"{duration:.3f}",
        timestamp=datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(),
        hostname=platform.node(),
    )
    for case in cases:
        element = ET.SubElement(
            suite, "testcase", classname=case.classname, name=case.name, time=f"{case.time:.3f}"
        )
        if case.properties:
            props = ET.SubElement(element, "properties")
            for name, value in case.properties:
                ET.SubElement(props, "property", name=_clean(str(name)), value=_clean(str(value)))
        if case.kind is None:
            continue
        attrs = {"message": _clean(case.message)}
        if case.kind == "skipped":
            attrs = {"type": case.skip_type, "message": _clean(case.message)}
        child = ET.SubElement(element, case.kind, attrs)
        if case.text:
            child.text = _clean(case.text)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
