"""SIGALRM timers stop while a test is paused, and go on from where they were after.

pytest-timeout's ``signal`` method (its default where SIGALRM exists) and
``signal.alarm`` both use the process's ``ITIMER_REAL``: a test paused for a
client would otherwise be killed by its own timeout while someone reads it.
"""

from __future__ import annotations

import contextlib
import functools
import signal
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def alarm_suspended() -> Iterator[None]:
    """Stop ``ITIMER_REAL`` for the block; restart it with the time it had left."""
    setitimer = getattr(signal, "setitimer", None)
    if setitimer is None:  # pragma: no cover - no SIGALRM (Windows)
        yield
        return
    try:
        remaining, interval = setitimer(signal.ITIMER_REAL, 0)
    except (OSError, ValueError):  # pragma: no cover - an interpreter without timers
        yield
        return
    try:
        yield
    finally:
        if remaining > 0 or interval > 0:
            # A timer that was due anyway fires at once after the pause.
            setitimer(signal.ITIMER_REAL, max(remaining, 1e-6), interval)


def suspends_alarm(func: F) -> F:
    """Decorate a pause: SIGALRM timers are stopped while it serves."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with alarm_suspended():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
