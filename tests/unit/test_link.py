"""The agent's controller link against a scripted controller over loopback gRPC.

Timing (connect timeout, silence, redial delays) runs on a FakeClock: the network I/O is real and fast,
and every wait the link makes is on the fake clock, so no test waits for a real timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from structlog.testing import capture_logs

import agent.link as link_module
from agent.link import REDIAL_BASE, REDIAL_CAP, ControllerLink, session_channel_options
from agent.reporter import Reporter
from agent.runtime.base import ContainerSpec, ContainerState
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard.backoff import Backoff
from dockyard.clock import Clock, FakeClock, SystemClock
from dockyard.limits import AGENT_MESSAGE_BYTES
from dockyard.timestamps import duration
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

IMAGE = "dockyard-test:latest"
PERIOD = 1.0
CONNECT_TIMEOUT = 3.0
REAL_DEADLINE = 10.0  # real seconds for real I/O to happen; conditions hold long before


async def until(condition: Callable[[], bool], what: str) -> None:
    """Waits in real time, briefly polling, for something the network must do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAL_DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def advance(clock: FakeClock, seconds: float, step: float = 0.1) -> None:
    """Moves virtual time on in steps, letting real I/O (a heartbeat's write, an ack) happen between them."""
    target = clock.monotonic() + seconds
    while clock.monotonic() < target - 1e-9:
        await clock.advance(min(step, target - clock.monotonic()))
        await asyncio.sleep(0.002)


@dataclass
class FakeController(apb_grpc.AgentServiceServicer):
    """Welcomes every session, sends what the test queued, acks heartbeats unless told not to."""

    first_messages: list[apb.ControllerMessage] = field(default_factory=list)
    ack: bool = True
    hellos: list[apb.Hello] = field(default_factory=list)
    statuses: dict[str, pb.TaskStatus] = field(default_factory=dict)
    heartbeats: int = 0

    async def Session(  # type: ignore[override]
        self, request_iterator: object, context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage]
    ) -> None:
        del request_iterator
        first = await context.read()
        assert isinstance(first, apb.AgentMessage)
        self.hellos.append(first.hello)
        welcome = apb.Welcome(node_id=first.hello.node_id, session_id=f"s{len(self.hellos)}")
        welcome.heartbeat_period.CopyFrom(duration(PERIOD))
        await context.write(apb.ControllerMessage(welcome=welcome))
        for queued in self.first_messages:
            await context.write(queued)
        while True:
            message = await context.read()
            if not isinstance(message, apb.AgentMessage):
                return
            if message.HasField("heartbeat"):
                self.heartbeats += 1
                if self.ack:
                    await context.write(apb.ControllerMessage(heartbeat_ack=apb.HeartbeatAck()))
            elif message.HasField("status"):
                for update in message.status.updates:
                    self.statuses[update.task_id] = update.status


@contextlib.asynccontextmanager
async def serving(controller: FakeController) -> AsyncIterator[str]:
    """Serves the fake controller on a free loopback port; yields its address."""
    server = grpc.aio.server(options=[("grpc.max_send_message_length", AGENT_MESSAGE_BYTES)])
    apb_grpc.add_AgentServiceServicer_to_server(controller, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@dataclass
class AgentSide:
    link: ControllerLink
    book: TaskBook
    worker: Worker
    runtime: FakeRuntime


@contextlib.asynccontextmanager
async def linked(address: str, tmp_path: Path, clock: Clock) -> AsyncIterator[AgentSide]:
    """Runs a link (with a worker on a fake runtime behind it) to the address until the block ends."""
    runtime = FakeRuntime(images=[IMAGE])
    book = TaskBook(tmp_path / "tasks.pb", clock=clock)
    reporter = Reporter()
    worker = Worker(runtime, book, reporter, "n1", clock=clock)

    async def describe() -> pb.NodeDescription:
        return pb.NodeDescription(hostname="h1")

    link = ControllerLink(
        address, "n1", describe, book, worker, reporter, PERIOD, connect_timeout=CONNECT_TIMEOUT, clock=clock
    )
    running = asyncio.create_task(link.run())
    try:
        yield AgentSide(link, book, worker, runtime)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()


def task(task_id: str, revision: int = 1, slot: int = 1) -> pb.Task:
    """A task as the controller sends it now: naming its revision, without a spec."""
    return pb.Task(
        id=task_id,
        service_id="svc1",
        service_name="web",
        slot=slot,
        revision=revision,
        node_id="n1",
        desired_state=pb.DESIRED_STATE_RUNNING,
        generation=1,
        version=1,
        status=pb.TaskStatus(state=pb.TASK_STATE_ASSIGNED),
    )


def full_set(tasks: Iterable[pb.Task], specs: Iterable[apb.ServiceRevisionSpec]) -> apb.ControllerMessage:
    assignments = apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=tasks, specs=specs, sequence=1)
    return apb.ControllerMessage(assignments=assignments)


def spec(revision: int = 1, **env: str) -> apb.ServiceRevisionSpec:
    return apb.ServiceRevisionSpec(
        service_id="svc1", revision=revision, spec=pb.ServiceSpec(name="web", image=IMAGE, env=env)
    )


# --- the session ----------------------------------------------------------------------------------------


async def test_tasks_run_from_specs_sent_once_per_revision_and_one_without_a_spec_is_rejected(
    tmp_path: Path,
) -> None:
    controller = FakeController()
    old_style = task("t3", revision=2, slot=3)
    old_style.spec.CopyFrom(pb.ServiceSpec(name="web", image=IMAGE))  # an older controller's way
    controller.first_messages = [
        full_set([task("t1", slot=1), task("t2", slot=2), task("orphan", revision=9, slot=4), old_style], [spec()])
    ]
    async with serving(controller) as address, linked(address, tmp_path, SystemClock()) as side:
        await until(lambda: len(controller.statuses) == 4, "a status for every task")
        await until(
            lambda: all(controller.statuses[t].state == pb.TASK_STATE_RUNNING for t in ("t1", "t2", "t3")),
            "t1, t2 and t3 running",
        )
        rejected = controller.statuses["orphan"]
        assert rejected.state == pb.TASK_STATE_REJECTED
        assert "no spec" in rejected.error
        assert side.runtime.count("create") == 3, "no container for the task without a spec"
        # One session throughout: heartbeats and status updates written at the same moment do not collide.
        assert [h.description.hostname for h in controller.hellos] == ["h1"]


async def test_the_session_takes_assignments_far_larger_than_grpcs_default_4_mib(tmp_path: Path) -> None:
    controller = FakeController()
    controller.first_messages = [full_set([task("t1")], [spec(BLOB="x" * (12 * 1024 * 1024))])]
    async with serving(controller) as address, linked(address, tmp_path, SystemClock()) as side:
        await until(lambda: side.book.get("t1") is not None, "the 12 MiB assignment applied")
        t1 = side.book.get("t1")
        assert t1 is not None
        received = side.book.spec_of(t1)
        assert received is not None
        assert len(received.env["BLOB"]) == 12 * 1024 * 1024
        assert len(controller.hellos) == 1, "the session was never dropped"


def test_the_session_channel_options_are_set_in_one_place() -> None:
    options = dict(session_channel_options(connect_timeout=2.5))
    assert options["grpc.max_receive_message_length"] == AGENT_MESSAGE_BYTES
    # gRPC's own connect attempt gives up within a second (or the dial), and its reconnect backoff stays short.
    assert options["grpc.min_reconnect_backoff_ms"] == 1000
    assert dict(session_channel_options(connect_timeout=0.5))["grpc.min_reconnect_backoff_ms"] == 500
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000
    assert options["grpc.initial_reconnect_backoff_ms"] <= 1000
    assert options["grpc.use_local_subchannel_pool"] == 1
    assert options["grpc.keepalive_time_ms"] > 0


# --- timing, in virtual time ----------------------------------------------------------------------------


async def test_silence_from_the_controller_ends_the_session_and_the_agent_redials(tmp_path: Path) -> None:
    clock = FakeClock()
    controller = FakeController(ack=False)
    async with serving(controller) as address, linked(address, tmp_path, clock) as side:
        await until(side.link.connected.is_set, "the first session")
        await advance(clock, PERIOD * 3 - 0.1)
        await until(lambda: controller.heartbeats >= 3, "heartbeats sent while waiting for acks")
        assert side.link.connected.is_set(), "not yet three periods of silence"
        await clock.advance(0.1)
        assert not side.link.connected.is_set(), "three silent periods end the session"
        assert side.link.disconnected_for() == 0.0

        await clock.advance(REDIAL_CAP)  # longer than the first redial delay
        await until(lambda: len(controller.hellos) == 2, "a second hello")
        await until(side.link.connected.is_set, "the second session")


async def test_acked_heartbeats_keep_the_session(tmp_path: Path) -> None:
    clock = FakeClock()
    controller = FakeController()
    async with serving(controller) as address, linked(address, tmp_path, clock) as side:
        await until(side.link.connected.is_set, "the session")
        await advance(clock, PERIOD * 10)
        assert controller.heartbeats >= 5
        assert side.link.connected.is_set()
        assert len(controller.hellos) == 1


async def test_a_dial_that_does_not_complete_is_abandoned_and_made_again(tmp_path: Path) -> None:
    # A peer that accepts TCP and never speaks HTTP/2: the channel never gets ready.
    peers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = FakeClock()
    try:
        async with linked(f"127.0.0.1:{port}", tmp_path, clock) as side:
            await until(lambda: len(peers) == 1, "the first dial")
            await advance(clock, CONNECT_TIMEOUT - 0.1)
            await asyncio.sleep(0.05)
            assert len(peers) == 1, "no second dial while the first may still complete"
            await advance(clock, 0.1 + REDIAL_BASE)  # abandoned at the connect timeout; the first redial is quick
            await until(lambda: len(peers) == 2, "a fresh dial on a new connection")
            assert not side.link.connected.is_set()
            assert side.link.disconnected_for() == clock.monotonic()
    finally:
        for peer in peers:
            peer.close()
        server.close()
        await server.wait_closed()


class UnreachableLink(ControllerLink):
    """A link whose every dial fails at once, as to a host that answers 'no route': records when it dials."""

    def __init__(self, clock: Clock, tmp_path: Path) -> None:
        book = TaskBook(tmp_path / "tasks.pb", clock=clock)
        reporter = Reporter()
        worker = Worker(FakeRuntime(), book, reporter, "n1", clock=clock)

        async def describe() -> pb.NodeDescription:
            return pb.NodeDescription()

        super().__init__("unreachable:1", "n1", describe, book, worker, reporter, PERIOD, clock=clock)
        self.clock = clock
        self.dials: list[float] = []

    async def _dial(self) -> grpc.aio.Channel:
        self.dials.append(self.clock.monotonic())
        raise OSError("no route to host")


async def test_redials_come_at_jittered_delays_capped_at_the_redial_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(link_module, "Backoff", lambda base, cap: Backoff(base, cap, rng=random.Random(7)))
    clock = FakeClock()
    link = UnreachableLink(clock, tmp_path)
    running = asyncio.create_task(link.run())
    try:
        await clock.advance(60)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    gaps = [later - earlier for earlier, later in zip(link.dials, link.dials[1:], strict=False)]
    assert gaps[0] <= REDIAL_BASE, "the first redial comes almost at once"
    assert max(gaps) <= REDIAL_CAP
    assert min(gaps[5:]) >= REDIAL_CAP / 2, "jitter never makes a capped delay shorter than half the cap"
    assert len(set(gaps[5:])) > 1, "delays are jittered"
    assert len(link.dials) >= 60 / REDIAL_CAP
    assert link.disconnected_for() == 60


class RemovedController(apb_grpc.AgentServiceServicer):
    """Refuses every session as the controller refuses a removed node."""

    def __init__(self) -> None:
        self.refused = 0

    async def Session(  # type: ignore[override]
        self, request_iterator: object, context: grpc.aio.ServicerContext[apb.AgentMessage, apb.ControllerMessage]
    ) -> None:
        del request_iterator
        self.refused += 1
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "node n1 was removed from the cluster")


async def test_a_removed_node_is_told_how_to_clean_its_host_and_nothing_is_torn_down(tmp_path: Path) -> None:
    clock = FakeClock()
    controller = RemovedController()
    with capture_logs() as logs:
        async with serving(controller) as address, linked(address, tmp_path, clock) as side:
            container = await side.runtime.create(ContainerSpec(name="app-1", image=IMAGE))
            await side.runtime.start(container)
            await until(lambda: controller.refused >= 1, "a refused session")
            await clock.advance(REDIAL_CAP)
            await until(lambda: controller.refused >= 2, "a second refused session")
            assert (await side.runtime.inspect(container)).state is ContainerState.RUNNING
    said = [entry for entry in logs if entry["event"] == "this node was removed from the cluster"]
    assert len(said) == 1, "once a minute, not at every redial"
    assert "dockyard-agent cleanup-network" in said[0]["fix"]
    assert said[0]["log_level"] == "error"
