"""Tasks name their spec by revision: the store keeps each spec once, and agents still get what they run."""

from __future__ import annotations

import os

from controller.store.base import Kind
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, running
from tests.polling import eventually

BIG = "x" * (100 * 1024)
REPLICAS = 30


def big_spec(image: str = IMAGE) -> pb.ServiceSpec:
    spec = pb.ServiceSpec(name="fat", image=image, command=["sleep", "3600"], replicas=REPLICAS)
    spec.env["PAYLOAD"] = BIG
    spec.stop_grace_period.seconds = 1
    return spec


def db_bytes(cluster: FakeCluster) -> int:
    root = cluster.root / "controller"
    return sum(os.path.getsize(p) for p in root.iterdir() if p.name.startswith("controller.db"))


async def test_a_large_spec_is_stored_once_and_reaches_every_container(fake_cluster: FakeCluster) -> None:
    hosts = [await fake_cluster.start_agent(name) for name in ("h1", "h2")]
    async with fake_cluster.client() as client:
        await eventually(lambda: _nodes(client, 2), what="two nodes")
        await client.apply([big_spec()])
        await eventually(lambda: _running_total(hosts, REPLICAS), within=20, what=f"{REPLICAS} containers")

        assert fake_cluster.controller is not None
        store = fake_cluster.controller.store
        tasks = await store.list_tasks()
        assert len(tasks) == REPLICAS
        assert not any(t.HasField("spec") for t in tasks), "a stored task carries no copy of its spec"
        assert max(len(t.SerializeToString()) for t in tasks) < 2048
        # Every task event since the start is small too: the change feed holds no spec copies either.
        sizes = []
        async for event in store.watch(0):
            if event.kind is Kind.TASK:
                sizes.append(len(event.obj.SerializeToString()))
            if event.revision >= store.revision:
                break
        assert sizes and max(sizes) < 2048
        # The spec is stored for the service, its history and one service event: a few copies, not 30+.
        assert db_bytes(fake_cluster) < 12 * len(BIG), f"store holds {db_bytes(fake_cluster)} bytes"

        # The agents still ran the whole spec.
        for host in hosts:
            for container in await running(host, "fat"):
                env = host.runtime._containers[container.id].spec.env
                assert env["PAYLOAD"] == BIG

        # A new revision reaches the containers too, and old specs are found for what still runs.
        updated = big_spec()
        updated.env["PAYLOAD"] = BIG.replace("x", "y")
        await client.apply([updated])
        await eventually(lambda: _all_at_revision(client, 2), within=60, what="rollout to revision 2")
        for host in hosts:
            for container in await running(host, "fat"):
                assert host.runtime._containers[container.id].spec.env["PAYLOAD"][0] == "y"


async def _nodes(client, count: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await client.list_nodes()) == count


async def _running_total(hosts, count: int) -> bool:  # type: ignore[no-untyped-def]
    counts = [len(await running(h, "fat")) for h in hosts]
    return sum(counts) == count


async def _all_at_revision(client, revision: int) -> bool:  # type: ignore[no-untyped-def]
    tasks = await client.list_tasks("fat")
    live = [t for t in tasks if t.desired_state == pb.DESIRED_STATE_RUNNING]
    return len(live) == REPLICAS and all(
        t.revision == revision and t.status.state == pb.TASK_STATE_RUNNING for t in live
    )
