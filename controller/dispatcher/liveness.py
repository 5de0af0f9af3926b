"""Which nodes have been silent too long: pure, given the time and how late the watcher looked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dockyard.timestamps import from_timestamp
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
    lag: timedelta = timedelta(0),
    lag_tolerance: timedelta = timedelta(0),
    stalls: Sequence[tuple[datetime, timedelta]] = (),
) -> list[Silence]:
    """Returns the nodes not yet down whose silence exceeds their grace; none when the watcher looked late.

    `last_seen` holds when each node's latest message arrived. A node heard from since the controller started
    gets grace; one never heard from (the controller restarted) is measured from the start with the longer
    startup grace, so agents have time to re-dial.

    `lag` is how much later than planned the watcher looked. More than `lag_tolerance` means the controller's
    own event loop was stalled: messages that arrived meanwhile may not be read yet, so a silence measured now
    may be the controller's, not the node's. Nobody is judged on such a round; the next one, after reads had
    time to drain, decides.

    `stalls` lists the watcher's recent rounds as (when it looked, how late). Time the controller spent late
    after a node's last message does not count as that node's silence: a controller starved of CPU reads its
    streams late by about as much as its watcher wakes late, and a heartbeat waiting unread in a stream is not
    silence. A busy controller therefore marks dead nodes down later, never live ones early.
    """
    if lag > lag_tolerance:
        return []
    found = []
    for node in nodes:
        if node.status == pb.NODE_STATUS_DOWN:
            continue
        seen = last_seen.get(node.id)
        allowed = grace if seen is not None else startup_grace
        # A node never heard from is silent since the controller started, or since it joined if that was later:
        # a host that joins during the startup window gets the whole startup grace from its join.
        joined = from_timestamp(node.created_at) if node.HasField("created_at") else None
        since = seen or max(started, joined or started)
        silence = now - since - sum((late for at, late in stalls if at > since), timedelta(0))
        if silence > allowed:
            found.append(Silence(node.id, silence.total_seconds()))
    return found
