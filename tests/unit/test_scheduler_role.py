"""The scheduler's I/O shell against a real in-memory store: what it treats as pending, where it finds each
task's spec, and what it writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from controller.scheduler.role import Scheduler
from controller.store.base import Delete, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import types_pb2 as pb

MIB = 1 << 20
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def node(node_id: str, hostname: str, memory: int = 1024 * MIB) -> pb.Node:
    """Returns a READY node with one CPU."""
    result = pb.Node(id=node_id, status=pb.NODE_STATUS_READY)
    result.description.hostname = hostname
    result.description.cpus = 1
    result.description.memory_bytes = memory
    return result


def service(service_id: str, memory: int = 0, revision: int = 1, spec_revision: int = 1) -> pb.Service:
    """Returns a service whose spec reserves `memory`; spec_revision is where its spec last changed."""
    result = pb.Service(id=service_id, name=service_id, revision=revision, spec_revision=spec_revision)
    result.spec.name = service_id
    result.spec.resources.memory_reservation_bytes = memory
    return result


def waiting(
    task_id: str,
    node_id: str = "",
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    *,
    service_id: str = "",
    revision: int = 1,
) -> pb.Task:
    """Returns a PENDING task without a spec (of service svc-<task id> unless named), pinned when node_id is set."""
    task = pb.Task(
        id=task_id,
        service_id=service_id or f"svc-{task_id}",
        revision=revision,
        node_id=node_id,
        desired_state=desired,
    )
    task.status.state = pb.TASK_STATE_PENDING
    return task


def running(task_id: str, node_id: str, service_id: str, revision: int) -> pb.Task:
    """Returns a RUNNING task without a spec on the node."""
    task = pb.Task(id=task_id, service_id=service_id, revision=revision, node_id=node_id)
    task.status.state = pb.TASK_STATE_RUNNING
    return task


class CountingStore(SqliteStore):
    """A store that counts the reads of past specs."""

    spec_reads = 0

    async def get_service_spec(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Counts, then reads."""
        self.spec_reads += 1
        return await super().get_service_spec(service_id, revision)


@pytest.fixture
async def store() -> AsyncIterator[CountingStore]:
    """An open in-memory store."""
    async with CountingStore(":memory:") as s:
        yield s


async def statuses(store: SqliteStore) -> dict[str, tuple[str, pb.TaskState.ValueType, str]]:
    """Returns each task's node, state and status message."""
    return {t.id: (t.node_id, t.status.state, t.status.message) for t in await store.list_tasks()}


async def test_places_free_and_pinned_tasks_and_explains_the_rest(store: CountingStore) -> None:
    """Free and pinned pending tasks are placed; a pinned one that does not fit says why, once."""
    await store.commit(
        [
            Put(node("n1", "h1")),
            Put(node("n2", "h2", memory=256 * MIB)),
            Put(service("svc-free", memory=512 * MIB)),
            Put(service("svc-pinned-fits")),
            Put(service("svc-pinned-big", memory=512 * MIB)),
            Put(service("svc-stopping")),
            Put(waiting("free")),
            Put(waiting("pinned-fits", node_id="n1")),
            Put(waiting("pinned-big", node_id="n2")),
            Put(waiting("stopping", desired=pb.DESIRED_STATE_SHUTDOWN)),
        ]
    )
    scheduler = Scheduler(store, FakeClock(NOW), seed=3)
    assert await scheduler.reconcile() is None
    assert await statuses(store) == {
        "free": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-fits": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-big": ("n2", pb.TASK_STATE_PENDING, "no suitable node: node h2: lacks memory (need 512MiB)"),
        "stopping": ("", pb.TASK_STATE_PENDING, ""),
    }
    assert store.spec_reads == 0  # every task runs its service's current revision
    revision = store.revision
    assert await scheduler.reconcile() is None
    assert store.revision == revision  # the unplaced reason did not change, so nothing was written


async def test_each_task_is_judged_by_the_spec_of_its_own_revision(store: CountingStore) -> None:
    """An older revision's spec is read from the history once; a scale (same spec_revision) needs no read."""
    current = service("web", memory=0, revision=4, spec_revision=3)
    await store.commit(
        [
            Put(node("n1", "h1")),
            Put(service("web", memory=768 * MIB, revision=1, spec_revision=1)),  # history: revision 1
            Put(current),
            Put(running("old", "n1", "web", revision=1)),  # holds 768MiB by its own revision's spec
            Put(running("scaled", "n1", "web", revision=3)),  # spec_revision 3: the current spec, no read
            Put(waiting("new", service_id="web", revision=4)),
        ]
    )
    scheduler = Scheduler(store, FakeClock(NOW))
    assert await scheduler.reconcile() is None
    assert (await statuses(store))["new"] == ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1")
    assert store.spec_reads == 1

    await store.commit([Put(waiting("big", service_id="big", revision=2)), Put(service("big", 512 * MIB, 2, 2))])
    assert await scheduler.reconcile() is None
    assert (await statuses(store))["big"] == (
        "",
        pb.TASK_STATE_PENDING,
        "no suitable node: 1 node: 1 lacks memory (need 512MiB)",  # 768MiB held by "old", 256MiB free
    )
    assert store.spec_reads == 1  # revision 1 of web stays cached for the scheduler's lifetime


async def test_a_task_whose_service_was_deleted_says_so(store: CountingStore) -> None:
    """The spec is gone with the service's history: the task stays pending and its message says why."""
    await store.commit([Put(node("n1", "h1")), Put(service("svc-orphan")), Put(waiting("orphan"))])
    await store.commit([Delete(Kind.SERVICE, "svc-orphan")])
    assert await Scheduler(store, FakeClock(NOW)).reconcile() is None
    assert await statuses(store) == {
        "orphan": (
            "",
            pb.TASK_STATE_PENDING,
            "no suitable node: the spec of its service at revision 1 is gone (was the service deleted?)",
        )
    }


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
        await store.commit([Put(node("n1", "h1")), Put(service("svc-pinned")), Put(waiting("pinned", node_id="n1"))])
        assert await Scheduler(store, FakeClock(NOW)).reconcile() == NOW
        assert await statuses(store) == {"pinned": ("n1", pb.TASK_STATE_PENDING, "")}
