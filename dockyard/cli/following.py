"""The one way `apply`, `scale` and `rm` wait for the cluster: on a Watch, never by polling.

The pattern: open the watch first (its first response is the revision R it starts from), then list once, then
merge each response's events into what was listed, deciding on every response. A change after R arrives as an
event even when the listing already showed it; merging by object version makes that harmless: an event whose
revision is not newer than the version held is ignored, and a deleted object is remembered so that an older
put of it does not bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import grpc

from dockyard.client import ApiError, Client
from dockyard.clock import Clock, SystemClock
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

__all__ = ["Mirror", "TimedOut", "wait_until"]

T = TypeVar("T")
_O = TypeVar("_O", pb.Service, pb.Task)

# How many times a wait starts over after its watch fell behind what the controller keeps (OUT_OF_RANGE).
_FELL_BEHIND_TRIES: Final = 5


class TimedOut(ApiError):
    """A wait that ran out of time (its message says what it still waited for)."""


@dataclass
class Mirror:
    """Services and tasks by id as a listing and the watch's later events left them."""

    services: dict[str, pb.Service] = field(default_factory=dict)
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    # id -> the revision that deleted it: a put no newer than that is an echo from before the deletion.
    _gone: dict[str, int] = field(default_factory=dict)

    def load(self, services: Iterable[pb.Service], tasks: Iterable[pb.Task]) -> None:
        """Takes listed objects, keeping whatever the mirror already holds in a newer version."""
        for service in services:
            self._put(self.services, service, service.version)
        for task in tasks:
            self._put(self.tasks, task, task.version)

    def apply(self, events: Iterable[cpb.WatchEvent]) -> None:
        """Merges watch events; one not newer than the version held (or than a deletion) changes nothing."""
        for event in events:
            kind = event.WhichOneof("object")
            if kind == "service":
                self._event(self.services, event.service, event)
            elif kind == "task":
                self._event(self.tasks, event.task, event)

    def _event(self, held: dict[str, _O], obj: _O, event: cpb.WatchEvent) -> None:
        if event.action == cpb.WatchEvent.ACTION_DELETE:
            current = held.get(obj.id)
            if current is None or current.version < event.revision:
                held.pop(obj.id, None)
                self._gone[obj.id] = max(self._gone.get(obj.id, 0), event.revision)
        else:
            self._put(held, obj, event.revision)

    def _put(self, held: dict[str, _O], obj: _O, version: int) -> None:
        current = held.get(obj.id)
        if (current is None or current.version < version) and self._gone.get(obj.id, 0) < version:
            held[obj.id] = obj


async def wait_until(
    client: Client,
    load: Callable[[], Awaitable[tuple[list[pb.Service], list[pb.Task]]]],
    check: Callable[[Mirror], T | None],
    *,
    within: float,
    waiting_for: Callable[[], str],
    kinds: Sequence[int] = (cpb.OBJECT_KIND_SERVICE, cpb.OBJECT_KIND_TASK),
    services: Sequence[str] = (),
    clock: Clock | None = None,
    recheck: float | None = None,
) -> T:
    """Watches, then calls load() once, then returns the first result of check() other than None.

    check runs after the listing and after every watch response, and with `recheck` also every that many
    seconds while nothing arrives (a verdict that depends on time, such as a grace for unplaced tasks).
    After `within` seconds raises TimedOut("timed out after Ns <waiting_for()>"), an ApiError; an error from
    check (such as a rejected task) or from the watch ends the wait at once.
    """
    clock = clock or SystemClock()
    try:
        async with clock.timeout(within):
            for attempt in range(_FELL_BEHIND_TRIES):
                try:
                    return await _watch_and_check(client, load, check, kinds, services, clock, recheck)
                except ApiError as exc:
                    # A large deploy can outrun the controller's kept events while this wait reads slowly:
                    # start over (watch, then list) rather than fail a deploy that is going well.
                    if exc.code != grpc.StatusCode.OUT_OF_RANGE or attempt == _FELL_BEHIND_TRIES - 1:
                        raise
            raise AssertionError("unreachable")
    except TimeoutError:
        raise TimedOut(f"timed out after {within:g}s {waiting_for()}") from None


async def _watch_and_check(
    client: Client,
    load: Callable[[], Awaitable[tuple[list[pb.Service], list[pb.Task]]]],
    check: Callable[[Mirror], T | None],
    kinds: Sequence[int],
    services: Sequence[str],
    clock: Clock,
    recheck: float | None,
) -> T:
    """Opens a watch, lists once, and merges responses until check() returns something other than None."""
    responses = client.watch(kinds=kinds, services=services)
    coming: asyncio.Future[cpb.WatchResponse] | None = None
    try:
        await anext(responses)  # open: every change from here on reaches the mirror
        mirror = Mirror()
        listed_services, listed_tasks = await load()
        mirror.load(listed_services, listed_tasks)
        while (result := check(mirror)) is None:
            coming = coming or asyncio.ensure_future(_next(responses))
            if recheck is not None:
                # A pending read is kept across rechecks: cancelling a generator's step mid-way would end it.
                await _first(coming, clock.sleep(recheck))
            if recheck is None or coming.done():
                response = await coming
                coming = None
                mirror.apply(response.events)
        return result
    finally:
        if coming is not None:
            coming.cancel()
            with contextlib.suppress(asyncio.CancelledError, ApiError):
                await coming
        await responses.aclose()


async def _next(responses: AsyncGenerator[cpb.WatchResponse, None]) -> cpb.WatchResponse:
    return await anext(responses)


async def _first(future: asyncio.Future[cpb.WatchResponse], pause: Awaitable[None]) -> None:
    """Waits until the future is done or the pause is over, whichever comes first."""
    sleeper: asyncio.Future[None] = asyncio.ensure_future(pause)
    try:
        both: list[asyncio.Future[Any]] = [future, sleeper]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sleeper
