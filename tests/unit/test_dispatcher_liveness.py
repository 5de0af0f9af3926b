"""The pure rule that marks silent nodes down."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.dispatcher.liveness import silent_nodes
from dockyard.v1 import types_pb2 as pb

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=3)
STARTUP = timedelta(seconds=10)


def node(node_id: str, status: int = pb.NODE_STATUS_READY) -> pb.Node:
    return pb.Node(id=node_id, status=status)  # type: ignore[arg-type]


def silent(nodes: list[pb.Node], seen: dict[str, float], at: float) -> list[tuple[str, float]]:
    last_seen = {k: START + timedelta(seconds=v) for k, v in seen.items()}
    found = silent_nodes(nodes, last_seen, START, START + timedelta(seconds=at), GRACE, STARTUP)
    return [(s.node_id, s.seconds) for s in found]


def test_a_node_heard_from_is_down_only_after_the_grace() -> None:
    assert silent([node("a")], {"a": 5.0}, at=8.0) == []
    assert silent([node("a")], {"a": 5.0}, at=8.5) == [("a", 3.5)]


def test_after_a_restart_unheard_nodes_get_the_startup_grace() -> None:
    nodes = [node("a", pb.NODE_STATUS_UNKNOWN)]
    assert silent(nodes, {}, at=9.9) == []
    assert silent(nodes, {}, at=10.5) == [("a", 10.5)]


def test_a_node_that_joined_after_the_start_gets_the_startup_grace_from_its_join() -> None:
    joined = node("j", pb.NODE_STATUS_UNKNOWN)
    joined.created_at.FromDatetime(START + timedelta(seconds=8))
    assert silent([joined], {}, at=17.5) == [], "counted from the start it would be down after 10 s"
    assert silent([joined], {}, at=18.5) == [("j", 10.5)]


def test_nodes_already_down_are_not_reported_again() -> None:
    assert silent([node("a", pb.NODE_STATUS_DOWN)], {"a": 0.0}, at=60.0) == []


def test_a_late_round_judges_nobody_and_a_punctual_one_judges_as_usual() -> None:
    nodes = [node("a"), node("b")]
    last_seen = {"a": START, "b": START + timedelta(seconds=9)}
    now = START + timedelta(seconds=10)
    tolerance = timedelta(seconds=0.5)

    def judged(lag: float) -> list[str]:
        found = silent_nodes(nodes, last_seen, START, now, GRACE, STARTUP, timedelta(seconds=lag), tolerance)
        return [s.node_id for s in found]

    assert judged(lag=2.0) == [], "the controller itself was stalled: its silence, not the node's"
    assert judged(lag=0.5) == ["a"]
    assert judged(lag=0.0) == ["a"]


def test_time_the_watcher_ran_late_after_a_nodes_message_is_not_its_silence() -> None:
    nodes = [node("a"), node("b")]
    last_seen = {"a": START + timedelta(seconds=5), "b": START + timedelta(seconds=5)}
    now = START + timedelta(seconds=8.5)
    # Four rounds since "a" and "b" were heard each woke 0.3 s late: a starved controller, not silent nodes.
    stalls = [(START + timedelta(seconds=t), timedelta(seconds=0.3)) for t in (6.0, 6.8, 7.6, 8.4)]
    assert silent_nodes(nodes, last_seen, START, now, GRACE, STARTUP, stalls=stalls) == []
    # Stalls before a node's last message do not excuse it; a dead node is still marked, only later.
    last_seen["b"] = START + timedelta(seconds=4)
    found = silent_nodes(nodes, last_seen, START, now + timedelta(seconds=0.2), GRACE, STARTUP, stalls=stalls)
    assert [(s.node_id, round(s.seconds, 2)) for s in found] == [("b", 3.5)]


def test_a_malformed_stored_timestamp_reads_as_unset() -> None:
    """What a store written before reports were stamped by the controller may hold: listing it must not break."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from dockyard.timestamps import from_timestamp

    assert from_timestamp(Timestamp(seconds=5, nanos=-1)) is None
    assert from_timestamp(Timestamp(seconds=10**13)) is None
    assert from_timestamp(Timestamp(seconds=5)) == datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC)
