"""Watch: the store's change feed as a stream of batched responses that pulls only as fast as the client reads.

A feed task pulls the store's watch into a small bounded queue, turning each event into a WatchEvent when
the filter matches it (else keeping only its revision). The stream takes from that queue and sends what is
available at once in one response, up to WATCH_MAX_EVENTS and WATCH_MAX_BYTES. When the queue is full the
feed stops pulling, so the store's watcher queue fills and falls back to the store's table: a slow client
costs bounded memory here and nothing to the store's writers.

Completeness. A response's revision R promises that every matching change up to R was sent. A store watch
yields all of one revision's events without waiting in between (SqliteStore replays whole revisions and
buffers whole commits), so whenever the feed waits on the store, every revision it has pulled is complete.
A revision larger than one response spans several; each response but the last of it carries the revision
before, so a client resuming from one of them gets that revision's events again and skips those it has
(dockyard.client.Client.watch does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final

from controller.api.bounds import WATCH_FEED_DEPTH, WATCH_MAX_BYTES, WATCH_MAX_EVENTS, WATCH_PROGRESS_SECONDS
from controller.api.paging import framed_size
from controller.store.base import Action, Event, Kind, Store
from dockyard.clock import Clock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["KINDS", "WatchClosed", "WatchFilter", "WatchLimits", "watch_event", "watch_responses"]

KINDS: Final = {
    cpb.OBJECT_KIND_SERVICE: Kind.SERVICE,
    cpb.OBJECT_KIND_NODE: Kind.NODE,
    cpb.OBJECT_KIND_TASK: Kind.TASK,
}
# The store's kinds the public Watch serves; events of the others (networks, volumes, ...) are skipped.
_SERVED: Final = frozenset(KINDS.values())
_ACTIONS: Final = {Action.PUT: cpb.WatchEvent.ACTION_PUT, Action.DELETE: cpb.WatchEvent.ACTION_DELETE}


class WatchClosed(Exception):
    """The store's watch ended (the store closed: the controller is stopping); the client should resume."""


@dataclass(frozen=True)
class WatchFilter:
    """Which events a watch sends: of these kinds (empty: all served), of these services and their tasks (None: all).

    Only the kinds in KINDS are served; the store's others never match. Nodes are never filtered by service.
    Tasks match by service id, so a deleted service's tasks still do.
    """

    kinds: frozenset[Kind] = frozenset()
    service_ids: frozenset[str] | None = None

    def matches(self, event: Event) -> bool:
        """Tells whether the event is sent."""
        if event.kind not in (self.kinds or _SERVED):
            return False
        if self.service_ids is None or event.kind is Kind.NODE:
            return True
        if isinstance(event.obj, pb.Task):
            return event.obj.service_id in self.service_ids
        return event.id in self.service_ids


@dataclass(frozen=True)
class WatchLimits:
    """How large one response may be, and how often a progress response may go out."""

    max_events: int = WATCH_MAX_EVENTS
    max_bytes: int = WATCH_MAX_BYTES
    progress_seconds: float = WATCH_PROGRESS_SECONDS
    feed_depth: int = WATCH_FEED_DEPTH


def watch_event(event: Event) -> cpb.WatchEvent:
    """Returns the wire form of a store event; a task goes without its spec (TASK_VIEW_BASIC)."""
    out = cpb.WatchEvent(revision=event.revision, action=_ACTIONS[event.action])
    obj = event.obj
    if isinstance(obj, pb.Task):
        obj.ClearField("spec")
        out.task.CopyFrom(obj)
    elif isinstance(obj, pb.Service):
        out.service.CopyFrom(obj)
    elif isinstance(obj, pb.Node):
        out.node.CopyFrom(obj)
    else:
        raise ValueError(f"the Watch does not serve {event.kind} events")
    return out


# What the feed queues: a matching event, the revision of one that did not match, the error that ended the
# store's watch, or None when it ended because the store closed.
_Item = cpb.WatchEvent | int | Exception | None


class _Feed:
    """Pulls the store's watch into a bounded queue; `waiting` is set while it waits on the store itself."""

    def __init__(self, store: Store, since: int, keep: WatchFilter, depth: int) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=depth)
        self.waiting = True
        self._store = store
        self._since = since
        self._keep = keep

    async def run(self) -> None:
        """Pulls until the store's watch ends, then queues how it ended."""
        end: _Item = None
        events = self._store.watch(self._since)
        try:
            async for event in events:
                self.waiting = False
                await self.queue.put(watch_event(event) if self._keep.matches(event) else event.revision)
                # Set before the loop asks the store for the next event; another task sees it only once
                # the feed really waits there, since nothing in between gives way to the event loop.
                self.waiting = True
        except Exception as exc:  # handed to the stream, which turns it into the RPC's status
            end = exc
        finally:
            if isinstance(events, AsyncGenerator):
                await events.aclose()  # the store's watcher goes at once, not when collected
        self.waiting = False
        await self.queue.put(end)


class _Responses:
    """The stream's bookkeeping: the response being filled, and what the last one sent promised."""

    def __init__(self, clock: Clock, start: int, limits: WatchLimits) -> None:
        self.clock = clock
        self.limits = limits
        self.sent = start  # the revision of the last response sent
        self.taken = start  # the revision of the last item taken from the feed
        self.sent_at = clock.monotonic()
        self.batch = cpb.WatchResponse()
        self.used = 0

    def send(self, revision: int) -> cpb.WatchResponse:
        """Returns the response to send now, promising `revision`, and starts an empty one."""
        response, self.batch, self.used = self.batch, cpb.WatchResponse(), 0
        response.revision = revision
        self.sent, self.sent_at = revision, self.clock.monotonic()
        return response

    def progress_in(self) -> float | None:
        """Seconds until a progress response is due (0: now); None while nothing is left to report."""
        if self.taken == self.sent:
            return None
        return max(0.0, self.sent_at + self.limits.progress_seconds - self.clock.monotonic())

    def fits(self, cost: int) -> bool:
        """Tells whether an event of `cost` bytes fits in the response being filled."""
        if not self.batch.events:
            return True  # a response always holds at least one event, however large
        return len(self.batch.events) < self.limits.max_events and self.used + cost <= self.limits.max_bytes


async def _next(feed: _Feed, state: _Responses) -> _Item | cpb.WatchResponse:
    """Returns the next item of the feed, or a response to send first (the filled one, or progress)."""
    while True:
        if not feed.queue.empty():
            return feed.queue.get_nowait()
        if not feed.waiting:
            await asyncio.sleep(0)  # the feed holds or is about to pull more: let it queue them
            continue
        # The feed waits on the store: nothing more is available, and every revision taken is complete.
        if state.batch.events:
            return state.send(state.taken)
        due = state.progress_in()
        if due is None:
            return await feed.queue.get()
        if due == 0:
            return state.send(state.taken)
        try:
            async with state.clock.timeout(due):
                return await feed.queue.get()
        except TimeoutError:
            return state.send(state.taken)


async def watch_responses(
    store: Store, clock: Clock, since: int, keep: WatchFilter, limits: WatchLimits | None = None
) -> AsyncGenerator[cpb.WatchResponse, None]:
    """Yields the responses of a watch of the changes after `since` (0: from the store's revision now).

    From now, the first response carries the current revision and no events. Raises what ended the store's
    watch (WatchExpired, StoreDamaged), or WatchClosed when the store closed.
    """
    limits = limits or WatchLimits()
    start = since or store.revision
    feed = _Feed(store, start, keep, limits.feed_depth)
    pulling = asyncio.get_running_loop().create_task(feed.run())
    state = _Responses(clock, start, limits)
    try:
        if since == 0:
            yield state.send(start)
        carry: cpb.WatchEvent | None = None
        while True:
            item, carry = (carry, None) if carry is not None else (await _next(feed, state), None)
            if isinstance(item, cpb.WatchResponse):
                yield item
            elif item is None:
                raise WatchClosed(f"the store's watch ended after revision {state.taken}")
            elif isinstance(item, Exception):
                raise item
            elif isinstance(item, int):
                if not state.batch.events and item - 1 > state.sent and state.progress_in() == 0:
                    # The store keeps moving and nothing matches: say how far it got, without waiting for a lull.
                    yield state.send(item - 1)
                state.taken = item
            else:
                cost = framed_size(item)
                if not state.fits(cost):
                    # Everything before this event's revision is complete; its own revision may not be yet.
                    yield state.send(item.revision - 1)
                    carry = item
                    continue
                state.batch.events.append(item)
                state.used += cost
                state.taken = item.revision
    finally:
        pulling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pulling
