"""How `dockyard up` waits for a controller it is starting: polling, since there is no API to watch yet.

Commands that wait on a running cluster (apply, scale, rm, node drain) wait on Watch instead
(dockyard.cli.following).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from dockyard.client import ApiError
from dockyard.clock import Clock, SystemClock

__all__ = ["POLL_SECONDS", "poll_until"]

T = TypeVar("T")

POLL_SECONDS: Final = 0.1


async def poll_until(
    check: Callable[[], Awaitable[T | None]],
    *,
    within: float,
    waiting_for: Callable[[], str],
    every: float = POLL_SECONDS,
    clock: Clock | None = None,
) -> T:
    """Calls check() every `every` seconds until it returns something other than None, and returns that.

    After `within` seconds raises ApiError("timed out after Ns <waiting_for()>"), where waiting_for
    says what is still missing (it may read what the last check saw). An error from check (such as a
    task rejected for good) ends the wait at once.
    """
    clock = clock or SystemClock()
    deadline = clock.monotonic() + within
    while True:
        result = await check()
        if result is not None:
            return result
        left = deadline - clock.monotonic()
        if left <= 0:
            raise ApiError(f"timed out after {within:g}s {waiting_for()}")
        await clock.sleep(min(every, left))
