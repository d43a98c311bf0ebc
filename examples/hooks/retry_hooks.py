"""Retry a flaky network step up to 3 times, with exponential backoff, before pausing."""

from __future__ import annotations

import os
import time

#: Errors worth another try: the network, not the code under test.
RETRYABLE = (ConnectionError, TimeoutError)
MAX_TRIES = int(os.environ.get("STEP_MAX_TRIES", "3"))
#: Seconds before the first retry; doubled at each next one.
BACKOFF_S = float(os.environ.get("STEP_BACKOFF_S", "0.5"))


def stepkernel_step_error(item, step, excinfo):
    """Retry network errors while tries remain; anything else goes to the pause policy."""
    if isinstance(excinfo.value, RETRYABLE) and step.attempt < MAX_TRIES:
        time.sleep(BACKOFF_S * 2 ** (step.attempt - 1))
        return "retry"
    return None
