"""The zygote's staleness and project checks (stepkernel_worker/zygote.py), on real files.

Each test imports a real module from a temporary directory (so it is in
``sys.modules`` with its file), takes a snapshot, changes something on disk and
asks whether a child forked now could differ from a fresh worker.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import pytest

from stepkernel_worker import zygote


@pytest.fixture
def imported(tmp_path, monkeypatch):
    """A directory on sys.path outside the project, with a module imported from it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "zygote_probe_mod.py").write_text("VALUE = 1\n")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    module = importlib.import_module("zygote_probe_mod")
    yield site, project, module
    sys.modules.pop("zygote_probe_mod", None)


def later(path) -> None:
    """Make sure the next write gives `path` another mtime (coarse file system clocks)."""
    before = os.stat(path).st_mtime_ns
    while os.stat(path).st_mtime_ns == before:
        time.sleep(0.01)
        os.utime(path)


def test_nothing_changed_is_fresh(imported):
    _site, project, _module = imported
    assert zygote._Snapshot(str(project)).stale() is None


def test_an_edited_or_removed_module_file_is_stale(imported):
    site, project, _module = imported
    snapshot = zygote._Snapshot(str(project))
    (site / "zygote_probe_mod.py").write_text("VALUE = 2  # a longer file\n")
    reason = snapshot.stale()
    assert reason is not None and "zygote_probe_mod.py changed" in reason
    snapshot = zygote._Snapshot(str(project))
    (site / "zygote_probe_mod.py").unlink()
    assert "zygote_probe_mod.py was removed" in (snapshot.stale() or "")


def test_an_ini_file_that_appears_or_changes_is_stale(imported):
    _site, project, _module = imported
    snapshot = zygote._Snapshot(str(project))
    (project / "pytest.ini").write_text("[pytest]\n")
    assert "pytest.ini appeared" in (snapshot.stale() or "")
    snapshot = zygote._Snapshot(str(project))
    later(project / "pytest.ini")
    (project / "pytest.ini").write_text("[pytest]\naddopts = -q\n")
    assert "pytest.ini changed" in (snapshot.stale() or "")


def test_a_new_file_in_a_path_directory_outside_the_project_is_stale(imported):
    site, project, _module = imported
    snapshot = zygote._Snapshot(str(project))
    later(site)
    (site / "other.pth").write_text("import os\n")
    assert "a package installed or removed" in (snapshot.stale() or "")


def test_in_the_project_only_a_file_that_would_shadow_an_imported_module_is_stale(imported, monkeypatch):
    _site, project, _module = imported
    # The project is sys.path[0], as for `python -c` in it.
    monkeypatch.syspath_prepend(str(project))
    snapshot = zygote._Snapshot(str(project))
    later(project)
    (project / "notes.txt").write_text("not a module\n")
    (project / "helper_of_the_project.py").write_text("")
    assert snapshot.stale() is None, "a new module nobody imported shadows nothing"
    later(project)
    (project / "zygote_probe_mod.py").write_text("VALUE = 'the project's'\n")
    reason = snapshot.stale() or ""
    assert "would shadow the module zygote_probe_mod" in reason, reason
    (project / "zygote_probe_mod.py").unlink()
    snapshot = zygote._Snapshot(str(project))
    later(project)
    (project / "zygote_probe_mod").mkdir()
    (project / "zygote_probe_mod" / "__init__.py").write_text("")
    assert "would shadow the module zygote_probe_mod" in (snapshot.stale() or "")


def test_modules_of_the_project_are_found_and_its_virtualenv_is_not_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(project))
    importlib.invalidate_caches()
    importlib.import_module("pkg")
    try:
        found = zygote._project_modules(os.path.realpath(project))
        assert any(entry.startswith("pkg (") for entry in found), found
    finally:
        sys.modules.pop("pkg", None)
    # The interpreter's and the virtualenv's files are never the project's,
    # even when the project holds the virtualenv (as this repository holds .venv).
    outer = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    found = zygote._project_modules(outer)
    assert any(entry.startswith(f"{__name__} (") for entry in found), found
    assert not [entry for entry in found if "site-packages" in entry or entry.startswith("stepkernel_worker")], found


def test_a_virtualenv_inside_the_project_is_no_project_directory():
    """Its site-packages changing (a package installed, a .pth file) makes the zygote stale."""
    import site

    outer = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", ".."))
    packages = [os.path.realpath(p) for p in site.getsitepackages()]
    inside = [p for p in packages if zygote._under(p, outer)]
    if not inside:
        pytest.skip(f"this interpreter's virtualenv is not inside {outer}")
    snapshot = zygote._Snapshot(outer)
    assert inside[0] in snapshot.dirs and inside[0] not in snapshot.project_dirs
    before = os.stat(inside[0])
    try:
        os.utime(inside[0], ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
        assert "a package installed or removed" in (snapshot.stale() or "")
    finally:
        os.utime(inside[0], ns=(before.st_atime_ns, before.st_mtime_ns))
