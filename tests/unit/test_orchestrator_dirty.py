"""The orchestrator reconciles only what changed: the dirty-set rules (table tests, one per rule), and the role
against a real in-memory store, counting which services each pass reconciles."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.orchestrator.dirty import dirty_from
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.reconciler import reconcile_service, waits_for_running
from controller.orchestrator.role import Orchestrator
from controller.store.base import Action, Event, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def node(node_id: str, status: int = pb.NODE_STATUS_READY, availability: int = pb.NODE_AVAILABILITY_ACTIVE) -> pb.Node:
    result = pb.Node(id=node_id, status=status, availability=availability)  # type: ignore[arg-type]
    result.description.hostname = f"host-{node_id}"
    return result


def service(
    service_id: str, replicas: int = 1, *, mode: int = pb.SERVICE_MODE_REPLICATED, **restart: object
) -> pb.Service:
    result = pb.Service(id=service_id, name=service_id, revision=1, spec_revision=1)
    result.spec.name = service_id
    result.spec.image = "img:1"
    result.spec.replicas = replicas
    result.spec.mode = mode  # type: ignore[assignment]
    result.spec.restart.CopyFrom(pb.RestartPolicy(**restart))  # type: ignore[arg-type]
    return result


def task(service_id: str, state: int, node_id: str = "n1", task_id: str = "t") -> pb.Task:
    result = pb.Task(id=task_id, service_id=service_id, slot=1, node_id=node_id, revision=1)
    result.desired_state = pb.DESIRED_STATE_RUNNING
    result.status.state = state  # type: ignore[assignment]
    return result


def put(obj: pb.Service | pb.Node | pb.Task, revision: int = 1) -> Event:
    kind = Kind.SERVICE if isinstance(obj, pb.Service) else Kind.NODE if isinstance(obj, pb.Node) else Kind.TASK
    return Event(revision, kind, Action.PUT, obj.id, obj)


def delete(obj: pb.Service | pb.Node | pb.Task, revision: int = 1) -> Event:
    kind = Kind.SERVICE if isinstance(obj, pb.Service) else Kind.NODE if isinstance(obj, pb.Node) else Kind.TASK
    return Event(revision, kind, Action.DELETE, obj.id, obj)


# --- the rules, one row each ----------------------------------------------------------------------------

BEFORE = {"n1": node("n1"), "n2": node("n2")}
HEARTBEAT = node("n1")
HEARTBEAT.last_heartbeat.FromDatetime(NOW)
HEARTBEAT.address = "10.0.0.1:4000"
LABELLED = node("n1")
LABELLED.labels["zone"] = "a"
AGENT_LABELLED = node("n1")
AGENT_LABELLED.description.labels["disk"] = "ssd"

RULES: list[tuple[str, list[Event], set[str], set[str]]] = [
    ("a service put dirties it", [put(service("s"))], {"s"}, set()),
    ("a service delete dirties it", [delete(service("s"))], {"s"}, set()),
    ("a task delete dirties its service", [delete(task("s", pb.TASK_STATE_SHUTDOWN))], {"s"}, set()),
    ("a failed task dirties its service", [put(task("s", pb.TASK_STATE_FAILED))], {"s"}, set()),
    ("a completed task dirties its service", [put(task("s", pb.TASK_STATE_COMPLETE))], {"s"}, set()),
    ("a rejected task dirties its service", [put(task("s", pb.TASK_STATE_REJECTED))], {"s"}, set()),
    ("a task settled shut down dirties its service", [put(task("s", pb.TASK_STATE_SHUTDOWN))], {"s"}, set()),
    ("a running task of a settled service: nothing", [put(task("s", pb.TASK_STATE_RUNNING))], set(), set()),
    ("a running task of a waiting service dirties it", [put(task("w", pb.TASK_STATE_RUNNING))], {"w"}, set()),
    ("a starting task, even of a waiting service: nothing", [put(task("w", pb.TASK_STATE_STARTING))], set(), set()),
    ("a new pending task: nothing", [put(task("s", pb.TASK_STATE_PENDING, node_id=""))], set(), set()),
    ("an assigned task: nothing", [put(task("s", pb.TASK_STATE_ASSIGNED))], set(), set()),
    ("a preparing task: nothing", [put(task("s", pb.TASK_STATE_PREPARING))], set(), set()),
    ("a node down: its node, and every global service", [put(node("n1", pb.NODE_STATUS_DOWN))], {"g"}, {"n1"}),
    ("a node drained", [put(node("n1", availability=pb.NODE_AVAILABILITY_DRAIN))], {"g"}, {"n1"}),
    ("a node paused", [put(node("n1", availability=pb.NODE_AVAILABILITY_PAUSE))], {"g"}, {"n1"}),
    ("a node removed", [delete(node("n1"))], {"g"}, {"n1"}),
    ("a node added", [put(node("n3"))], {"g"}, {"n3"}),
    ("a node's operator labels changed", [put(LABELLED)], {"g"}, {"n1"}),
    ("a node's agent labels changed", [put(AGENT_LABELLED)], {"g"}, {"n1"}),
    ("a node's heartbeat or address alone: nothing", [put(HEARTBEAT)], set(), set()),
    (
        "a node down and up again in one batch is still a change to look at",
        [put(node("n1", pb.NODE_STATUS_DOWN), 1), put(node("n1"), 2)],
        {"g"},
        {"n1"},
    ),
]


@pytest.mark.parametrize(("events", "services", "nodes"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_dirty_rules(events: list[Event], services: set[str], nodes: set[str]) -> None:
    dirty = dirty_from(events, BEFORE, waiting={"w"}, global_services={"g"})
    assert (dirty.services, dirty.nodes) == (services, nodes)


def test_a_dependency_changing_dirties_the_services_holding_tasks_for_it() -> None:
    db_task = task("db", pb.TASK_STATE_RUNNING)
    db_task.service_name = "db"
    db = service("db")
    held_by = {"db": ["web"]}
    for events in ([put(db_task)], [delete(db_task)], [put(db)], [delete(db)]):
        dirty = dirty_from(events, BEFORE, waiting=set(), global_services=set(), held_by=held_by)
        assert "web" in dirty.services, events
    other = task("api", pb.TASK_STATE_RUNNING)
    other.service_name = "api"
    assert dirty_from([put(other)], BEFORE, waiting=set(), global_services=set(), held_by=held_by).services == set()


def test_waits_for_running_during_a_rolling_update_and_a_drain_only() -> None:
    svc = service("s", 2)
    facts = NodeFacts.of([node("n1"), node("d", availability=pb.NODE_AVAILABILITY_DRAIN)])
    settled = [task("s", pb.TASK_STATE_RUNNING, task_id="a"), task("s", pb.TASK_STATE_STARTING, task_id="b")]
    assert not waits_for_running(svc, settled, facts)
    assert waits_for_running(svc, [task("s", pb.TASK_STATE_RUNNING, node_id="d")], facts), "start-first drain"
    updated = service("s", 2)
    updated.revision = updated.spec_revision = 2
    assert waits_for_running(updated, settled, facts), "the next slot is updated once the changed one runs"
    stopping = task("s", pb.TASK_STATE_RUNNING, task_id="a")
    stopping.desired_state = pb.DESIRED_STATE_SHUTDOWN
    assert not waits_for_running(updated, [stopping], facts), "a task already told to stop waits for nothing"
    glob = service("g", mode=pb.SERVICE_MODE_GLOBAL)
    assert not waits_for_running(glob, [task("g", pb.TASK_STATE_RUNNING, node_id="d")], facts)
    assert not waits_for_running(None, settled, facts)


# --- the role against a store -----------------------------------------------------------------------------


class Recording:
    """The pure reconciler, recording which service each call was for, raising for those in `fail`."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.fail: set[str] = set()

    def __call__(
        self,
        svc: pb.Service | None,
        tasks: Sequence[pb.Task],
        nodes: NodeFacts,
        now: datetime,
        new_id: object,
        **extras: Any,
    ) -> Plan:
        service_id = svc.id if svc is not None else tasks[0].service_id
        self.seen.append(service_id)
        if service_id in self.fail:
            raise ValueError("Timestamp out of range")  # what a malformed stored timestamp raised (issue 8)
        return reconcile_service(svc, tasks, nodes, now, new_id, **extras)  # type: ignore[arg-type]

    def take(self) -> list[str]:
        """Returns the services reconciled since the last take, sorted."""
        seen, self.seen = sorted(self.seen), []
        return seen


class Harness:
    """A store, a FakeClock, and an orchestrator with a recording reconciler, fed the store's events by hand."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.clock = FakeClock(NOW)
        self.recording = Recording()
        counter = itertools.count(1)
        self.orchestrator = Orchestrator(store, self.clock, lambda: f"new{next(counter)}", self.recording)
        self.seen_revision = 0
        # Followed in the background, as the Reactor does: a commit's events all arrive in one step, so a
        # revision's events are never cut in two. The watch (and this task) ends when the store closes.
        self.events: list[Event] = []
        self.follower = asyncio.create_task(self._follow(store.revision))

    async def _follow(self, since: int) -> None:
        async for event in self.store.watch(since):
            self.events.append(event)

    async def full(self) -> datetime | None:
        """Runs a pass that reads everything and forgets the events so far."""
        self.seen_revision = self.store.revision
        return await self.orchestrator.reconcile(None)

    async def step(self) -> datetime | None:
        """Hands the orchestrator the events since the last pass, as the Reactor would."""
        for _ in range(1000):
            if self.store.revision == self.seen_revision or (
                self.events and self.events[-1].revision == self.store.revision
            ):
                break
            await asyncio.sleep(0)  # the follower takes a commit's events in one step once it runs
        else:
            raise AssertionError("the feed fell behind")
        events = [e for e in self.events if e.revision > self.seen_revision]
        self.events.clear()
        self.seen_revision = self.store.revision
        return await self.orchestrator.reconcile(events)

    async def tasks(self, service_id: str) -> list[pb.Task]:
        return await self.store.list_tasks(service_id=service_id)

    async def place(self, placements: dict[str, list[str]], state: int = pb.TASK_STATE_RUNNING) -> None:
        """Puts each service's tasks, slot by slot, on the given nodes in the given state, as scheduler and agent."""
        ops: list[Put] = []
        for service_id, nodes in placements.items():
            for t, node_id in zip(await self.tasks(service_id), nodes, strict=True):
                t.node_id = node_id
                t.status.state = state  # type: ignore[assignment]
                t.status.timestamp.FromDatetime(self.clock.now())
                ops.append(Put(t, expect_version=t.version))
        await self.store.commit(ops)

    async def report(self, task_: pb.Task, state: int) -> None:
        """Writes an agent's status report for one task."""
        task_.status.state = state  # type: ignore[assignment]
        task_.status.timestamp.FromDatetime(self.clock.now())
        await self.store.commit([Put(task_, expect_version=task_.version)])


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """Three nodes; a on n1 (2 tasks), b on n2, c on n1 and n3; all running."""
    async with SqliteStore(":memory:") as store:
        h = Harness(store)
        restart = {"condition": pb.RestartPolicy.CONDITION_ANY, "delay": duration(0)}
        await store.commit(
            [
                *(Put(node(n)) for n in ("n1", "n2", "n3")),
                Put(service("a", 2, **restart)),
                Put(service("b", 1, **restart)),
                Put(service("c", 2, **restart)),
            ]
        )
        await h.full()
        await h.place({"a": ["n1", "n1"], "b": ["n2"], "c": ["n1", "n3"]}, pb.TASK_STATE_STARTING)
        await h.step()
        h.recording.take()
        yield h


async def test_status_reports_below_terminal_reconcile_nothing(harness: Harness) -> None:
    """Running (of a settled service), preparing and starting reports: no service is even read."""
    [first, second] = await harness.tasks("a")
    await harness.report(first, pb.TASK_STATE_RUNNING)
    assert await harness.step() is None
    await harness.report(second, pb.TASK_STATE_RUNNING)
    await harness.step()
    assert harness.recording.take() == []


async def test_a_failed_task_reconciles_its_service_only_and_is_replaced(harness: Harness) -> None:
    [b1] = await harness.tasks("b")
    await harness.report(b1, pb.TASK_STATE_FAILED)
    await harness.step()
    assert harness.recording.take() == ["b"]
    states = sorted(t.status.state for t in await harness.tasks("b"))
    assert states == [pb.TASK_STATE_PENDING, pb.TASK_STATE_FAILED]


async def test_a_node_down_reconciles_exactly_the_services_with_tasks_on_it(harness: Harness) -> None:
    await harness.store.commit([Put(node("n1", pb.NODE_STATUS_DOWN))])
    await harness.step()
    assert harness.recording.take() == ["a", "c"]
    lost = [t for s in ("a", "b", "c") for t in await harness.tasks(s) if t.status.state == pb.TASK_STATE_LOST]
    assert sorted((t.service_id, t.node_id) for t in lost) == [("a", "n1"), ("a", "n1"), ("c", "n1")]


async def test_a_heartbeat_only_node_write_reconciles_nothing(harness: Harness) -> None:
    n1 = await harness.store.get_node("n1")
    assert n1 is not None
    n1.last_heartbeat.FromDatetime(NOW + timedelta(seconds=1))
    await harness.store.commit([Put(n1)])
    await harness.step()
    assert harness.recording.take() == []


async def test_a_node_added_reconciles_global_services_only(harness: Harness) -> None:
    await harness.store.commit([Put(service("g", mode=pb.SERVICE_MODE_GLOBAL))])
    await harness.step()
    assert harness.recording.take() == ["g"]
    await harness.store.commit([Put(node("n4"))])
    await harness.step()
    assert harness.recording.take() == ["g"]
    assert sorted(t.node_id for t in await harness.tasks("g")) == ["n1", "n2", "n3", "n4"]


async def test_a_rolling_update_advances_when_the_changed_slot_runs(harness: Harness) -> None:
    """A running report matters while the service waits for one: the update moves to the next slot."""
    await harness.place({"a": ["n1", "n1"]})
    await harness.step()
    updated = await harness.store.get_service("a")
    assert updated is not None
    updated.spec.image = "img:2"
    updated.revision = updated.spec_revision = 2
    await harness.store.commit([Put(updated)])
    await harness.step()
    [stopping] = [t for t in await harness.tasks("a") if t.desired_state == pb.DESIRED_STATE_SHUTDOWN]
    await harness.report(stopping, pb.TASK_STATE_SHUTDOWN)
    await harness.step()
    [new] = [t for t in await harness.tasks("a") if t.revision == 2]
    harness.recording.take()
    new.node_id = "n2"
    await harness.report(new, pb.TASK_STATE_RUNNING)
    await harness.step()
    assert harness.recording.take() == ["a"]
    old = [t for t in await harness.tasks("a") if t.revision == 1 and t.slot != new.slot]
    assert [t.desired_state for t in old] == [pb.DESIRED_STATE_SHUTDOWN], "the second slot's update started"


async def test_a_hundred_nodes_lost_at_once_are_handled_in_one_pass() -> None:
    async with SqliteStore(":memory:") as store:
        h = Harness(store)
        names = [f"n{i:03}" for i in range(200)]
        await store.commit([*(Put(node(n)) for n in names), Put(service("web", 400)), Put(service("api", 200))])
        await h.full()
        await h.place({"web": [n for n in names for _ in range(2)], "api": names})
        await h.step()
        h.recording.take()
        await store.commit([Put(node(n, pb.NODE_STATUS_DOWN)) for n in names[:100]])
        await h.step()
        assert h.recording.take() == ["api", "web"], "one pass, each service once"
        tasks = [*await h.tasks("web"), *await h.tasks("api")]
        lost = [t for t in tasks if t.status.state == pb.TASK_STATE_LOST]
        assert len(lost) == 300
        assert {t.node_id for t in lost} == set(names[:100])
        pending = [t for t in tasks if t.status.state == pb.TASK_STATE_PENDING]
        assert sorted((t.service_id, t.slot) for t in pending) == sorted((t.service_id, t.slot) for t in lost)


async def test_a_raising_service_backs_off_while_the_others_are_reconciled(harness: Harness) -> None:
    harness.recording.fail.add("a")
    a1, b1 = (await harness.tasks("a"))[0], (await harness.tasks("b"))[0]
    await harness.report(a1, pb.TASK_STATE_FAILED)
    await harness.report(b1, pb.TASK_STATE_FAILED)
    wake = await harness.step()
    assert harness.recording.take() == ["a", "b"]
    assert len(await harness.tasks("b")) == 2, "b was replaced although a raised"
    assert wake is not None and NOW < wake <= NOW + timedelta(seconds=1), "a retries after its own backoff"
    # More news about a before its retry is due: a waits, b is still served.
    a2 = (await harness.tasks("a"))[1]
    await harness.report(a2, pb.TASK_STATE_FAILED)
    [b2] = [t for t in await harness.tasks("b") if t.status.state == pb.TASK_STATE_PENDING]
    await harness.report(b2, pb.TASK_STATE_REJECTED)
    await harness.step()
    assert harness.recording.take() == ["b"]
    await harness.step()  # b's own write (b2 told to stop: a terminal task put) is an event for b too
    assert harness.recording.take() == ["b"]
    # Due: a is tried again, fails again, and waits about twice as long.
    await harness.clock.advance((wake - NOW).total_seconds())
    second = await harness.step()
    assert harness.recording.take() == ["a"]
    assert second is not None and second - harness.clock.now() >= timedelta(seconds=1)
    harness.recording.fail.clear()
    await harness.clock.advance((second - harness.clock.now()).total_seconds())
    assert await harness.step() is None
    assert harness.recording.take() == ["a"]
    assert sum(1 for t in await harness.tasks("a") if t.status.state == pb.TASK_STATE_PENDING) == 2


async def test_a_malformed_stored_timestamp_stops_no_reconcile(harness: Harness) -> None:
    """A task stored with nanos -1 (as an agent's report once could be): its service and every other one are
    reconciled, in this pass and in the first pass of a restarted orchestrator, and nothing backs off."""
    a1, [b1] = (await harness.tasks("a"))[0], await harness.tasks("b")
    a1.status.state = pb.TASK_STATE_FAILED
    a1.status.timestamp.seconds, a1.status.timestamp.nanos = int(NOW.timestamp()), -1
    await harness.store.commit([Put(pb.Task.FromString(a1.SerializeToString()), expect_version=a1.version)])
    await harness.report(b1, pb.TASK_STATE_FAILED)
    assert await harness.step() is None, "nothing failed, so no retry is due"
    assert harness.recording.take() == ["a", "b"]
    assert sorted(t.status.state for t in await harness.tasks("a")) == [
        pb.TASK_STATE_PENDING,
        pb.TASK_STATE_STARTING,
        pb.TASK_STATE_FAILED,
    ], "a's failed slot was replaced too"
    assert len(await harness.tasks("b")) == 2
    restarted = Orchestrator(harness.store, harness.clock, lambda: "after-restart")
    assert await restarted.reconcile(None) is None
    assert not [t for t in await harness.tasks("a") if t.id == "after-restart"], "settled: nothing more to do"


async def test_a_restart_delay_fires_for_that_service_only(harness: Harness) -> None:
    slow = service("slow", 1, condition=pb.RestartPolicy.CONDITION_ANY, delay=duration(5))
    await harness.store.commit([Put(slow)])
    await harness.step()
    await harness.place({"slow": ["n2"]})
    [task_] = await harness.tasks("slow")
    await harness.report(task_, pb.TASK_STATE_FAILED)
    harness.recording.take()
    wake = await harness.step()
    assert harness.recording.take() == ["slow"]
    assert wake == NOW + timedelta(seconds=5)
    assert len(await harness.tasks("slow")) == 1, "waiting out its restart delay"
    await harness.clock.advance(5)
    assert await harness.step() is None
    assert harness.recording.take() == ["slow"]
    assert len(await harness.tasks("slow")) == 2


class RacingStore(SqliteStore):
    """A store in which an agent reports on a task of service `racing` right after the orchestrator read them."""

    racing = ""

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Returns the tasks as they were, then rewrites the first one of the racing service, bumping its version."""
        tasks = await super().list_tasks(service_id, node_id)
        if service_id is not None and service_id == self.racing and tasks:
            self.racing = ""
            rewritten = pb.Task()
            rewritten.CopyFrom(tasks[0])
            await self.commit([Put(rewritten)])
        return tasks


async def test_a_conflict_retries_that_service_at_once_and_commits_the_others() -> None:
    """The pass commits its plans together; when that conflicts, each service commits on its own."""
    async with RacingStore(":memory:") as store:
        h = Harness(store)
        restart = {"condition": pb.RestartPolicy.CONDITION_ANY, "delay": duration(0)}
        await store.commit([Put(node("n1")), Put(service("a", 1, **restart)), Put(service("b", 1, **restart))])
        await h.full()
        await h.place({"a": ["n1"], "b": ["n1"]})
        [a1], [b1] = await h.tasks("a"), await h.tasks("b")
        await h.report(a1, pb.TASK_STATE_FAILED)
        await h.report(b1, pb.TASK_STATE_FAILED)
        store.racing = "a"
        assert await h.step() == NOW, "a lost the race: look again at once"
        assert (len(await h.tasks("a")), len(await h.tasks("b"))) == (1, 2)
        h.recording.take()
        await h.step()
        assert h.recording.take() == ["a", "b"], "a again at once; b for its own write (b1 told to stop)"
        assert len(await h.tasks("a")) == 2


class FlakyStore(SqliteStore):
    """A store whose next look-up of a node's tasks fails once, as a read the backend could not serve."""

    fail_next = False

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Fails once when asked to, then reads."""
        if node_id is not None and self.fail_next:
            self.fail_next = False
            raise OSError("disk I/O error")
        return await super().list_tasks(service_id, node_id)


async def test_a_pass_the_store_failed_is_followed_by_one_that_reads_everything() -> None:
    async with FlakyStore(":memory:") as store:
        h = Harness(store)
        await store.commit([Put(node("n1")), Put(node("n2")), Put(service("a", 1)), Put(service("b", 1))])
        await h.full()
        await h.place({"a": ["n1"], "b": ["n2"]})
        await h.step()
        h.recording.take()
        store.fail_next = True
        await store.commit([Put(node("n1", pb.NODE_STATUS_DOWN))])
        with pytest.raises(OSError, match="disk I/O"):
            await h.step()
        await h.orchestrator.reconcile([])  # the Reactor's retry, even with nothing new to hand
        assert h.recording.take() == ["a", "b"], "what the failed pass moved past is not lost"
        [lost, _] = sorted(await h.tasks("a"), key=lambda t: t.status.state, reverse=True)
        assert lost.status.state == pb.TASK_STATE_LOST


class SpecRacingStore(SqliteStore):
    """A store in which the API writes a new spec of `racing` right after the orchestrator read the service."""

    racing = ""

    async def get_service(self, name_or_id: str) -> pb.Service | None:
        """Returns the service as it was, then writes a newer spec of it (as an apply landing meanwhile)."""
        found = await super().get_service(name_or_id)
        if found is not None and found.id == self.racing:
            self.racing = ""
            newer = pb.Service()
            newer.CopyFrom(found)
            newer.revision += 1
            newer.spec_revision = newer.revision
            newer.spec.image = "img:3"
            await self.commit([Put(newer, expect_version=found.version)])
        return found


async def test_a_rollout_status_write_loses_to_a_newer_spec_and_the_service_is_reconciled_again() -> None:
    async with SpecRacingStore(":memory:") as store:
        h = Harness(store)
        await store.commit([Put(node("n1")), Put(service("a", 2))])
        await h.full()
        await h.place({"a": ["n1", "n1"]})
        await h.step()
        updated = await store.get_service("a")
        assert updated is not None
        updated.spec.image = "img:2"
        updated.revision = updated.spec_revision = 2
        await store.commit([Put(updated, expect_version=updated.version)])
        store.racing = "a"
        assert await h.step() == NOW, "its UPDATING write conflicted: look again at once"
        assert all(t.desired_state == pb.DESIRED_STATE_RUNNING for t in await h.tasks("a")), "nothing committed"
        await h.step()
        stored = await store.get_service("a")
        assert stored is not None and stored.spec.image == "img:3"
        assert (stored.update_status.state, stored.update_status.to_revision) == (pb.UpdateStatus.STATE_UPDATING, 3)


async def test_a_rebalance_is_acted_on_once_per_request_and_never_after_a_restart() -> None:
    async with SqliteStore(":memory:") as store:
        h = Harness(store)
        asked = service("a", 4)
        asked.rebalance_generation = asked.rebalanced_generation = 3  # asked for and done before this start
        await store.commit([Put(node("n1")), Put(asked)])
        await h.full()
        await h.place({"a": ["n1"] * 4})
        await store.commit([Put(node("n2"))])
        await h.step()
        await h.step()
        assert not any(t.replaced for t in await h.tasks("a")), "a node that joined moves nothing"
        current = await store.get_service("a")
        assert current is not None
        current.rebalance_generation += 1
        await store.commit([Put(current, expect_version=current.version)])
        await h.step()
        assert sum(t.replaced for t in await h.tasks("a")) == 2, "moved toward 2 and 2"
        acted = await store.get_service("a")
        assert acted is not None and acted.rebalanced_generation == 4, "the request is recorded as acted on"
        await store.commit([Put(node("n3"))])
        await h.step()
        assert sum(t.replaced for t in await h.tasks("a")) == 2, "acted on once: the third node gets nothing"
        restarted = Harness(store)  # a controller restart: what was acted on is read back from the service
        await restarted.full()
        assert sum(t.replaced for t in await restarted.tasks("a")) == 2, "not acted on again after a restart"
