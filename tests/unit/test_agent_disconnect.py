"""The whole agent in virtual time, cut off from its controller: on_disconnect.stop_after, and nothing else stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.agent import Agent
from agent.config import AgentConfig
from agent.runtime.base import ContainerState
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from dockyard import labels
from dockyard.clock import FakeClock
from dockyard.timestamps import duration
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.identities import joined_state

IMAGE = "dockyard-test:latest"
UNREACHABLE = "127.0.0.1:1"  # nothing listens: every dial fails, as during a partition


def assigned(task_id: str, service_id: str, slot: int) -> pb.Task:
    return pb.Task(
        id=task_id,
        service_id=service_id,
        service_name=service_id,
        slot=slot,
        revision=1,
        node_id="n1",
        desired_state=pb.DESIRED_STATE_RUNNING,
        generation=1,
        version=1,
        status=pb.TaskStatus(state=pb.TASK_STATE_ASSIGNED),
    )


def remembered(state_dir: Path) -> None:
    """Leaves a task book from an earlier life: one task that must stop after 5 s cut off, one that stays."""
    careful = pb.ServiceSpec(name="careful", image=IMAGE)
    careful.on_disconnect.stop_after.CopyFrom(duration(5))
    book = TaskBook(state_dir / "tasks.pb")
    book.apply(
        apb.Assignments(
            kind=apb.Assignments.KIND_INCREMENTAL,
            tasks=[assigned("c1", "careful", 1), assigned("k1", "keeper", 1)],
            specs=[
                apb.ServiceRevisionSpec(service_id="careful", revision=1, spec=careful),
                apb.ServiceRevisionSpec(
                    service_id="keeper", revision=1, spec=pb.ServiceSpec(name="keeper", image=IMAGE)
                ),
            ],
        )
    )
    book.save()


async def running_services(runtime: FakeRuntime) -> set[str]:
    return {c.labels[labels.SERVICE_NAME] for c in await runtime.list({}) if c.state is ContainerState.RUNNING}


async def test_only_the_task_with_stop_after_stops_once_cut_off_that_long(tmp_path: Path) -> None:
    remembered(tmp_path)
    clock = FakeClock()
    runtime = FakeRuntime(images=[IMAGE], clock=clock.now)
    joined_state(tmp_path, UNREACHABLE)
    config = AgentConfig(controller=UNREACHABLE, state_dir=tmp_path, hostname="h1")
    agent = Agent(config, runtime, clock=clock)
    running = asyncio.create_task(agent.run())
    try:
        await clock.advance(0)
        assert await running_services(runtime) == {"careful", "keeper"}, "resumed from the book without a controller"

        await clock.advance(4.5, step=0.5)
        assert await running_services(runtime) == {"careful", "keeper"}
        assert agent.link.disconnected_for() == 4.5

        await clock.advance(1.0, step=0.5)
        assert await running_services(runtime) == {"keeper"}, "stop_after ran out for careful only"
        careful = agent.book.get("c1")
        assert careful is None or careful.desired_state == pb.DESIRED_STATE_SHUTDOWN

        await clock.advance(60, step=1.0)
        assert await running_services(runtime) == {"keeper"}, "a lost controller stops nothing else"
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
