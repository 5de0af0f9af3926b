"""The controller and agents together over gRPC, on fake runtimes: fast checks of the whole loop."""

from __future__ import annotations

import asyncio

from agent.runtime.base import ContainerInfo
from dockyard.client import Client
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, HostUnderTest, running
from tests.polling import eventually


def spec(name: str = "web", replicas: int = 3, image: str = IMAGE) -> pb.ServiceSpec:
    s = pb.ServiceSpec(name=name, image=image, command=["sleep", "3600"], replicas=replicas)
    s.restart.condition = pb.RestartPolicy.CONDITION_ANY
    s.restart.delay.CopyFrom(duration(0))
    s.stop_grace_period.CopyFrom(duration(1))
    return s


async def test_apply_runs_every_replica_with_labels(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await eventually(client.list_nodes, what="node registered")
        await client.apply([spec(replicas=3)])
        containers = await eventually(lambda: _exactly(host, 3), what="3 running containers")
        tasks = await eventually(lambda: _all_running(client, 3), what="3 running tasks")
    assert {c.id for c in containers} == {t.status.container_id for t in tasks}
    assert {c.labels["dockyard.slot"] for c in containers} == {"1", "2", "3"}
    assert all(c.labels["dockyard.node.id"] == host.agent.node_id for c in containers)  # type: ignore[union-attr]


async def test_crash_is_replaced_and_scale_down_removes(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await client.apply([spec(replicas=2)])
        first = await eventually(lambda: _exactly(host, 2))
        host.runtime.crash(first[0].id, 3)
        await eventually(lambda: _replaced(host, first[0].id, 2), what="replacement")
        history = await client.list_tasks("web", include_finished=True)
        failed = [t for t in history if t.status.container_id == first[0].id]
        assert failed[0].status.state == pb.TASK_STATE_FAILED
        assert "exited with code 3" in failed[0].status.error
        await client.scale("web", 1)
        await eventually(lambda: _count_is(host, 1), what="scale down to 1 container")
        await client.delete_service("web")
        await eventually(lambda: _count_is(host, 0), what="all containers removed")
        await eventually(lambda: _no_tasks(client), what="tasks forgotten")


async def test_rejected_image_is_reported_with_a_reason(fake_cluster: FakeCluster) -> None:
    await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await client.apply([spec(replicas=1, image="missing:1")])

        async def rejected() -> list[pb.Task]:
            return [t for t in await client.list_tasks("web", True) if t.status.state == pb.TASK_STATE_REJECTED]

        task, *_ = await eventually(rejected, what="a rejected task")
        assert "missing:1" in task.status.error


async def test_agent_crash_adopts_containers_without_recreating(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await client.apply([spec(replicas=3)])
        before = {c.id for c in await eventually(lambda: _exactly(host, 3))}
        await eventually(lambda: _all_running(client, 3))
        creates = host.runtime.count("create")
        for _ in range(3):
            await fake_cluster.stop_agent("h1")
            await fake_cluster.start_agent("h1")
        await eventually(lambda: _all_running(client, 3))
        assert {c.id for c in await running(host)} == before
        assert host.runtime.count("create") == creates


async def test_lost_state_dir_adopts_from_labels(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await client.apply([spec(replicas=2)])
        before = {c.id for c in await eventually(lambda: _exactly(host, 2))}
        await eventually(lambda: _all_running(client, 2))
        await fake_cluster.stop_agent("h1")
        (host.state_dir / "tasks.pb").unlink()
        await fake_cluster.start_agent("h1")
        await eventually(lambda: _all_running(client, 2))
        assert {c.id for c in await running(host)} == before
        assert host.runtime.count("create") == 2


async def test_controller_outage_touches_no_container(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        await client.apply([spec(replicas=2)])
        await eventually(lambda: _all_running(client, 2))
    before = {c.id for c in await running(host)}
    await fake_cluster.stop_controller()
    host.runtime.crash(next(iter(before)), 1)
    await eventually(lambda: _exactly(host, 1), what="crash seen while the controller is away")
    await fake_cluster.start_controller()
    async with fake_cluster.client() as client:
        # The crash is reported on reconnect and the slot is refilled; the survivor is untouched.
        await eventually(lambda: _exactly(host, 2), within=20, what="slot refilled after the outage")
        await eventually(lambda: _all_running(client, 2), within=20, what="resync after outage")
    after = {c.id for c in await running(host)}
    assert len(after & before) == 1
    assert host.runtime.count("create") == 3


async def test_spread_over_two_hosts(fake_cluster: FakeCluster) -> None:
    a = await fake_cluster.start_agent("a")
    b = await fake_cluster.start_agent("b")
    async with fake_cluster.client() as client:
        await eventually(lambda: _nodes_ready(client, 2), what="two ready nodes")
        await client.apply([spec(replicas=4)])
        await eventually(lambda: _all_running(client, 4))
    assert len(await running(a)) == 2
    assert len(await running(b)) == 2


async def _exactly(host: HostUnderTest, count: int) -> list[ContainerInfo] | None:
    """The host's running containers when there are exactly count (at least one) of them."""
    found = await running(host)
    return found if len(found) == count else None


async def _count_is(host: HostUnderTest, count: int) -> bool:
    """Tells whether the host has exactly count containers of ours, in any state."""
    return len(await host.runtime.list({"dockyard.managed": "true"})) == count


async def _replaced(host: HostUnderTest, old_id: str, count: int) -> bool:
    found = await running(host)
    return len(found) == count and old_id not in {c.id for c in found}


async def _all_running(client: Client, count: int) -> list[pb.Task] | None:
    tasks = await client.list_tasks()
    live = [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING]
    ok = len(live) == count and all(t.status.state == pb.TASK_STATE_RUNNING for t in live)
    return live if ok else None


async def _no_tasks(client: Client) -> bool:
    return not await client.list_tasks(include_finished=True)


async def _nodes_ready(client: Client, count: int) -> bool:
    nodes = await client.list_nodes()
    return sum(1 for n in nodes if n.status == pb.NODE_STATUS_READY) == count


async def _node_id(client: Client, hostname: str) -> str:
    return next(n.id for n in await client.list_nodes() if n.description.hostname == hostname)


async def test_dead_node_tasks_are_lost_and_replaced_then_fenced_on_return(fake_cluster: FakeCluster) -> None:
    a = await fake_cluster.start_agent("a")
    b = await fake_cluster.start_agent("b")
    async with fake_cluster.client() as client:
        await eventually(lambda: _nodes_ready(client, 2))
        await client.apply([spec(replicas=2)])
        await eventually(lambda: _all_running(client, 2))
        on_a = await running(a)
        assert len(on_a) == 1
        await fake_cluster.stop_agent("a")  # the host is cut off: its container keeps running

        async def moved() -> bool:
            return len(await running(b)) == 2

        await eventually(moved, within=10, what="replacement on b")
        tasks = await client.list_tasks("web", include_finished=True)
        lost = [t for t in tasks if t.status.state == pb.TASK_STATE_LOST]
        assert [t.status.container_id for t in lost] == [on_a[0].id]
        live = [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING]
        assert max(t.generation for t in live) == 2
        assert len(await running(a)) == 1, "a cut-off host's container still runs"
        await fake_cluster.start_agent("a")  # the host comes back
        await eventually(lambda: _exactly_async(a, 0), within=5, what="the stale container stopped on a")
        assert len(await running(b)) == 2, "the replacements are never the ones stopped"


async def _exactly_async(host: HostUnderTest, count: int) -> bool:
    return len(await running(host)) == count


async def test_drain_moves_tasks_start_first_and_global_follows_nodes(fake_cluster: FakeCluster) -> None:
    a = await fake_cluster.start_agent("a")
    b = await fake_cluster.start_agent("b")
    async with fake_cluster.client() as client:
        await eventually(lambda: _nodes_ready(client, 2))
        everywhere = spec(name="everywhere", replicas=0)
        everywhere.mode = pb.SERVICE_MODE_GLOBAL
        await client.apply([spec(replicas=2), everywhere])
        await eventually(lambda: _all_running(client, 4))
        await client.update_node("a", availability=pb.NODE_AVAILABILITY_DRAIN)

        async def drained() -> bool:
            return not await running(a) and len(await running(b, "web")) == 2

        await eventually(drained, within=10, what="a drained")
        assert len(await running(b, "everywhere")) == 1
        await client.update_node("a", availability=pb.NODE_AVAILABILITY_ACTIVE)
        await eventually(lambda: _exactly_async(a, 1), what="the global task back on a")
        assert [c.labels["dockyard.service.name"] for c in await running(a)] == ["everywhere"]


async def test_stop_after_disconnect_stops_containers_while_cut_off(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("h1")
    async with fake_cluster.client() as client:
        careful = spec(name="careful", replicas=1)
        careful.on_disconnect.stop_after.CopyFrom(duration(0.5))
        await client.apply([careful, spec(name="relaxed", replicas=1)])
        await eventually(lambda: _all_running(client, 2))
    await fake_cluster.stop_controller()
    await eventually(lambda: _exactly_async(host, 1), within=5, what="the careful container stopped")
    assert [c.labels["dockyard.service.name"] for c in await running(host)] == ["relaxed"]


async def test_strangers_with_our_labels_are_reaped_and_foreign_containers_left_alone(
    fake_cluster: FakeCluster,
) -> None:
    from agent.runtime.base import ContainerSpec

    host = await fake_cluster.start_agent("h1", stranger_grace=0.5)
    node_id = host.agent.node_id  # type: ignore[union-attr]
    runtime = host.runtime
    ours = await runtime.create(
        ContainerSpec(
            name="leftover",
            image=IMAGE,
            command=("sleep", "3600"),
            labels={"dockyard.managed": "true", "dockyard.node.id": node_id, "dockyard.task.id": "gone"},
        )
    )
    foreign = await runtime.create(ContainerSpec(name="someone-else", image=IMAGE, command=("sleep", "3600")))
    for cid in (ours, foreign):
        await runtime.start(cid)
    async with fake_cluster.client() as client:
        await eventually(lambda: _nodes_ready(client, 1))

        async def reaped() -> bool:
            ids = {c.id for c in await runtime.list({})}
            return ours not in ids

        await eventually(reaped, within=10, what="the stranger reaped")
    assert foreign in {c.id for c in await runtime.list({})}


async def test_agent_survives_docker_down_at_start_and_registers_once_it_answers(fake_cluster: FakeCluster) -> None:
    from agent.runtime.fake import FakeRuntime

    runtime = FakeRuntime(images=[IMAGE])
    runtime.set_available(False)
    host = await fake_cluster.start_agent("late", runtime=runtime)
    async with fake_cluster.client() as client:
        await asyncio.sleep(0.5)
        assert host.task is not None and not host.task.done(), "the agent keeps trying instead of exiting"
        # Joined (the node exists from the join), but never ready without the host's facts for a hello.
        assert [n.status for n in await client.list_nodes()] == [pb.NODE_STATUS_UNKNOWN]
        runtime.set_available(True)
        await eventually(lambda: _nodes_ready(client, 1), within=15, what="registration once Docker answers")
