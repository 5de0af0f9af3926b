"""Volumes across the in-process cluster (real controller, agents on fake runtimes): a volume an agent already
has gets a record on its node; a service's volume is pinned where its task first runs, a replacement task
returns there, and `volume rm` removes it from that host once no service mounts it."""

from __future__ import annotations

from collections.abc import Sequence

from controller.store.base import Kind
from dockyard import labels
from dockyard.client import ApiError, Client
from dockyard.timestamps import duration
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster
from tests.polling import eventually

HOSTS = ("host-1", "host-2", "host-3")
DATA = "db-data"


def db_spec() -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="db", image=IMAGE, command=["sleep", "3600"], replicas=1)
    spec.stop_grace_period.CopyFrom(duration(0))
    spec.restart.delay.CopyFrom(duration(0))
    spec.mounts.append(pb.Mount(type=pb.Mount.TYPE_VOLUME, source=DATA, target="/data"))
    return spec


async def ready(client: Client, hosts: Sequence[str]) -> dict[str, str]:
    """Waits until the hosts are ready; returns host name -> node id."""

    async def check() -> dict[str, str]:
        nodes = await client.list_nodes()
        up = {n.description.hostname: n.id for n in nodes if n.status == pb.NODE_STATUS_READY}
        return up if set(hosts) <= set(up) else {}

    return await eventually(check, what="the hosts ready")


async def test_a_volume_an_agent_has_gets_a_record_on_its_node(fake_cluster: FakeCluster) -> None:
    host = await fake_cluster.start_agent("host-1")
    await host.runtime.ensure_volume("found", {labels.MANAGED: "true", labels.VOLUME: "found"})
    await host.runtime.ensure_volume("not-ours", {})
    await fake_cluster.stop_agent("host-1")
    await fake_cluster.start_agent("host-1")  # its hello now lists the volume
    async with fake_cluster.client() as client:
        ids = await ready(client, ["host-1"])

        async def recorded() -> list[pb.Volume]:
            return await client.list_volumes()

        (volume,) = await eventually(recorded, what="the reported volume's record")
    assert (volume.name, volume.node_id) == ("found", ids["host-1"])


async def test_a_service_volume_is_pinned_kept_and_removed(fake_cluster: FakeCluster) -> None:
    for name in HOSTS:
        await fake_cluster.start_agent(name)
    async with fake_cluster.client() as client:
        ids = await ready(client, HOSTS)
        hosts = {node_id: name for name, node_id in ids.items()}
        await client.apply([db_spec()])

        async def running() -> pb.Task | None:
            tasks = [t for t in await client.list_tasks("db") if t.status.state == pb.TASK_STATE_RUNNING]
            return tasks[0] if tasks else None

        first = await eventually(running, what="the db task running")
        (volume,) = await client.list_volumes()
        assert volume.node_id == first.node_id, "pinned where the task was placed"
        holder = fake_cluster.hosts[hosts[first.node_id]].runtime
        assert DATA in {v.name for v in await holder.list_volumes({labels.VOLUME: DATA})}

        # A task that ends is replaced on the node that holds the data, however the others look.
        (container,) = await holder.list({labels.TASK_ID: first.id})
        holder.crash(container.id, 1)

        async def replaced() -> pb.Task | None:
            task = await running()
            return task if task is not None and task.id != first.id else None

        second = await eventually(replaced, within=20, what="a replacement task running")
        assert second.node_id == first.node_id

        # Removing is refused while the service mounts it; once the service is gone the host removes it.
        await client.delete_service("db")

        async def removed() -> pb.Volume | None:
            try:
                return await client.remove_volume(DATA)
            except ApiError as exc:  # a container still uses it until the agent stops it: the host refuses
                if "in use on this host" not in str(exc):
                    raise
                return None

        await eventually(removed, what="the volume removed")
        assert await client.list_volumes() == []
    assert DATA not in {v.name for v in await holder.list_volumes({})}
    assert fake_cluster.controller is not None
    assert await fake_cluster.controller.store.get_object(Kind.VOLUME, DATA) is None
