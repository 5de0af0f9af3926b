"""The one time source of every role, the agent's link, worker and observer: replace it to run in virtual time.

`SystemClock` is the real thing. `FakeClock` (also in `agent.testing`, the testing kit) moves only when a test calls
`advance()`, so grace periods, backoff and heartbeats are tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Wall time for records, monotonic time for intervals, and sleeping and deadlines on that same time."""

    def now(self) -> datetime:
        """Returns the current aware UTC time."""
        ...

    def monotonic(self) -> float:
        """Returns seconds on a clock that never goes back; only differences mean anything."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Returns once `seconds` have passed on this clock."""
        ...

    def timeout(self, seconds: float) -> contextlib.AbstractAsyncContextManager[None]:
        """Raises TimeoutError in the body once `seconds` have passed on this clock."""
        ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> datetime:
        """Returns the current aware UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Returns time.monotonic()."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleeps on the event loop."""
        await asyncio.sleep(max(0.0, seconds))

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """asyncio.timeout, never wait_for: on 3.11 wait_for can swallow a cancellation that races the timeout."""
        async with asyncio.timeout(max(0.0, seconds)):
            yield


class FakeClock:
    """Virtual time: sleeps and timeouts fire only when advance() moves the clock past them."""

    def __init__(self, start: datetime | None = None) -> None:
        """Starts at `start` (default 2026-01-01 UTC) and monotonic 0."""
        self._start = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._elapsed = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        """Returns the start time plus the virtual time elapsed."""
        return self._start + timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Returns the virtual seconds elapsed."""
        return self._elapsed

    @property
    def sleepers(self) -> int:
        """How many sleeps and timeouts are waiting for the clock."""
        return sum(1 for _, _, f in self._timers if not f.done())

    def _timer(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._elapsed + max(0.0, seconds), next(self._order), future))
        return future

    async def sleep(self, seconds: float) -> None:
        """Waits until advance() has moved the clock `seconds` on; a zero sleep still yields once."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self._timer(seconds)

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[None]:
        """Cancels the body and raises TimeoutError once advance() passes the deadline."""
        task = asyncio.current_task()
        assert task is not None, "FakeClock.timeout needs a running task"
        timer = self._timer(seconds)
        fired = False
        exited = False

        def fire(_: asyncio.Future[None]) -> None:
            nonlocal fired
            # A done callback runs a loop turn after the timer is set: the body may have left meanwhile.
            if not timer.cancelled() and not exited:
                fired = True
                task.cancel()

        timer.add_done_callback(fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            exited = True
            timer.remove_done_callback(fire)
            if not timer.done():
                timer.cancel()

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Moves virtual time on by `seconds`, firing due timers in order and letting woken tasks run.

        With `step`, time moves in increments of at most `step`, so loops that re-arm a timer each
        round (heartbeats, backoff) run every round they would have run in real time.
        """
        target = self._elapsed + max(0.0, seconds)
        await _settle()
        while True:
            due = self._next_due()
            if step is not None:
                due = min(due, self._elapsed + step) if due is not None else self._elapsed + step
            if due is None or due > target:
                break
            self._elapsed = max(self._elapsed, due)
            self._fire_due()
            await _settle()
        self._elapsed = target
        self._fire_due()
        await _settle()

    def _next_due(self) -> float | None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _fire_due(self) -> None:
        while self._timers and self._timers[0][0] <= self._elapsed:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)


async def _settle(rounds: int = 20) -> None:
    """Lets every task that is ready run until it blocks again (a bounded number of loop turns)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
