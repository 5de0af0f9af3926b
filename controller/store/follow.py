"""Following the store's change feed for ever, the one way every role does it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from controller.store.base import Action, Event, Kind, Store, WatchExpired
from dockyard.v1 import types_pb2 as pb

__all__ = ["RESYNC", "Resync", "follow", "follow_nodes"]


class Resync:
    """Marks a gap: events were missed, so the follower must re-read whatever state it derives from them."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC: Final = Resync()


async def follow(store: Store, since: int | None = None) -> AsyncIterator[Event | Resync]:
    """Yields every event after `since` (default: the current revision), then live ones, until the store closes.

    A follower that falls so far behind that its events were trimmed gets RESYNC once and continues from
    the revision at that moment; nothing is silently skipped.
    """
    cursor = store.revision if since is None else since
    while True:
        try:
            async for event in store.watch(cursor):
                cursor = event.revision
                yield event
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
