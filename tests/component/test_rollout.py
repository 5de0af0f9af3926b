"""Rollouts through the real orchestrator and scheduler roles over a SQLite file, with simulated agents.

Each tick hands every role the store's events since its last pass (as the Reactor does), then the agents do
what they are told (a placed task runs, or fails its health check if its image is bad; a task told to stop
stops), and virtual time moves on a second. A controller restart is the store closed and opened again
with new roles that know nothing but what the store holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.orchestrator.role import Orchestrator
from controller.scheduler.role import Scheduler
from controller.store.base import Event, Put
from controller.store.follow import follow
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.task_state import is_terminal, runs_current_spec
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BAD = "web:broken"  # an image whose health check never passes
UNPULLABLE = "web:typo"  # an image no host can pull: every agent refuses its tasks (a host fault)
S = pb.UpdateStatus


def node(name: str) -> pb.Node:
    found = pb.Node(id=name, status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE)
    found.description.hostname = name
    found.description.cpus = 8
    found.description.memory_bytes = 8 << 30
    return found


def spec(name: str, image: str, replicas: int, **update: object) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name=name, image=image, replicas=replicas)
    result.restart.condition = pb.RestartPolicy.CONDITION_ANY
    result.restart.delay.CopyFrom(duration(0))
    result.update.CopyFrom(pb.UpdateConfig(**update))  # type: ignore[arg-type]
    if "parallelism" not in update:
        result.update.parallelism = 1
    return result


class Feed:
    """One role's view of the store's change feed, followed in the background as the Reactor does."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.events: list[Event] = []
        self.seen = store.revision
        self.task = asyncio.create_task(self._follow(store.revision))

    async def _follow(self, since: int) -> None:
        async for event in follow(self.store, since):
            assert isinstance(event, Event), "the test's feeds never fall behind"
            self.events.append(event)

    async def take(self) -> list[Event]:
        """Returns the events since the last take: every one up to the store's revision."""
        for _ in range(1000):
            if self.store.revision == self.seen or (self.events and self.events[-1].revision == self.store.revision):
                break
            await asyncio.sleep(0)  # a commit's events reach the follower in one step once it runs
        else:
            raise AssertionError("the feed fell behind")
        self.seen = self.store.revision
        taken, self.events = self.events, []
        return taken

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass
class Controller:
    """The orchestrator and scheduler over one open store, each with its own feed."""

    store: SqliteStore
    clock: FakeClock
    ids: Callable[[], str]
    orchestrator: Orchestrator = field(init=False)
    scheduler: Scheduler = field(init=False)
    feeds: list[Feed] = field(init=False)
    started: bool = False

    def __post_init__(self) -> None:
        self.orchestrator = Orchestrator(self.store, self.clock, self.ids)
        self.scheduler = Scheduler(self.store, self.clock)
        self.feeds = [Feed(self.store), Feed(self.store)]

    async def tick(self) -> None:
        """One pass of each role: the first reads everything, as after a start."""
        first, second = self.feeds
        events = await first.take()
        await self.orchestrator.reconcile(events if self.started else None)
        events = await second.take()
        await self.scheduler.reconcile(events if self.started else None)
        self.started = True


@dataclass
class World:
    """A controller over a SQLite file, agents that obey, and what was seen at every tick."""

    path: Path
    clock: FakeClock = field(default_factory=lambda: FakeClock(NOW))
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    controller: Controller | None = None
    # Per tick: how many tasks of the service ran (desired running and RUNNING).
    serving: list[int] = field(default_factory=list)

    @property
    def store(self) -> SqliteStore:
        assert self.controller is not None
        return self.controller.store

    async def start(self) -> None:
        store = SqliteStore(self.path)
        await store.open()
        self.controller = Controller(store, self.clock, lambda: f"t{next(self.counter)}")

    async def stop(self) -> None:
        """The controller goes away; only the store remains."""
        assert self.controller is not None
        for feed in self.controller.feeds:
            await feed.close()
        await self.store.close()
        self.controller = None

    async def tick(self, watch: str = "web") -> None:
        assert self.controller is not None
        await self.controller.tick()
        await self.agents()
        service = await self.store.get_service(watch)
        if service is not None:
            tasks = await self.store.list_tasks(service_id=service.id)
            self.serving.append(sum(1 for t in tasks if _serving(t)))
        await self.clock.advance(1)

    async def agents(self, hold: frozenset[str] = frozenset()) -> None:
        """Each host's agent: placed tasks start (bad images fail their check), stopping ones stop."""
        ops: list[Put] = []
        specs: dict[tuple[str, int], pb.ServiceSpec | None] = {}
        for task in await self.store.list_tasks():
            if is_terminal(task.status.state) or not task.node_id or task.service_name in hold:
                continue
            key = (task.service_id, task.revision)
            if key not in specs:
                specs[key] = await self.store.get_service_spec(*key)
            image = specs[key].image if specs[key] is not None else ""  # type: ignore[union-attr]
            if task.desired_state != pb.DESIRED_STATE_RUNNING:
                _report(task, pb.TASK_STATE_SHUTDOWN, self.clock.now())
            elif image == UNPULLABLE:
                _report(task, pb.TASK_STATE_REJECTED, self.clock.now(), f"image {UNPULLABLE!r} could not be pulled")
                task.status.cause = pb.TaskStatus.CAUSE_HOST
            elif task.status.state == pb.TASK_STATE_ASSIGNED:
                _report(task, pb.TASK_STATE_STARTING, self.clock.now())
            elif task.status.state == pb.TASK_STATE_STARTING and image == BAD:
                _report(task, pb.TASK_STATE_FAILED, self.clock.now(), "health check failed: 503")
                task.status.cause = pb.TaskStatus.CAUSE_UNHEALTHY
            elif task.status.state == pb.TASK_STATE_STARTING:
                _report(task, pb.TASK_STATE_RUNNING, self.clock.now())
            else:
                continue
            ops.append(Put(task, expect_version=task.version))
        if ops:
            await self.store.commit(ops)

    async def service(self, name: str = "web") -> pb.Service:
        found = await self.store.get_service(name)
        assert found is not None
        return found

    async def tasks(self, name: str = "web") -> list[pb.Task]:
        return await self.store.list_tasks(service_id=(await self.service(name)).id)

    async def apply(self, new: pb.ServiceSpec) -> None:
        """Writes a spec as the API does (a new service, or a new revision of one)."""
        old = await self.store.get_service(new.name)
        service = pb.Service(id=f"svc-{new.name}", name=new.name, revision=1, spec_revision=1)
        if old is not None:
            service.CopyFrom(old)
            service.revision += 1
            service.spec_revision = service.revision
            service.also_current_from = service.also_current_to = 0
        service.spec.CopyFrom(new)
        service.updated_at.FromDatetime(self.clock.now())
        await self.store.commit([Put(service, expect_version=old.version if old else 0)])

    async def until(self, done: Callable[[], Awaitable[bool]], ticks: int = 80) -> None:
        """Ticks until done() holds, at most `ticks` times."""
        for _ in range(ticks):
            if await done():
                return
            await self.tick()
        raise AssertionError("did not settle")


def _serving(task: pb.Task) -> bool:
    return task.desired_state == pb.DESIRED_STATE_RUNNING and task.status.state == pb.TASK_STATE_RUNNING


def _report(task: pb.Task, state: int, now: datetime, error: str = "") -> None:
    task.status.state = state  # type: ignore[assignment]
    task.status.error = error
    task.status.timestamp.FromDatetime(now)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    result = World(tmp_path / "controller.db")
    await result.start()
    await result.store.commit([Put(node(n)) for n in ("n1", "n2", "n3")])
    yield result
    if result.controller is not None:
        await result.stop()


async def rollout_state(world: World, *states: int) -> bool:
    return (await world.service()).update_status.state in states


async def test_a_start_first_update_whose_health_check_fails_rolls_back_on_its_own(world: World) -> None:
    first = spec("web", "web:1", 4, order=pb.UpdateConfig.ORDER_START_FIRST)
    await world.apply(first)
    await world.until(lambda: _all_running(world, 4))
    world.serving.clear()
    await world.apply(spec("web", BAD, 4, order=pb.UpdateConfig.ORDER_START_FIRST))
    await world.until(lambda: rollout_state(world, S.STATE_ROLLBACK_COMPLETED))
    service = await world.service()
    assert service.spec.image == "web:1" and (service.revision, service.spec_revision) == (3, 3)
    assert service.change_cause == "rollback to revision 1: 1 of 4 updated tasks failed: health check failed: 503"
    assert (service.update_status.from_revision, service.update_status.to_revision) == (2, 3)
    live = [t for t in await world.tasks() if t.desired_state == pb.DESIRED_STATE_RUNNING]
    assert sorted(t.revision for t in live if _serving(t)) == [1, 1, 1, 1], "the tasks never updated stayed"
    assert all(runs_current_spec(service, t) for t in live if not is_terminal(t.status.state))
    assert min(world.serving) >= 4, "start-first: never fewer than the replicas running healthy"


async def test_an_image_no_node_can_pull_rolls_back(world: World) -> None:
    # Each refusal is a host fault, retried elsewhere for ever; a slot refused HOST_FAULT_LIMIT times in a row
    # is one failure of the rollout, so a stop-first rollout of a typo'd tag does not stay one slot down.
    await world.apply(spec("web", "web:1", 4))
    await world.until(lambda: _all_running(world, 4))
    await world.apply(spec("web", UNPULLABLE, 4))
    await world.until(lambda: rollout_state(world, S.STATE_ROLLBACK_COMPLETED))
    service = await world.service()
    assert service.spec.image == "web:1"
    assert service.change_cause == (
        "rollback to revision 1: 1 of 4 updated tasks failed: image 'web:typo' could not be pulled"
    )
    await world.until(lambda: _all_running(world, 4))


async def test_a_rollout_resumes_after_a_controller_restart(world: World) -> None:
    await world.apply(spec("web", "web:1", 5, order=pb.UpdateConfig.ORDER_STOP_FIRST))
    await world.until(lambda: _all_running(world, 5))
    await world.apply(spec("web", "web:2", 5, order=pb.UpdateConfig.ORDER_STOP_FIRST))
    for _ in range(5):
        await world.tick()
    half = await world.service()
    assert half.update_status.state == S.STATE_UPDATING
    updated = sum(1 for t in await world.tasks() if t.revision == 2)
    assert 0 < updated < 5, "stopped half-way"
    await world.stop()
    await world.start()  # a new controller: new roles, the store reopened
    await world.until(lambda: rollout_state(world, S.STATE_COMPLETED))
    service = await world.service()
    assert service.update_status.started_at == half.update_status.started_at, "the same rollout, resumed"
    tasks = await world.tasks()
    assert sorted(t.revision for t in tasks if _serving(t)) == [2] * 5
    assert sum(1 for t in tasks if t.revision == 2) == 5, "no slot was updated twice"
    assert max(world.serving) <= 5, "stop-first: never more than the replicas"


async def test_depends_on_holds_new_tasks_until_the_dependency_is_healthy(world: World) -> None:
    await world.apply(spec("db", "db:1", 1))
    web = spec("web", "web:1", 2)
    web.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    await world.apply(web)
    assert world.controller is not None
    for _ in range(3):  # db's agent is slow: its task never gets past starting
        await world.controller.tick()
        await world.agents(hold=frozenset({"db"}))
        await world.clock.advance(1)
    held = await world.tasks()
    assert [(t.status.state, t.node_id) for t in held] == [(pb.TASK_STATE_NEW, "")] * 2, "not handed to the scheduler"
    assert held[0].status.message == "waiting for db (service_healthy): 0 of 1 task healthy"
    await world.until(lambda: _all_running(world, 2))


async def test_a_rollout_held_by_its_dependency_goes_on_once_the_dependency_is_healthy(world: World) -> None:
    await world.apply(spec("db", "db:1", 1))
    web = spec("web", "web:1", 2)
    web.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    await world.apply(web)
    await world.until(lambda: _all_running(world, 2))
    await world.until(lambda: _all_running(world, 1, "db"))
    # One deploy changes both: web's rollout waits for db's (no task of web's is held meanwhile), then goes on
    # when db's events arrive, not at the role's next full pass (the test never makes one).
    await world.apply(spec("db", "db:2", 1))
    web.image = "web:2"
    await world.apply(web)
    await world.until(lambda: _all_running(world, 1, "db"), ticks=20)
    await world.until(lambda: rollout_state(world, S.STATE_COMPLETED), ticks=40)
    assert sorted(t.revision for t in await world.tasks() if _serving(t)) == [2, 2]


async def test_a_rebalance_moves_tasks_only_when_asked_and_start_first(tmp_path: Path) -> None:
    world = World(tmp_path / "controller.db")
    await world.start()
    try:
        await world.store.commit([Put(node("n1"))])
        await world.apply(spec("web", "web:1", 4))
        await world.until(lambda: _all_running(world, 4))
        await world.store.commit([Put(node("n2")), Put(node("n3"))])
        for _ in range(5):
            await world.tick()
        assert {t.node_id for t in await world.tasks() if _serving(t)} == {"n1"}, "nothing moves by itself"
        world.serving.clear()
        service = await world.service()
        service.rebalance_generation += 1  # what `dockyard service rebalance` writes
        await world.store.commit([Put(service, expect_version=service.version)])
        await world.until(lambda: _spread(world, [1, 1, 2]))
        assert min(world.serving) >= 4, "moved start-first"
        moved = [t for t in await world.tasks() if _serving(t) and t.node_id != "n1"]
        assert all(list(t.avoid_node_ids) == ["n1"] for t in moved)
        for _ in range(5):
            await world.tick()
        assert await _spread(world, [1, 1, 2]), "acted on once"
    finally:
        await world.stop()


async def _all_running(world: World, count: int, name: str = "web") -> bool:
    service = await world.store.get_service(name)
    if service is None:
        return False
    tasks = await world.store.list_tasks(service_id=service.id)
    current = [t for t in tasks if _serving(t) and runs_current_spec(service, t)]
    return len(current) == count and len([t for t in tasks if _serving(t)]) == count


async def _spread(world: World, counts: list[int]) -> bool:
    nodes: dict[str, int] = {}
    for task in await world.tasks():
        if _serving(task) and not task.replaced:
            nodes[task.node_id] = nodes.get(task.node_id, 0) + 1
    return sorted(nodes.values()) == counts and not any(t.replaced for t in await world.tasks() if _serving(t))
