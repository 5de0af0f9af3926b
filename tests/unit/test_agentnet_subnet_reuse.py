"""A removed network's subnet given to a new network: the new one is made at once, not a repair period later.

Found on the dev cluster (bench/apps.py): `dockyard stack rm a` then `dockyard apply` of stack b took 33-38 s,
because the controller gave b_default the subnet a_default had on each node, Docker refused the new network
("Pool overlaps with other one on this address space") while the old one was still there, and the manager
removed the old one only on its next 30 s pass.
"""

from __future__ import annotations

import pytest

from agent.network.manager import NetworkManager, NetworkNotReady
from agent.runtime.base import NetworkInUse
from agent.runtime.fake import FakeRuntime
from dockyard import labels
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


def only(version: int, network: str) -> apb.NetworkMap:
    """A map where this node (n1) has one network, always on the same subnet."""
    subnet = apb.NetworkSubnet(network=network, node_id="n1", node_address="192.168.10.1", subnet="10.128.7.0/24")
    return apb.NetworkMap(version=version, pool="10.128.0.0/9", subnets=[subnet])


def task(stack: str) -> pb.Task:
    spec = pb.ServiceSpec(name=f"{stack}_web", stack=stack)
    return pb.Task(id="t1", service_name=spec.name, spec=spec)


async def names(runtime: FakeRuntime) -> list[str]:
    return sorted(n.name for n in await runtime.list_networks({labels.MANAGED: "true"}))


async def test_a_reused_subnet_replaces_the_stale_network_when_a_task_needs_it() -> None:
    runtime = FakeRuntime()
    manager = NetworkManager(runtime, "n1")
    manager.update_map(only(1, "a_default"))
    await manager.reconcile()
    assert await names(runtime) == ["a_default"]
    # Stack a went, stack b came: same subnet. The task asks before the loop's next pass.
    manager.update_map(only(2, "b_default"))
    attachments = await manager.prepare(task("b"))
    assert [a.network for a in attachments.networks] == ["b_default"]
    assert await names(runtime) == ["b_default"]


async def test_a_stale_network_still_in_use_keeps_the_task_waiting_with_the_reason() -> None:
    runtime = FakeRuntime()
    manager = NetworkManager(runtime, "n1")
    manager.update_map(only(1, "a_default"))
    await manager.reconcile()

    async def busy(name: str) -> None:
        raise NetworkInUse(f"network {name} has containers")

    runtime.remove_network = busy  # type: ignore[method-assign]
    manager.update_map(only(2, "b_default"))
    with pytest.raises(NetworkNotReady, match=r"b_default .* not ready: Pool overlaps"):
        await manager.prepare(task("b"))
    assert await names(runtime) == ["a_default"]
