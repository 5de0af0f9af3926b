"""The change router and full sets: a change the full set already holds is never sent again as news."""

from __future__ import annotations

import asyncio

from controller.dispatcher.dispatcher import Dispatcher
from controller.dispatcher.session import AgentSession
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import types_pb2 as pb


async def test_a_router_behind_a_full_set_does_not_replay_what_the_set_holds() -> None:
    async with SqliteStore(":memory:") as store:
        dispatcher = Dispatcher(store, FakeClock())
        held = asyncio.Event()
        spec_of = dispatcher._specs.get

        async def slow_spec(service_id: str, revision: int) -> pb.ServiceSpec | None:
            if service_id == "busy":
                await held.wait()  # stands for a router that is behind (a large commit routed in slices)
            return await spec_of(service_id, revision)

        dispatcher._specs.get = slow_spec  # type: ignore[method-assign]
        other = AgentSession(node_id="other", session_id="s0")
        other.backlog = None
        dispatcher._sessions["other"] = other
        router = asyncio.create_task(dispatcher._route_changes())
        try:
            await asyncio.sleep(0)
            busy = pb.Task(id="x", service_id="busy", node_id="other", desired_state=pb.DESIRED_STATE_RUNNING)
            await store.commit([Put(busy)])
            for _ in range(20):
                await asyncio.sleep(0)  # the router takes x and waits on its spec
            task = pb.Task(id="T", service_id="web", slot=1, node_id="N", desired_state=pb.DESIRED_STATE_RUNNING)
            task.status.state = pb.TASK_STATE_RUNNING
            await store.commit([Put(task)])
            stopped = pb.Task()
            stopped.CopyFrom(task)
            stopped.desired_state = pb.DESIRED_STATE_SHUTDOWN
            stopped.status.state = pb.TASK_STATE_SHUTDOWN
            await store.commit([Put(stopped, expect_version=task.version)])
            # N's agent re-dials now: its full set is read at the newest revision, without T.
            session = AgentSession(node_id="N", session_id="s1")
            dispatcher._sessions["N"] = session
            await dispatcher._send_full(session)
            full = [m.assignments for m in session.take() if m.HasField("assignments")]
            assert [[t.id for t in a.tasks] for a in full] == [[]]
            held.set()
            for _ in range(50):
                await asyncio.sleep(0)
            assert session.take() == [], "the router replayed changes the full set already holds"
        finally:
            router.cancel()
            await asyncio.gather(router, return_exceptions=True)
