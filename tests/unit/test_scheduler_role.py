"""The scheduler's I/O shell against a real in-memory store: what it treats as pending and what it writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from controller.scheduler.role import Scheduler
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
NOW = datetime(2025, 1, 1, tzinfo=UTC)


class FixedClock:
    """A clock that always tells NOW."""

    def now(self) -> datetime:
        """Returns NOW."""
        return NOW


def node(node_id: str, hostname: str, memory: int = 1024 * MIB) -> pb.Node:
    """Returns a READY node with one CPU."""
    result = pb.Node(id=node_id, status=pb.NODE_STATUS_READY)
    result.description.hostname = hostname
    result.description.cpus = 1
    result.description.memory_bytes = memory
    return result


def waiting(
    task_id: str,
    node_id: str = "",
    memory: int = 0,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
) -> pb.Task:
    """Returns a PENDING task of its own service, pinned when node_id is set."""
    task = pb.Task(id=task_id, service_id=f"svc-{task_id}", node_id=node_id, desired_state=desired)
    task.status.state = pb.TASK_STATE_PENDING
    task.spec.resources.memory_reservation_bytes = memory
    return task


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    """An open in-memory store."""
    async with SqliteStore(":memory:") as s:
        yield s


async def statuses(store: SqliteStore) -> dict[str, tuple[str, pb.TaskState.ValueType, str]]:
    """Returns each task's node, state and status message."""
    return {t.id: (t.node_id, t.status.state, t.status.message) for t in await store.list_tasks()}


async def test_places_free_and_pinned_tasks_and_explains_the_rest(store: SqliteStore) -> None:
    """Free and pinned pending tasks are placed; a pinned one that does not fit says why, once."""
    await store.commit(
        [
            Put(node("n1", "h1")),
            Put(node("n2", "h2", memory=256 * MIB)),
            Put(waiting("free", memory=512 * MIB)),
            Put(waiting("pinned-fits", node_id="n1")),
            Put(waiting("pinned-big", node_id="n2", memory=512 * MIB)),
            Put(waiting("stopping", desired=pb.DESIRED_STATE_SHUTDOWN)),
        ]
    )
    scheduler = Scheduler(store, FixedClock(), seed=3)
    assert await scheduler.reconcile() is None
    assert await statuses(store) == {
        "free": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-fits": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-big": ("n2", pb.TASK_STATE_PENDING, "no suitable node: node h2: lacks memory (need 512MiB)"),
        "stopping": ("", pb.TASK_STATE_PENDING, ""),
    }
    revision = store.revision
    assert await scheduler.reconcile() is None
    assert store.revision == revision  # the unplaced reason did not change, so nothing was written


class RacingStore(SqliteStore):
    """A store in which someone updates the first node right after the scheduler lists the nodes."""

    async def list_nodes(self) -> list[pb.Node]:
        """Returns the nodes as they were, then writes the first one again, bumping its version."""
        nodes = await super().list_nodes()
        rewritten = pb.Node()
        rewritten.CopyFrom(nodes[0])  # commit stamps the new version on the object it is given
        await self.commit([Put(rewritten)])
        return nodes


async def test_a_node_changed_since_the_snapshot_fails_the_commit() -> None:
    """The commit checks the chosen node's version: a race leaves the pinned task pending and asks for a retry."""
    async with RacingStore(":memory:") as store:
        await store.commit([Put(node("n1", "h1")), Put(waiting("pinned", node_id="n1"))])
        assert await Scheduler(store, FixedClock()).reconcile() == NOW
        assert await statuses(store) == {"pinned": ("n1", pb.TASK_STATE_PENDING, "")}
