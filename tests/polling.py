"""The one way synchronous tests wait: poll a condition until it holds, within a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], within: float = 60.0, what: str = "condition", every: float = 0.1) -> T:
    """Calls condition until it returns something truthy and returns that; fails after `within` seconds.

    The condition may itself assert an invariant on every call, which turns this into "watch while waiting".
    """
    deadline = time.monotonic() + within
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}; last value: {last!r}")
        time.sleep(every)
