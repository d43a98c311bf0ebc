"""SIGALRM timers (pytest-timeout's signal method, signal.alarm) stop while a test is paused."""

from __future__ import annotations

import signal
import time

import pytest
from stepkernel_worker.pause_timers import alarm_suspended, suspends_alarm

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no SIGALRM timers here")


@pytest.fixture
def alarms():
    """A SIGALRM recorder; the timer pytest-timeout set for this test is put back after."""
    fired: list[float] = []
    saved = signal.setitimer(signal.ITIMER_REAL, 0)
    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    yield fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    if saved[0] > 0:
        signal.setitimer(signal.ITIMER_REAL, *saved)


def test_a_timer_does_not_fire_while_suspended_and_fires_after(alarms):
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    with alarm_suspended():
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        time.sleep(0.3)  # far past the timer: it would have fired by now
        assert alarms == []
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    assert 0 < remaining <= 0.05
    deadline = time.monotonic() + 10
    while not alarms and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(alarms) == 1


def test_signal_alarm_is_the_same_timer(alarms):
    signal.alarm(100)
    with alarm_suspended():
        assert signal.alarm(0) == 0  # nothing pending while suspended
    assert 99 <= signal.getitimer(signal.ITIMER_REAL)[0] <= 100


def test_no_timer_stays_no_timer_and_the_interval_is_kept(alarms):
    with alarm_suspended():
        pass
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    signal.setitimer(signal.ITIMER_REAL, 50, 7)
    with alarm_suspended():
        pass
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    assert 49 < remaining <= 50 and interval == 7


def test_the_decorator_suspends_around_the_call_and_returns_its_value(alarms):
    signal.setitimer(signal.ITIMER_REAL, 30)

    @suspends_alarm
    def pause(x):
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        return x * 2

    assert pause(21) == 42
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 29
