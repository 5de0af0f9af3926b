"""The dispatcher under load: liveness never waits for the store, statuses are group-committed, floods are cheap.

Sessions run through Dispatcher.Session with a fake stream context (queues in, a list out) against the real
SqliteStore, wrapped to count its reads and commits and to hold commits at a gate. Time is a FakeClock.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
import structlog

from controller.dispatcher.bounds import PENDING_STATUSES_PER_NODE
from controller.dispatcher.committer import FORGERY_PROBES
from controller.dispatcher.dispatcher import Dispatcher
from controller.store.base import Op, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

PERIOD = 1.0
WINDOW = 0.05


class GatedStore(SqliteStore):
    """The real store, counting reads and (finished) commits; commits wait while the gate is closed."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.gate = asyncio.Event()
        self.gate.set()
        self.commits: list[list[Op]] = []
        self.reads: Counter[str] = Counter()

    async def commit(self, ops: Sequence[Op]) -> int:
        await self.gate.wait()
        revision = await super().commit(ops)
        self.commits.append(list(ops))
        return revision

    async def get_task(self, task_id: str) -> pb.Task | None:
        self.reads["get_task"] += 1
        return await super().get_task(task_id)

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        self.reads["list_tasks"] += 1
        return await super().list_tasks(service_id, node_id)

    def commits_of(self, kind: type[pb.Task] | type[pb.Node]) -> list[list[Op]]:
        """The commits that wrote at least one object of this kind."""
        return [ops for ops in self.commits if any(isinstance(op, Put) and isinstance(op.obj, kind) for op in ops)]


class Aborted(Exception):
    """What the fake context raises on abort, as gRPC raises its own error."""


@dataclass
class FakeStream:
    """A session's server side: the test feeds `inbox`, the dispatcher writes to `written`."""

    inbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    written: list[apb.ControllerMessage] = field(default_factory=list)
    aborted: tuple[grpc.StatusCode, str] | None = None

    async def read(self) -> object:
        return await self.inbox.get()

    async def write(self, message: apb.ControllerMessage) -> None:
        self.written.append(message)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)

    def send(self, **message: Any) -> None:
        self.inbox.put_nowait(apb.AgentMessage(**message))

    def acks(self) -> int:
        return sum(1 for m in self.written if m.HasField("heartbeat_ack"))


@dataclass
class Rig:
    store: GatedStore
    clock: FakeClock
    dispatcher: Dispatcher
    sessions: list[asyncio.Task[None]] = field(default_factory=list)

    async def connect(self, node_id: str, inventory: Sequence[apb.InventoryItem] = ()) -> FakeStream:
        """Opens a session for node_id and waits until it is welcomed."""
        stream = FakeStream()
        stream.send(
            hello=apb.Hello(node_id=node_id, description=pb.NodeDescription(hostname=node_id), inventory=inventory)
        )
        self.sessions.append(asyncio.create_task(self.dispatcher.Session(None, cast(Any, stream))))
        await settle(lambda: any(m.HasField("welcome") for m in stream.written))
        return stream


async def settle(condition: Any = None, rounds: int = 2000) -> None:
    """Lets ready tasks run (the SQLite thread included) until condition() holds; fails if it never does."""
    for _ in range(rounds):
        if condition is not None and condition():
            return
        await asyncio.sleep(0.001 if condition is not None else 0)
    assert condition is None, "condition never held"


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    store = GatedStore()
    async with store:
        clock = FakeClock()
        dispatcher = Dispatcher(store, clock, PERIOD, commit_window=WINDOW)
        running = asyncio.create_task(dispatcher.run())
        await settle()
        rig = Rig(store, clock, dispatcher)
        try:
            yield rig
        finally:
            store.gate.set()
            for task in (running, *rig.sessions):
                task.cancel()
            await asyncio.gather(running, *rig.sessions, return_exceptions=True)


async def place(store: SqliteStore, node_id: str, count: int) -> list[str]:
    """Commits `count` assigned tasks on a node (one service per call) and returns their ids."""
    service = pb.Service(id=f"svc-{node_id}", name=f"web-{node_id}", revision=1, spec_revision=1)
    service.spec.name, service.spec.image = service.name, "img:1"
    tasks = []
    for slot in range(count):
        task = pb.Task(id=f"{node_id}-t{slot}", service_id=service.id, service_name=service.name, slot=slot, revision=1)
        task.node_id = node_id
        task.desired_state = pb.DESIRED_STATE_RUNNING
        task.status.state = pb.TASK_STATE_ASSIGNED
        tasks.append(task)
    await store.commit([Put(service), *(Put(t) for t in tasks)])
    return [t.id for t in tasks]


def running(task_ids: Sequence[str]) -> list[apb.TaskStatusUpdate]:
    return [apb.TaskStatusUpdate(task_id=i, status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING)) for i in task_ids]


async def test_heartbeats_are_acknowledged_while_a_status_commit_is_blocked(rig: Rig) -> None:
    ids = await place(rig.store, "n1", 3)
    stream = await rig.connect("n1")
    await rig.clock.advance(WINDOW)
    await settle(lambda: rig.store.commits_of(pb.Node))  # the hello's node write is through

    rig.store.gate.clear()
    stream.send(status=apb.StatusUpdate(updates=running(ids)))
    await rig.clock.advance(WINDOW)
    await settle(lambda: rig.dispatcher._committer.pending == 0)  # taken into a commit that now waits
    for beat in range(1, 4):
        stream.send(heartbeat=apb.Heartbeat())
        await settle(lambda acked=beat: stream.acks() == acked)
    assert {t.status.state for t in await rig.store.list_tasks(node_id="n1")} == {pb.TASK_STATE_ASSIGNED}

    rig.store.gate.set()
    await settle(lambda: len(rig.store.commits_of(pb.Task)) == 2)  # place()'s, then the reports'
    await settle()
    assert {t.status.state for t in await rig.store.list_tasks(node_id="n1")} == {pb.TASK_STATE_RUNNING}


async def test_statuses_from_many_sessions_land_in_one_commit(rig: Rig) -> None:
    streams = {}
    placed = {}
    for n in range(100):
        node_id = f"n{n:03}"
        placed[node_id] = await place(rig.store, node_id, 10)
        streams[node_id] = await rig.connect(node_id)
    await rig.clock.advance(WINDOW)
    await settle(lambda: rig.store.commits_of(pb.Node))
    before = len(rig.store.commits)

    for node_id, stream in streams.items():
        for update in running(placed[node_id]):  # one message per update: 1,000 messages
            stream.send(status=apb.StatusUpdate(updates=[update]))
    await settle(lambda: rig.dispatcher._committer.pending == 1000)
    await rig.clock.advance(WINDOW)
    await settle(lambda: len(rig.store.commits) > before)
    await settle()

    assert len(rig.store.commits) - before == 1
    assert len(rig.store.commits[-1]) == 1000
    assert rig.store.reads["get_task"] == 0, "a node's tasks are read once per batch, not once per update"
    states = Counter(t.status.state for t in await rig.store.list_tasks())
    assert states == {pb.TASK_STATE_RUNNING: 1000}


async def test_reports_coalesce_per_task_and_never_go_back(rig: Rig) -> None:
    [task_id] = await place(rig.store, "n1", 1)
    stream = await rig.connect("n1")
    for state in (pb.TASK_STATE_PREPARING, pb.TASK_STATE_RUNNING, pb.TASK_STATE_STARTING):
        stream.send(
            status=apb.StatusUpdate(updates=[apb.TaskStatusUpdate(task_id=task_id, status=pb.TaskStatus(state=state))])
        )
    await settle(lambda: rig.dispatcher._committer.pending >= 2)
    await settle()
    assert rig.dispatcher._committer.pending == 2  # the node's registration and one report
    await rig.clock.advance(WINDOW)
    await settle(lambda: len(rig.store.commits_of(pb.Task)) == 2)  # place()'s, then the reports'
    assert (await rig.store.list_tasks(node_id="n1"))[0].status.state == pb.TASK_STATE_RUNNING


async def test_a_hundred_silent_nodes_are_marked_down_in_one_commit() -> None:
    store = GatedStore()
    async with store:
        await store.commit([Put(pb.Node(id=f"n{n:03}", status=pb.NODE_STATUS_READY)) for n in range(100)])
        store.commits.clear()
        clock = FakeClock()
        dispatcher = Dispatcher(store, clock, PERIOD, commit_window=WINDOW)
        running_ = asyncio.create_task(dispatcher.run())
        try:
            await settle(lambda: store.commits)
            assert len(store.commits) == 1 and len(store.commits[0]) == 100, "readiness forgotten in one commit"
            await clock.advance(10.0, step=0.05)  # past the startup grace: nobody said hello
            await settle(lambda: len(store.commits) == 2)
            assert len(store.commits[1]) == 100
            assert {n.status for n in await store.list_nodes()} == {pb.NODE_STATUS_DOWN}
        finally:
            running_.cancel()
            await asyncio.gather(running_, return_exceptions=True)


class StallingClock(FakeClock):
    """A FakeClock whose time can move on while no task runs, as it does when the event loop is blocked."""

    def stall(self, seconds: float) -> None:
        self._elapsed += seconds


async def test_a_watcher_round_that_runs_late_marks_nobody_down() -> None:
    store = GatedStore()
    async with store:
        clock = StallingClock()
        dispatcher = Dispatcher(store, clock, PERIOD, commit_window=WINDOW)
        running_ = asyncio.create_task(dispatcher.run())
        rig = Rig(store, clock, dispatcher)
        try:
            streams = [await rig.connect(f"n{n}") for n in range(3)]
            await clock.advance(WINDOW)
            await settle(lambda: len(store.commits_of(pb.Node)) == 1)
            store.commits.clear()

            clock.stall(5 * PERIOD)  # far past the grace, and no message could be read meanwhile
            await clock.advance(0)
            await settle()
            assert store.commits == [], "the late round judged nobody"
            for stream in streams:  # what the agents sent during the stall is read now
                stream.send(heartbeat=apb.Heartbeat())
            await settle(lambda: all(s.acks() for s in streams))
            await clock.advance(PERIOD, step=PERIOD / 4)
            await settle()
            assert store.commits == []
            assert {n.status for n in await store.list_nodes()} == {pb.NODE_STATUS_READY}
        finally:
            running_.cancel()
            for task in (running_, *rig.sessions):
                task.cancel()
            await asyncio.gather(running_, *rig.sessions, return_exceptions=True)


async def test_a_status_flood_of_unknown_ids_costs_no_read_per_id_and_few_log_lines(rig: Rig) -> None:
    await place(rig.store, "n1", 2)
    stream = await rig.connect("n1")
    await rig.clock.advance(WINDOW)
    await settle(lambda: rig.store.commits_of(pb.Node))
    reads_before = rig.store.reads.copy()
    commits_before = len(rig.store.commits)
    flood = [
        apb.TaskStatusUpdate(task_id=f"bogus-{i}", status=pb.TaskStatus(state=pb.TASK_STATE_RUNNING))
        for i in range(100_000)
    ]
    with structlog.testing.capture_logs() as logs:
        message = apb.StatusUpdate(updates=flood)
        for _ in range(2):
            stream.send(status=message)
        stream.send(heartbeat=apb.Heartbeat())
        await settle(lambda: stream.acks() == 1)
        await rig.clock.advance(WINDOW)
        await settle(lambda: rig.dispatcher._committer.pending == 0)
        await settle()
    refusals = [entry for entry in logs if entry["event"].startswith("status refused")]
    assert 1 <= len(refusals) <= 4
    # The first 10,000 ids (the per-node cap) wait and are refused once judged; later copies of them coalesce;
    # the other 90,000 are refused on arrival, each time. Every refusal is counted, none has its own line.
    assert sum(e["count"] for e in refusals) == 2 * 90_000 + PENDING_STATUSES_PER_NODE
    # Only the first few ids that are not the node's are looked up, to tell a forgery from a deleted task.
    assert rig.store.reads["get_task"] - reads_before["get_task"] == FORGERY_PROBES
    assert rig.store.reads["list_tasks"] - reads_before["list_tasks"] == 1, "one read of the node's tasks"
    assert rig.store.commits[commits_before:] == [], "nothing to write"
    assert stream.aborted is None, "refusing reports does not end the session"


async def test_after_the_startup_window_a_dead_node_is_down_within_a_quarter_period_of_its_grace(rig: Rig) -> None:
    streams = {f"n{n}": await rig.connect(f"n{n}") for n in range(3)}
    for _ in range(18):  # past twice the startup grace, every agent heard from each period
        for stream in streams.values():
            stream.send(heartbeat=apb.Heartbeat())
        await settle()
        await rig.clock.advance(PERIOD, step=PERIOD / 4)
    assert {n.status for n in await rig.store.list_nodes()} == {pb.NODE_STATUS_READY}

    dead_since = rig.clock.monotonic()  # n2 goes silent; the others keep talking
    while (await rig.store.get_node("n2")).status != pb.NODE_STATUS_DOWN:  # type: ignore[union-attr]
        assert rig.clock.monotonic() - dead_since < 3 * PERIOD + PERIOD, "n2 was not marked down in time"
        for name in ("n0", "n1"):
            streams[name].send(heartbeat=apb.Heartbeat())
        await settle()
        await rig.clock.advance(PERIOD / 4, step=PERIOD / 20)
        await settle()
    # The grace is 3 periods; rounds come every quarter period, the commit window adds a little.
    assert rig.clock.monotonic() - dead_since <= 3 * PERIOD + PERIOD / 4 + WINDOW + PERIOD / 4
    assert {n.id for n in await rig.store.list_nodes() if n.status == pb.NODE_STATUS_DOWN} == {"n2"}


@dataclass
class StreamFrom(FakeStream):
    """A session from another address."""

    address: str = "127.0.0.1"

    def peer(self) -> str:
        return f"ipv4:{self.address}:40000"


async def test_a_node_whose_address_is_inside_the_network_pool_is_refused_at_hello() -> None:
    async with SqliteStore(":memory:") as store:
        dispatcher = Dispatcher(store, FakeClock(), PERIOD, commit_window=WINDOW, network_pool="10.128.0.0/9")
        inside = StreamFrom(address="10.200.3.4")
        inside.send(hello=apb.Hello(node_id="n1", description=pb.NodeDescription(hostname="h1")))
        with pytest.raises(Aborted):
            # The bound only matters when the hello is wrongly taken: the session would then run on.
            await asyncio.wait_for(dispatcher.Session(None, cast(Any, inside)), 10)
        assert inside.aborted is not None
        code, details = inside.aborted
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details.startswith("hello: this node's address 10.200.3.4 is inside the cluster's address pool ")
        assert "--network-pool" in details
        assert await store.list_nodes() == [], "nothing of the node was written"
