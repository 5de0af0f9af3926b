"""A session's bounds where they live in gRPC: the real dispatcher over loopback, a raw client stream.

The hello deadline runs on a FakeClock (the network I/O is real and fast, the deadline virtual). The slow
reader needs real flow control to fill up, so its write-stall limit is a real fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from controller.dispatcher.dispatcher import Dispatcher
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import Clock, FakeClock, SystemClock
from dockyard.limits import HELLO_TIMEOUT_SECONDS
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import agent_pb2_grpc as apb_grpc
from dockyard.v1 import types_pb2 as pb

REAL_DEADLINE = 10.0  # real seconds for real I/O to happen; conditions hold long before


async def until(condition: Callable[[], bool], what: str) -> None:
    """Waits in real time, briefly polling, for something the network must do."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REAL_DEADLINE
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def read_to_the_end(call: grpc.aio.StreamStreamCall[apb.AgentMessage, apb.ControllerMessage]) -> None:
    """Reads what is in flight until the stream ends (an error, if it ended with one)."""
    async with asyncio.timeout(REAL_DEADLINE):
        while await call.read() != grpc.aio.EOF:
            pass


@contextlib.asynccontextmanager
async def serving(store: SqliteStore, clock: Clock, **bounds: float) -> AsyncIterator[tuple[Dispatcher, str]]:
    """Runs a dispatcher on a free loopback port; yields it and its address."""
    dispatcher = Dispatcher(store, clock, **bounds)
    server = grpc.aio.server()
    apb_grpc.add_AgentServiceServicer_to_server(dispatcher, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    running = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher, f"127.0.0.1:{port}"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await server.stop(grace=None)


async def test_a_stream_without_a_hello_is_closed_at_the_deadline() -> None:
    clock = FakeClock()
    async with (
        SqliteStore(":memory:") as store,
        serving(store, clock) as (dispatcher, address),
        grpc.aio.insecure_channel(address) as channel,
    ):
        call = apb_grpc.AgentServiceStub(channel).Session()
        await call.wait_for_connection()
        # The session's hello deadline, beside the heartbeat watcher's sleep.
        await until(lambda: clock.sleepers >= 2, "the session to wait for its hello")
        await clock.advance(HELLO_TIMEOUT_SECONDS - 0.1)
        assert not call.done()
        await clock.advance(0.2)
        code = await asyncio.wait_for(call.code(), REAL_DEADLINE)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "hello" in await call.details()
        assert dispatcher._sessions == {}


async def test_an_agent_that_stops_reading_is_disconnected_not_buffered() -> None:
    async with (
        SqliteStore(":memory:") as store,
        serving(store, SystemClock(), write_stall=0.3) as (dispatcher, address),
    ):
        # Tasks of about 64 KiB each: a few dozen fill any flow-control window gRPC grants an unread stream.
        service = pb.Service(id="svc", name="web", revision=1, spec_revision=1)
        service.spec.name, service.spec.image = "web", "img:1"
        await store.commit([Put(service)])
        async with grpc.aio.insecure_channel(address) as channel:
            call = apb_grpc.AgentServiceStub(channel).Session()
            await call.write(apb.AgentMessage(hello=apb.Hello(node_id="n1")))
            await until(lambda: "n1" in dispatcher._sessions, "the session to start")
            session = dispatcher._sessions["n1"]
            for batch in range(64):
                tasks = []
                for i in range(8):
                    task = pb.Task(id=f"t{batch}-{i}", service_id="svc", slot=batch * 8 + i, revision=1, node_id="n1")
                    task.desired_state = pb.DESIRED_STATE_RUNNING
                    task.status.state = pb.TASK_STATE_ASSIGNED
                    task.status.message = "x" * 65_536
                    tasks.append(task)
                await store.commit([Put(t) for t in tasks])
                if session.closed.is_set():
                    break
                await asyncio.sleep(0.01)
            await until(lambda: "n1" not in dispatcher._sessions, "the stalled session to be closed")
            assert session.close_code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "read nothing" in session.close_reason
            # The agent hears why once it reads again: what was in flight, then the status.
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_to_the_end(call)
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
