"""The event ring's descriptors stay out of the numbers a test's files get (channel.py)."""

from __future__ import annotations

import mmap
import os
import sys

import pytest

from stepkernel_worker import channel

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")


def _open_fds() -> set[int]:
    # (The listing has listdir's own descriptor, closed when it returns: gone from /proc then.)
    return {n for n in map(int, os.listdir("/proc/self/fd")) if os.path.lexists(f"/proc/self/fd/{n}")}


@pytest.fixture
def memfd():
    fd = os.memfd_create("ring")
    os.ftruncate(fd, 4096)
    high = channel.high_fd(fd)
    yield high
    os.close(high)


def _free_below(limit: int) -> list[int]:
    taken = _open_fds()
    return [n for n in range(limit) if n not in taken]


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
@pytest.mark.parametrize("taken_below", [False, True], ids=["free-below", "taken-below"])
def test_copies_fill_every_free_number_below_the_target_and_close_in_runs(memfd, monkeypatch, proc, taken_below):
    target = channel._high_free_fd()
    assert target is not None and target > 64
    extra = []
    if taken_below:
        # The number just below the target is someone's: the copies stop short of it.
        extra.append(os.dup2(0, target - 1))
    free = set(_free_below(target))
    if not proc:
        real = os.listdir
        monkeypatch.setattr(os, "listdir", lambda p: (_ for _ in ()).throw(OSError("no /proc")) if p == "/proc/self/fd" else real(p))
    fillers = channel._fill_below(memfd, target)
    monkeypatch.undo()
    try:
        assert set(fillers) == free
        assert all(f < target for f in fillers)
        assert target not in _open_fds()
        assert os.dup(memfd) == target, "the target is the lowest free number now"
        os.close(target)
    finally:
        channel._close_all(fillers)
        for fd in extra:
            os.close(fd)
    assert not set(fillers) & _open_fds(), "every copy closed"


def test_the_map_keeps_its_copy_high_and_a_test_gets_the_numbers_plain_python_gives(memfd):
    expected = min(_free_below(1024))
    before = _open_fds()
    ring = channel._map_high(mmap, memfd, 4096)
    try:
        new = _open_fds() - before
        if sys.version_info >= (3, 13):
            assert new == set(), "3.13 maps without a copy"
        else:
            assert len(new) == 1 and min(new) > 900, new
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        assert fd == expected
        ring[:4] = b"ring"
        assert os.pread(memfd, 4, 0) == b"ring"
    finally:
        ring.close()


def test_close_all_closes_runs_and_single_numbers():
    fds = [os.dup(0) for _ in range(6)]
    keep = fds.pop(2)  # a gap: two runs
    channel._close_all(fds)
    open_now = _open_fds()
    assert keep in open_now and not set(fds) & open_now
    os.close(keep)
    channel._close_all([])
