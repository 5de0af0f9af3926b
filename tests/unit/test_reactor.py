"""The Reactor hands each pass what changed since the last one, coalesced, and everything at start, after a
failure's backoff, and on the periodic full pass; in virtual time against a real in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from controller.reactor import FULL_PASS_SECONDS, Changes, Reactor
from controller.store.base import Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import types_pb2 as pb
from tests.polling import eventually

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
Seen = list[tuple[str, int]] | None


class Role:
    """A fake role: records what each pass was handed; may hold a pass open, raise, or ask for a wake-up."""

    def __init__(self) -> None:
        self.calls: list[Seen] = []
        self.gate: asyncio.Event | None = None
        self.raise_on: set[int] = set()
        self.wake_at: datetime | None = None

    async def reconcile(self, changes: Changes | None) -> datetime | None:
        self.calls.append(None if changes is None else [(e.id, e.revision) for e in changes])
        if self.gate is not None:
            await self.gate.wait()
        if len(self.calls) in self.raise_on:
            raise RuntimeError("reconcile bug")
        return self.wake_at

    async def has(self, count: int) -> bool:
        return len(self.calls) >= count


@pytest.fixture
async def running() -> AsyncIterator[tuple[SqliteStore, FakeClock, Role, Reactor]]:
    async with SqliteStore(":memory:") as store:
        clock, role = FakeClock(NOW), Role()
        reactor = Reactor("test", store, role.reconcile, (Kind.NODE,), clock)
        task = asyncio.create_task(reactor.run())
        await eventually(lambda: role.has(1), what="the first pass")
        try:
            yield store, clock, role, reactor
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def waiting(reactor: Reactor, count: int) -> None:
    async def check() -> bool:
        return reactor.waiting == count

    await eventually(check, what=f"{count} changed objects queued")


async def test_passes_get_the_newest_event_per_object_and_what_came_during_a_pass(
    running: tuple[SqliteStore, FakeClock, Role, Reactor],
) -> None:
    store, _, role, reactor = running
    assert role.calls == [None], "the first pass reads everything"
    role.gate = asyncio.Event()
    await store.commit([Put(pb.Node(id="a"))])
    await eventually(lambda: role.has(2), what="a pass for a")
    # The pass is held open: these arrive during it, and n1's two changes become one.
    await store.commit([Put(pb.Node(id="b"))])
    await store.commit([Put(pb.Task(id="t", service_id="s"))])  # not a kind this role follows
    await store.commit([Put(pb.Node(id="a"))])
    await waiting(reactor, 2)
    role.gate.set()
    await eventually(lambda: role.has(3), what="the next pass")
    assert role.calls[1:] == [[("a", 1)], [("b", 2), ("a", 4)]]


async def test_a_failed_pass_gets_its_changes_again_after_its_backoff(
    running: tuple[SqliteStore, FakeClock, Role, Reactor],
) -> None:
    store, clock, role, reactor = running
    role.raise_on = {2}
    await store.commit([Put(pb.Node(id="a"))])
    await eventually(lambda: role.has(2), what="the failing pass")
    await store.commit([Put(pb.Node(id="b"))])
    await waiting(reactor, 2)
    await asyncio.sleep(0.05)
    assert len(role.calls) == 2, "news during the backoff does not cut it short"
    await clock.advance(0.1)  # the first retry waits 0.05 to 0.1 s
    await eventually(lambda: role.has(3), what="the retry")
    assert role.calls[2] == [("a", 1), ("b", 2)]


async def test_a_timer_wakes_a_pass_with_no_changes_and_everything_is_reread_periodically(
    running: tuple[SqliteStore, FakeClock, Role, Reactor],
) -> None:
    store, clock, role, _ = running
    role.wake_at = NOW + timedelta(seconds=5)
    await store.commit([Put(pb.Node(id="a"))])
    await eventually(lambda: role.has(2), what="a pass")
    role.wake_at = None
    await clock.advance(5)
    await eventually(lambda: role.has(3), what="the timer's pass")
    assert role.calls[2] == []
    await clock.advance(FULL_PASS_SECONDS - 5)
    await eventually(lambda: role.has(4), what="the full pass")
    assert role.calls[3] is None
