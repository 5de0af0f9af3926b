"""What an agent's status reports may write, through the group committer into a real store (issue 8).

An agent is trusted with its own tasks' observed state only: the time written is the controller's, a report
on another node's task is refused and handed to on_forged (the dispatcher ends that session), a report on a
task deleted meanwhile is refused quietly, and nothing refused is written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from controller.dispatcher.committer import FORGERY_PROBES, GroupCommitter
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.logs import Throttle
from dockyard.timestamps import from_timestamp, to_timestamp
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def task(task_id: str, node_id: str, state: int = pb.TASK_STATE_ASSIGNED) -> pb.Task:
    result = pb.Task(id=task_id, service_id="svc", slot=1, node_id=node_id, revision=1)
    result.desired_state = pb.DESIRED_STATE_RUNNING
    result.status.state = state  # type: ignore[assignment]
    result.status.timestamp.CopyFrom(to_timestamp(NOW - timedelta(minutes=5)))
    return result


def report(state: int, seconds: int | None = None, nanos: int = 0) -> pb.TaskStatus:
    """A report as the controller parses it off the wire, its timestamp whatever the agent put there."""
    status = pb.TaskStatus(state=state, message="news")  # type: ignore[arg-type]
    if seconds is not None:
        status.timestamp.seconds, status.timestamp.nanos = seconds, nanos
    return pb.TaskStatus.FromString(status.SerializeToString())


@dataclass
class Setup:
    store: SqliteStore
    clock: FakeClock
    committer: GroupCommitter
    forged: list[tuple[str, str, str]] = field(default_factory=list)

    async def stored(self, task_id: str) -> pb.Task:
        found = await self.store.get_task(task_id)
        assert found is not None
        return found


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    """Tasks mine1 and mine2 on n1, theirs on n2, unplaced on no node yet."""
    async with SqliteStore(":memory:") as store:
        clock = FakeClock(NOW)
        forged: list[tuple[str, str, str]] = []
        committer = GroupCommitter(store, clock, Throttle(clock), window=0, on_forged=lambda *args: forged.append(args))
        await store.commit(
            [
                Put(task("mine1", "n1")),
                Put(task("mine2", "n1")),
                Put(task("theirs", "n2", pb.TASK_STATE_RUNNING)),
                Put(task("unplaced", "", pb.TASK_STATE_PENDING)),
            ]
        )
        yield Setup(store, clock, committer, forged)


async def test_a_written_status_carries_the_time_it_arrived(setup: Setup) -> None:
    """Neither the agent's stamp nor the commit's time: when the controller received the report."""
    year_ahead = int((NOW + timedelta(days=365)).timestamp())
    setup.committer.add_statuses("n1", [("mine1", report(pb.TASK_STATE_RUNNING, year_ahead))])
    await setup.clock.advance(2.0)
    assert await setup.committer.flush()
    stored = await setup.stored("mine1")
    assert stored.status.state == pb.TASK_STATE_RUNNING
    assert from_timestamp(stored.status.timestamp) == NOW
    assert from_timestamp(stored.updated_at) == NOW


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(1_700_000_000, -1), (1_700_000_000, 10**9), (2**62, 0), (-(2**62), 0)],
    ids=["nanos-negative", "nanos-too-large", "seconds-past-9999", "seconds-before-year-1"],
)
async def test_a_malformed_timestamp_never_reaches_the_store(setup: Setup, seconds: int, nanos: int) -> None:
    setup.committer.add_statuses("n1", [("mine1", report(pb.TASK_STATE_FAILED, seconds, nanos))])
    assert await setup.committer.flush()
    stored = await setup.stored("mine1")
    assert stored.status.state == pb.TASK_STATE_FAILED
    assert stored.status.timestamp == to_timestamp(NOW)


async def test_a_report_on_another_nodes_task_is_a_forgery_and_writes_nothing(setup: Setup) -> None:
    """The forgery is handed over once for the batch; the node's own report beside it is still written."""
    before = [await setup.stored(t) for t in ("theirs", "unplaced")]
    revision = setup.store.revision
    setup.committer.add_statuses(
        "n1",
        [
            ("theirs", report(pb.TASK_STATE_FAILED)),
            ("unplaced", report(pb.TASK_STATE_RUNNING)),
            ("mine1", report(pb.TASK_STATE_PREPARING)),
        ],
    )
    assert await setup.committer.flush()
    assert setup.forged == [("n1", "theirs", "task is assigned to node n2, not n1")]
    assert [await setup.stored(t) for t in ("theirs", "unplaced")] == before
    assert (await setup.stored("mine1")).status.state == pb.TASK_STATE_PREPARING
    assert setup.store.revision == revision + 1, "one write: the node's own task"


async def test_a_report_on_a_deleted_task_is_refused_quietly(setup: Setup) -> None:
    """An id the store does not know is a task deleted while the report travelled: no forgery, no write."""
    revision = setup.store.revision
    setup.committer.add_statuses("n1", [("gone", report(pb.TASK_STATE_SHUTDOWN))])
    assert await setup.committer.flush()
    assert setup.forged == []
    assert setup.store.revision == revision
    assert await setup.store.get_task("gone") is None


async def test_a_state_only_the_controller_sets_is_refused_without_a_write(setup: Setup) -> None:
    revision = setup.store.revision
    setup.committer.add_statuses(
        "n1", [("mine1", report(pb.TASK_STATE_LOST)), ("mine2", report(pb.TASK_STATE_ORPHANED))]
    )
    assert await setup.committer.flush()
    assert setup.store.revision == revision
    assert setup.forged == [], "the node's own task: refused, but not a forgery"
    assert (await setup.stored("mine1")).status.state == pb.TASK_STATE_ASSIGNED


async def test_a_forgery_handler_that_raises_does_not_stop_the_committer() -> None:
    async with SqliteStore(":memory:") as store:
        clock = FakeClock(NOW)

        def broken(node_id: str, task_id: str, reason: str) -> None:
            raise RuntimeError("session table changed")

        committer = GroupCommitter(store, clock, Throttle(clock), window=0, on_forged=broken)
        await store.commit([Put(task("theirs", "n2")), Put(task("mine", "n1"))])
        committer.add_statuses(
            "n1", [("theirs", report(pb.TASK_STATE_FAILED)), ("mine", report(pb.TASK_STATE_RUNNING))]
        )
        assert await committer.flush()
        mine = await store.get_task("mine")
        assert mine is not None and mine.status.state == pb.TASK_STATE_RUNNING
        assert committer.pending == 0


async def test_past_the_look_ups_a_forged_report_is_still_refused_unread(setup: Setup) -> None:
    """A flood of ids that are not the node's costs FORGERY_PROBES reads; what follows is refused unread."""
    before = await setup.stored("theirs")
    revision = setup.store.revision
    unknown = [(f"gone-{i}", report(pb.TASK_STATE_FAILED)) for i in range(FORGERY_PROBES)]
    setup.committer.add_statuses("n1", [*unknown, ("theirs", report(pb.TASK_STATE_FAILED))])
    assert await setup.committer.flush()
    assert setup.forged == [], "not traced: it was not looked up"
    assert await setup.stored("theirs") == before
    assert setup.store.revision == revision


async def test_control_characters_in_reported_text_never_reach_the_store(setup: Setup) -> None:
    """`dockyard ps` prints what is stored: an agent's escape sequences must not reach an operator's terminal."""
    status = report(pb.TASK_STATE_FAILED)
    status.error = "exited\x1b]0;owned\x07 with code 1\r\nsee the log\tbelow\x9b2J"
    status.container_id = "c1\x1b[2K"
    setup.committer.add_statuses("n1", [("mine1", status)])
    assert await setup.committer.flush()
    stored = await setup.stored("mine1")
    assert stored.status.error == "exited\ufffd]0;owned\ufffd with code 1\ufffd\nsee the log\tbelow\ufffd2J"
    assert stored.status.container_id == "c1\ufffd[2K"
