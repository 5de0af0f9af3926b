"""Following the store's change feed for ever, the one way every role does it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

from controller.store.base import Action, Event, Kind, Store, WatchExpired
from dockyard.v1 import types_pb2 as pb

__all__ = ["RESYNC", "SLICE_EVENTS", "Resync", "follow", "follow_nodes"]


class Resync:
    """Marks a gap: events were missed, so the follower must re-read whatever state it derives from them."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()

# A follower gets at most this many events before other tasks run: a commit of 10,000 tasks arrives without a
# pause, and handling it whole held the event loop (and every agent session's reads and acks) for a good part
# of a second.
SLICE_EVENTS: Final = 256


async def follow(store: Store, since: int | None = None) -> AsyncIterator[Event | Resync]:
    """Yields every event after `since` (default: the current revision), then live ones, until the store closes.

    A follower that falls so far behind that its events were trimmed gets RESYNC once and continues from
    the revision at that moment; nothing is silently skipped. Other tasks run every SLICE_EVENTS events, also
    within one revision, so a follower must not assume a revision's events arrive without a pause.
    """
    cursor = store.revision if since is None else since
    handed = 0
    while True:
        try:
            async for event in store.watch(cursor):
                cursor = event.revision
                yield event
                handed += 1
                if handed % SLICE_EVENTS == 0:
                    await asyncio.sleep(0)
            return
        except WatchExpired:
            cursor = store.revision
            yield RESYNC


def follow_nodes(nodes: dict[str, pb.Node], event: Event) -> bool:
    """Moves a map of nodes by id past one event; returns whether it was a node's (else the map is untouched)."""
    if event.kind != Kind.NODE:
        return False
    if event.action == Action.DELETE:
        nodes.pop(event.id, None)
    else:
        assert isinstance(event.obj, pb.Node)
        nodes[event.id] = event.obj
    return True
