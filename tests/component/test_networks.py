"""Networks and service discovery end to end: the real controller (network role, dispatcher) and simulated
agents over mutual TLS (agent.testing.fleet), which keep the NetworkMap and DnsTable they are sent and report
an address for each network of a running task, as the worker does.

Proven: every node gets its map; a new node's subnet reaches the others' maps and a removed node's subnet
leaves every map; a task that turns running reaches every agent's DNS table (the time it took, by the
controller's clock, is printed, not asserted) and leaves it when it stops; a stack's tasks get addresses in
their node's subnet of the stack's network, which therefore reached the agent no later than the task.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.agent import Agent
from agent.runtime.base import HealthStatus
from agent.testing.fleet import Fleet, FleetConfig, FleetJoin, SimAgent
from controller.errors import StartupError
from controller.network.allocate import DEFAULT_POOL
from controller.store.base import Put
from dockyard.client import ApiError, Client
from dockyard.spec.stacks import CLUSTER_NETWORK
from dockyard.timestamps import from_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, HostUnderTest, running
from tests.polling import eventually

POOL = ipaddress.IPv4Network(DEFAULT_POOL)


@pytest.fixture
async def fleet(fake_cluster: FakeCluster) -> AsyncIterator[Fleet]:
    """Simulated agents joined to the fake cluster's controller (none started yet: `add` them)."""
    config = FleetConfig(ramp=0.0, heartbeat_period=0.2, step_delay=(0.0, 0.02), status_interval=0.02)
    join = FleetJoin(f"127.0.0.1:{fake_cluster.join_port}", fake_cluster.token())
    async with Fleet(f"127.0.0.1:{fake_cluster.port}", config, join=join) as sims:
        yield sims


async def start(fleet: Fleet, count: int) -> list[SimAgent]:
    await fleet.enroll(count)
    agents = fleet.add(count)
    await fleet.wait_connected(within=10)
    return agents


def cluster_map(agent: SimAgent) -> dict[str, tuple[str, str]]:
    """node id -> (subnet, node address) of the cluster network, as the agent's newest map says."""
    current = agent.host.network_map
    if current is None:
        return {}
    return {s.node_id: (s.subnet, s.node_address) for s in current.subnets if s.network == CLUSTER_NETWORK}


async def test_maps_follow_nodes_joining_and_leaving(fake_cluster: FakeCluster, fleet: Fleet) -> None:
    first = await start(fleet, 2)

    async def maps_list(agents: list[SimAgent]) -> bool:
        wanted = {a.node_id for a in agents}
        return all(set(cluster_map(a)) == wanted for a in agents)

    await eventually(lambda: maps_list(first), within=10, what="both nodes' subnets in both maps")
    subnets = cluster_map(first[0])
    assert cluster_map(first[1]) == subnets
    assert all(address == "127.0.0.1" for _, address in subnets.values())  # where the peers are reached
    nets = [ipaddress.IPv4Network(s) for s, _ in subnets.values()]
    assert all(n.prefixlen == 24 and n.subnet_of(POOL) for n in nets) and len(set(nets)) == 2

    # A third node: its subnet reaches the others; theirs are unchanged.
    (third,) = await start(fleet, 1)
    everyone = [*first, third]
    await eventually(lambda: maps_list(everyone), within=10, what="the new node's subnet in every map")
    grown = cluster_map(first[0])
    assert {n: grown[n] for n in subnets} == subnets

    # It is removed: its subnet leaves every map, and the network's record.
    fleet.lose(1, among=[third])
    async with fake_cluster.client() as client:
        await client.remove_node(third.node_id, force=True)
        await eventually(lambda: maps_list(first), within=10, what="the removed node's subnet gone from every map")
        (cluster,) = [n for n in await client.list_networks() if n.name == CLUSTER_NETWORK]
        assert dict(cluster.subnets) == {n: s for n, (s, _) in subnets.items()}


async def running_task(client: Client, service: str, count: int) -> list[pb.Task]:
    """The service's running tasks once exactly `count` run with their addresses reported, else []."""
    tasks = [t for t in await client.list_tasks(service=service) if t.status.state == pb.TASK_STATE_RUNNING]
    return tasks if len(tasks) == count and all(t.status.addresses for t in tasks) else []


async def test_dns_follows_running_tasks_within_a_second(fake_cluster: FakeCluster, fleet: Fleet) -> None:
    agents = await start(fleet, 2)
    async with fake_cluster.client() as client:
        await eventually(
            lambda: _async(all(len(cluster_map(a)) == 2 for a in agents)), within=10, what="every node's subnet"
        )
        await client.apply([pb.ServiceSpec(name="api", image="img:1", replicas=1)])
        (task,) = await eventually(lambda: running_task(client, "api", 1), within=10, what="api running")
        address = task.status.addresses[CLUSTER_NETWORK]
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cluster_map(agents[0])[task.node_id][0])

        name = "api.dockyard"
        await eventually(
            lambda: _async(all(a.dns.get(name) == (address,) for a in agents)), within=5, what="api in every DNS table"
        )
        running_since = from_timestamp(task.status.timestamp)
        assert running_since is not None
        took = max(a.dns_changed_at[name] for a in agents) - running_since
        ms = took.total_seconds() * 1000
        print(f"\nDNS: a task running at the controller reached all {len(agents)} agents' tables in {ms:.0f} ms")

        # A stack's service joins its default network: its tasks' addresses are in their node's subnet of it.
        stack = cpb.ApplyServiceRequest(stack="shop")
        await client.apply([pb.ServiceSpec(name="shop_web", stack="shop", image="img:1", replicas=2)], extras=stack)
        webs = await eventually(lambda: running_task(client, "shop_web", 2), within=10, what="shop_web running")
        (shop,) = [n for n in await client.list_networks() if n.name == "shop_default"]
        assert shop.stack == "shop"
        for web in webs:
            own = ipaddress.IPv4Network(shop.subnets[web.node_id])
            assert ipaddress.IPv4Address(web.status.addresses["shop_default"]) in own
        addresses = tuple(sorted((w.status.addresses["shop_default"] for w in webs), key=ipaddress.IPv4Address))
        await eventually(
            lambda: _async(all(a.dns.get("web.shop.dockyard") == addresses for a in agents)),
            within=5,
            what="the stack's service under its stack's name in every DNS table",
        )

        # Stopped: the name leaves every table.
        await client.scale("api", 0)
        await eventually(lambda: _async(all(name not in a.dns for a in agents)), within=5, what="api gone from DNS")
        assert all("web.shop.dockyard" in a.dns for a in agents)


async def _async(value: bool) -> bool:
    return value


async def test_network_api_and_refusals(fake_cluster: FakeCluster) -> None:
    async with fake_cluster.client() as client:
        names = [n.name for n in await client.list_networks()]
        assert names == [CLUSTER_NETWORK], "the cluster network exists from the start"
        made = await client.create_network("backend", {"team": "a"}, internal=True)
        assert (made.name, made.internal, dict(made.labels), dict(made.subnets)) == ("backend", True, {"team": "a"}, {})
        with pytest.raises(ApiError, match="exists"):
            await client.create_network("backend")
        with pytest.raises(ApiError, match="exists"):
            await client.create_network(CLUSTER_NETWORK)
        with pytest.raises(ApiError, match=r"network\.name"):
            await client.create_network("-bad name")
        await client.apply([pb.ServiceSpec(name="worker", image="img:1", replicas=0, networks=["backend"])])
        with pytest.raises(ApiError, match=r"used by service.*worker"):
            await client.remove_network("backend")
        with pytest.raises(ApiError, match="cluster network"):
            await client.remove_network(CLUSTER_NETWORK)
        with pytest.raises(ApiError, match="not found"):
            await client.remove_network("nowhere")
        await client.delete_service("worker")
        removed = await client.remove_network("backend")
        assert removed.name == "backend"
        assert [n.name for n in await client.list_networks()] == [CLUSTER_NETWORK]


async def test_real_agents_learn_a_name_when_its_task_turns_healthy_and_lose_it_when_unhealthy(
    fake_cluster: FakeCluster,
) -> None:
    # Real agents (agent.Agent on fake runtimes): the worker reports the container's address, the agent's
    # network manager keeps the DNS table its server answers from.
    hosts = [await fake_cluster.start_agent(name) for name in ("h1", "h2")]
    check = pb.HealthCheck(test=["CMD-SHELL", "probe-set-by-the-test"])
    async with fake_cluster.client() as client:
        await client.apply([pb.ServiceSpec(name="db", image=IMAGE, replicas=1, healthcheck=check)])

        async def starting() -> list[pb.Task]:
            # Its container runs and has its address; the task is not RUNNING until its health check passes.
            tasks = await client.list_tasks(service="db")
            started = [t for t in tasks if t.status.health.state == pb.TaskHealth.STATE_STARTING]
            return started if started and started[0].status.addresses else []

        (task,) = await eventually(starting, within=10, what="db running, its health starting, its address reported")
        address = task.status.addresses[CLUSTER_NETWORK]
        (cluster,) = [n for n in await client.list_networks() if n.name == CLUSTER_NETWORK]
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cluster.subnets[task.node_id])
        name = "db.dockyard"
        assert all(_agent(h).network.table.lookup(name) is None for h in hosts), "starting: not answered yet"

        (host,) = [h for h in hosts if h.name == _hostname(await client.list_nodes(), task.node_id)]
        (container,) = await running(host, "db")
        healthy_at = datetime.now(UTC)
        host.runtime.set_health(container.id, HealthStatus.HEALTHY)
        want = (ipaddress.IPv4Address(address),)
        await eventually(
            lambda: _async(all(_agent(h).network.table.lookup(name) == want for h in hosts)),
            within=5,
            what="db answered by every agent",
        )
        ms = (datetime.now(UTC) - healthy_at).total_seconds() * 1000
        print(f"\nDNS: a container turning healthy was answered by every agent within {ms:.0f} ms")

        host.runtime.set_health(container.id, HealthStatus.UNHEALTHY)
        await eventually(
            lambda: _async(all(_agent(h).network.table.lookup(name) is None for h in hosts)),
            within=5,
            what="db no longer answered once unhealthy",
        )


def _agent(host: HostUnderTest) -> Agent:
    assert host.agent is not None
    return host.agent


def _hostname(nodes: list[pb.Node], node_id: str) -> str:
    return next(n.description.hostname for n in nodes if n.id == node_id)


async def test_a_controller_refuses_a_pool_that_leaves_stored_subnets_outside(tmp_path: Path) -> None:
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        assert cluster.controller is not None
        network = pb.Network(id="net1", name="shop_default", subnets={"n1": "10.128.5.0/24"})
        node = pb.Node(id="n1", status=pb.NODE_STATUS_READY)  # a subnet of a node not in the cluster is released
        await cluster.controller.store.commit([Put(node), Put(network)])
    finally:
        await cluster.stop_controller()
    with pytest.raises(StartupError, match=r"^--network-pool 10\.214\.0\.0/16: stored subnets lie outside it "):
        await cluster.start_controller(network_pool="10.214.0.0/16")
    await cluster.stop_controller()  # closes the store the refused start opened
    await cluster.start_controller()  # the pool that holds them starts
    await cluster.close()
