"""The one way tests wait on real time: poll a condition until it holds, within a deadline.

`wait_for` for synchronous tests (subprocesses, the dev cluster), `eventually` for asyncio tests. Tests of
timing itself (grace periods, backoff) use dockyard.clock.FakeClock instead and never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


async def eventually(
    check: Callable[[], Awaitable[T]], within: float = 10.0, what: str = "condition", every: float = 0.02
) -> T:
    """Awaits check() until it returns something truthy and returns that; fails after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(every)
