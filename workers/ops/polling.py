"""Waiting for a process to be ready: the one polling loop `up` and the local stack share."""

from __future__ import annotations

import time
from typing import Callable


class GoneWhileWaiting(Exception):
    """What was being waited on stopped first."""


def poll_until(check: Callable[[], bool], timeout: float, *, interval: float = 0.2, alive: Callable[[], bool] = lambda: True) -> bool:
    """True once `check()` holds, False after `timeout` seconds. An error from `check`
    counts as not ready yet (a server still loading fails in every way); `alive()`
    turning false first raises GoneWhileWaiting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise GoneWhileWaiting
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - not up yet is every kind of error
            pass
        time.sleep(interval)
    return False
