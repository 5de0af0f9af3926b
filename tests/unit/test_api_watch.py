"""Watch's stream on an in-memory store in virtual time: filters, progress at most once a second, batching."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from controller.api.watch import WatchFilter, WatchLimits, watch_responses
from controller.store.base import Action, Event, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

WEB = pb.Service(id="svc-web", name="web")
DB = pb.Service(id="svc-db", name="db")


def task(owner: pb.Service, slot: int) -> pb.Task:
    return pb.Task(id=f"{owner.name}-{slot}", service_id=owner.id, slot=slot)


@pytest.mark.parametrize(
    ("keep", "event", "sent"),
    [
        (WatchFilter(), Event(1, Kind.NODE, Action.PUT, "n", pb.Node(id="n")), True),
        (WatchFilter(frozenset({Kind.TASK})), Event(1, Kind.SERVICE, Action.PUT, WEB.id, WEB), False),
        (WatchFilter(service_ids=frozenset({WEB.id})), Event(1, Kind.SERVICE, Action.PUT, DB.id, DB), False),
        (WatchFilter(service_ids=frozenset({WEB.id})), Event(1, Kind.SERVICE, Action.DELETE, WEB.id, WEB), True),
        (WatchFilter(service_ids=frozenset({WEB.id})), Event(1, Kind.TASK, Action.PUT, "t", task(WEB, 1)), True),
        (WatchFilter(service_ids=frozenset({WEB.id})), Event(1, Kind.TASK, Action.PUT, "t", task(DB, 1)), False),
        (WatchFilter(service_ids=frozenset({WEB.id})), Event(1, Kind.NODE, Action.PUT, "n", pb.Node(id="n")), True),
    ],
)
def test_filter(keep: WatchFilter, event: Event, sent: bool) -> None:
    assert keep.matches(event) is sent


async def next_within(responses: AsyncIterator[cpb.WatchResponse]) -> asyncio.Future[cpb.WatchResponse]:
    """Starts reading the next response and lets the stream run until it waits."""
    pending = asyncio.ensure_future(anext(responses))
    for _ in range(50):
        await asyncio.sleep(0)
    return pending


async def test_progress_goes_out_at_most_once_a_second_while_nothing_matches() -> None:
    clock = FakeClock()
    async with SqliteStore(":memory:") as store:
        await store.commit([Put(WEB)])
        responses = watch_responses(store, clock, 0, WatchFilter(frozenset({Kind.SERVICE})))
        first = await anext(responses)
        assert (first.revision, len(first.events)) == (1, 0)
        pending = await next_within(responses)
        await store.commit([Put(task(WEB, 1))])
        await store.commit([Put(task(WEB, 2))])
        await clock.advance(0.5)
        assert not pending.done()  # moved, but not a second since the last response
        await clock.advance(0.5)
        progress = await pending
        assert (progress.revision, len(progress.events)) == (3, 0)
        pending = await next_within(responses)
        await clock.advance(5)
        assert not pending.done()  # nothing moved: nothing to say
        await store.commit([Put(DB)])
        assert [e.service.name for e in (await pending).events] == ["db"]
        await responses.aclose()


async def test_everything_available_goes_in_one_response_within_its_bounds() -> None:
    clock = FakeClock()
    async with SqliteStore(":memory:") as store:
        since = await store.commit([Put(WEB)])
        for slot in range(7):
            await store.commit([Put(task(WEB, slot))])
        responses = watch_responses(store, clock, since, WatchFilter(), WatchLimits(max_events=3))
        sizes = [len((await anext(responses)).events) for _ in range(3)]
        await responses.aclose()
    assert sizes == [3, 3, 1]


class CountingStore(SqliteStore):
    """Counts the events its watches hand out."""

    pulled = 0

    async def watch(self, since: int) -> AsyncGenerator[Event, None]:
        async for event in super().watch(since):
            self.pulled += 1
            yield event


async def test_a_stream_that_is_not_read_pulls_no_more_than_its_feed_holds() -> None:
    clock = FakeClock()
    async with CountingStore(":memory:", keep_events=100_000) as store:
        since = await store.commit([Put(WEB)])
        limits = WatchLimits(max_events=50, feed_depth=20)
        responses = watch_responses(store, clock, since, WatchFilter(), limits)
        first = await next_within(responses)
        for batch in range(10):
            await store.commit([Put(task(WEB, batch * 100 + slot)) for slot in range(100)])
        for _ in range(100):
            await asyncio.sleep(0)
        # One response filled (50) and waiting to be read, the event that did not fit it, the feed full (20),
        # and one event in the feed's hands waiting for room.
        assert store.pulled == 50 + 1 + 20 + 1
        seen = len((await first).events)
        while seen < 1000:
            seen += len((await anext(responses)).events)
        await responses.aclose()
    assert (seen, store.pulled) == (1000, 1000)
