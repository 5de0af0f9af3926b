"""The scheduler's I/O shell against a real in-memory store: what it treats as pending, where it finds each
task's spec, and what it writes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from controller.scheduler.role import Scheduler, needs_pass
from controller.store.base import Action, Delete, Event, Kind, Put
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
    assert await scheduler.reconcile(None) is None
    assert await statuses(store) == {
        "free": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-fits": ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1"),
        "pinned-big": ("n2", pb.TASK_STATE_PENDING, "no suitable node: node h2: lacks memory (need 512MiB)"),
        "stopping": ("", pb.TASK_STATE_PENDING, ""),
    }
    assert store.spec_reads == 0  # every task runs its service's current revision
    revision = store.revision
    assert await scheduler.reconcile(None) is None
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
    assert await scheduler.reconcile(None) is None
    assert (await statuses(store))["new"] == ("n1", pb.TASK_STATE_ASSIGNED, "assigned to h1")
    assert store.spec_reads == 1

    await store.commit([Put(waiting("big", service_id="big", revision=2)), Put(service("big", 512 * MIB, 2, 2))])
    assert await scheduler.reconcile(None) is None
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
    assert await Scheduler(store, FakeClock(NOW)).reconcile(None) is None
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
        assert await Scheduler(store, FakeClock(NOW)).reconcile(None) == NOW
        assert await statuses(store) == {"pinned": ("n1", pb.TASK_STATE_PENDING, "")}


# --- when a pass runs at all -------------------------------------------------------------------------------


def put(obj: pb.Node | pb.Task, version: int = 5) -> Event:
    """An event putting obj at the given version (its store revision)."""
    obj.version = version
    return Event(version, Kind.NODE if isinstance(obj, pb.Node) else Kind.TASK, Action.PUT, obj.id, obj)


def gone(obj: pb.Node | pb.Task) -> Event:
    """An event deleting obj (carrying its last value)."""
    return Event(9, Kind.NODE if isinstance(obj, pb.Node) else Kind.TASK, Action.DELETE, obj.id, obj)


def in_state(task: pb.Task, state: pb.TaskState.ValueType) -> pb.Task:
    """Returns the task in another observed state."""
    task.status.state = state
    return task


DOWN = node("n1", "h1")
DOWN.status = pb.NODE_STATUS_DOWN
BEATING = node("n1", "h1")
BEATING.last_heartbeat.FromDatetime(NOW)
BEATING.address = "10.0.0.1:4000"
RELABELLED = node("n1", "h1")
RELABELLED.labels["zone"] = "a"
BIGGER = node("n1", "h1", memory=2048 * MIB)
DRAINED = node("n1", "h1")
DRAINED.availability = pb.NODE_AVAILABILITY_DRAIN
NODES_BEFORE = {"n1": node("n1", "h1"), "down": DOWN}
JUDGED = {"old": 5}
WAKES: list[tuple[str, list[Event], bool, bool]] = [
    # (rule, events, wakes while some task waits unplaced, wakes when none does)
    ("a new pending task", [put(waiting("new"))], True, True),
    ("a pending task at the version already judged", [put(waiting("old"), 5)], False, False),
    ("a pending task changed since it was judged", [put(waiting("old"), 6)], True, True),
    ("a pending task told to shut down", [put(waiting("x", desired=pb.DESIRED_STATE_SHUTDOWN))], False, False),
    ("a running report", [put(running("r", "n1", "s", 1))], False, False),
    ("a preparing report", [put(in_state(running("r", "n1", "s", 1), pb.TASK_STATE_PREPARING))], False, False),
    ("a starting report", [put(in_state(running("r", "n1", "s", 1), pb.TASK_STATE_STARTING))], False, False),
    ("an assignment", [put(in_state(running("r", "n1", "s", 1), pb.TASK_STATE_ASSIGNED))], False, False),
    ("a task on a node failed", [put(in_state(running("r", "n1", "s", 1), pb.TASK_STATE_FAILED))], True, False),
    ("a holding task deleted", [gone(running("r", "n1", "s", 1))], True, False),
    ("a finished task deleted", [gone(in_state(running("r", "n1", "s", 1), pb.TASK_STATE_SHUTDOWN))], False, False),
    ("a node came back up", [put(node("down", "h9"))], True, False),
    ("a node joined", [put(node("n2", "h2"))], True, False),
    ("a node's labels changed", [put(RELABELLED)], True, False),
    ("a node's resources changed", [put(BIGGER)], True, False),
    ("a node's heartbeat or address alone", [put(BEATING)], False, False),
    ("a node went down", [put(DOWN)], False, False),
    ("a node drained", [put(DRAINED)], False, False),
    ("a node removed", [gone(node("n1", "h1"))], False, False),
]


@pytest.mark.parametrize(("events", "with_unplaced", "without"), [w[1:] for w in WAKES], ids=[w[0] for w in WAKES])
def test_needs_pass_rules(events: list[Event], with_unplaced: bool, without: bool) -> None:
    """Each rule of needs_pass: new pending work always wakes it; room only while something waits unplaced."""
    assert needs_pass(events, NODES_BEFORE, JUDGED, {"old"}) is with_unplaced
    assert needs_pass(events, NODES_BEFORE, JUDGED, set()) is without


class ReadCountingStore(SqliteStore):
    """A store that counts full task listings: one per scheduling pass."""

    task_lists = 0

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Counts, then reads."""
        self.task_lists += 1
        return await super().list_tasks(service_id, node_id)


async def changes_since(store: SqliteStore, revision: int) -> list[Event]:
    """The store's events after revision, as the Reactor would hand them."""
    events: list[Event] = []
    async with contextlib.aclosing(store.watch(revision)) as feed:
        async for event in feed:
            events.append(event)
            if event.revision >= store.revision:
                break
    return events


async def test_status_reports_run_no_pass_and_room_runs_one_only_for_waiting_tasks() -> None:
    """Running reports cost nothing; an unplaced task is retried when a node that can take it joins."""
    async with ReadCountingStore(":memory:") as store:
        await store.commit([Put(node("n1", "h1")), Put(service("small", 512 * MIB)), Put(service("big", 2048 * MIB))])
        scheduler = Scheduler(store, FakeClock(NOW))
        assert await scheduler.reconcile(None) is None
        mark = store.revision
        await store.commit([Put(waiting("s1", service_id="small")), Put(waiting("b1", service_id="big"))])
        store.task_lists = 0
        assert await scheduler.reconcile(await changes_since(store, mark)) is None
        assert store.task_lists == 1
        assert scheduler.unplaced == 1
        statuses_after = await statuses(store)
        assert statuses_after["s1"][:2] == ("n1", pb.TASK_STATE_ASSIGNED)

        mark = store.revision
        placed = await store.get_task("s1")
        assert placed is not None
        for state in (pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING):
            placed.status.state = state
            await store.commit([Put(placed, expect_version=placed.version)])
        store.task_lists = 0
        # Its own "no suitable node" write for b1 is in these events too, and judged already.
        assert await scheduler.reconcile(await changes_since(store, mark - 1)) is None
        assert store.task_lists == 0, "status reports and its own writes run no pass"

        mark = store.revision
        await store.commit([Put(node("n2", "h2", memory=4096 * MIB))])
        assert await scheduler.reconcile(await changes_since(store, mark)) is None
        assert store.task_lists == 1
        assert (await statuses(store))["b1"][:2] == ("n2", pb.TASK_STATE_ASSIGNED)
        assert scheduler.unplaced == 0
