"""The network role over a real store: the cluster network at start, subnets for ready nodes and for placed
tasks' networks, a stack's implicit default network, releases when a node is removed, and nothing written
when nothing changes."""

from __future__ import annotations

import ipaddress
import itertools

from controller.network.role import NetworkRole
from controller.store.base import Delete, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.spec.stacks import CLUSTER_NETWORK
from dockyard.v1 import types_pb2 as pb

POOL = ipaddress.IPv4Network("10.128.0.0/9")


def ids() -> itertools.count[int]:
    return itertools.count(1)


def node(node_id: str, status: int = pb.NODE_STATUS_READY) -> pb.Node:
    return pb.Node(id=node_id, status=status)  # type: ignore[arg-type]


async def networks(store: SqliteStore) -> dict[str, dict[str, str]]:
    return {n.name: dict(n.subnets) for n in await store.list_objects(Kind.NETWORK) if isinstance(n, pb.Network)}


async def test_subnets_follow_nodes_and_placed_tasks() -> None:
    counter = ids()
    async with SqliteStore(":memory:") as store:
        role = NetworkRole(store, FakeClock(), POOL, lambda: f"net{next(counter)}")
        await role.ensure_cluster_network()
        await role.ensure_cluster_network()  # once only
        assert await networks(store) == {CLUSTER_NETWORK: {}}

        await store.commit([Put(node("n1")), Put(node("n2", pb.NODE_STATUS_DOWN))])
        assert await role.reconcile(None) is None
        assert await networks(store) == {CLUSTER_NETWORK: {"n1": "10.128.0.0/24"}}  # only the ready node

        # A stack's service: its default network is made as soon as the service is.
        spec = pb.ServiceSpec(name="shop_web", stack="shop", image="img")
        service = pb.Service(id="svc", name="shop_web", revision=1, spec_revision=1, spec=spec)
        await store.commit([Put(service)])
        await role.reconcile(None)
        made = {n.name: n for n in await store.list_objects(Kind.NETWORK) if isinstance(n, pb.Network)}
        assert made["shop_default"].stack == "shop" and dict(made["shop_default"].subnets) == {}

        # Its task is placed on n2 (down now, so no cluster subnet): n2 gets a shop_default subnet only.
        placed = pb.Task(id="t1", service_id="svc", revision=1, node_id="n2", desired_state=pb.DESIRED_STATE_RUNNING)
        placed.status.state = pb.TASK_STATE_ASSIGNED
        await store.commit([Put(placed)])
        await role.reconcile(None)
        assert await networks(store) == {
            CLUSTER_NETWORK: {"n1": "10.128.0.0/24"},
            "shop_default": {"n2": "10.128.1.0/24"},
        }
        revision = store.revision
        await role.reconcile(None)
        assert store.revision == revision, "nothing to change: nothing written"

        # n2 is removed: its subnets go; n1's stays where it was.
        await store.commit([Delete(Kind.NODE, "n2")])
        await role.reconcile(None)
        assert await networks(store) == {CLUSTER_NETWORK: {"n1": "10.128.0.0/24"}, "shop_default": {}}
