"""Which nodes have been silent too long: pure, given the time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True)
class Silence:
    """A node to mark down and for how long it was silent."""

    node_id: str
    seconds: float


def silent_nodes(
    nodes: Iterable[pb.Node],
    last_seen: Mapping[str, datetime],
    started: datetime,
    now: datetime,
    grace: timedelta,
    startup_grace: timedelta,
) -> list[Silence]:
    """Returns the nodes not yet down whose silence exceeds their grace.

    A node heard from since the controller started gets grace; one never heard from (the controller
    restarted) is measured from the start with the longer startup grace, so agents have time to re-dial.
    """
    found = []
    for node in nodes:
        if node.status == pb.NODE_STATUS_DOWN:
            continue
        seen = last_seen.get(node.id)
        allowed = grace if seen is not None else startup_grace
        silence = now - (seen or started)
        if silence > allowed:
            found.append(Silence(node.id, silence.total_seconds()))
    return found
