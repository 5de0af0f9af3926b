"""agent.network.manager: maps in (newest wins, kept on disk), Docker networks made and removed, the preparer."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from agent.network.dns import DnsServer, NameTable
from agent.network.manager import DNS_FILE, MAP_FILE, NetworkManager, NetworkNotReady
from agent.network.plan import NETWORK_LABEL, HostPlan, bridge_name
from agent.preparers import Attachments
from agent.runtime.base import NetworkAttachment, NetworkInUse
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from dockyard import labels
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


class RecordingHost:
    """A HostSide that keeps the plans it is asked to apply."""

    def __init__(self) -> None:
        self.applied: list[HostPlan] = []

    async def connected(self) -> list[IPv4Network]:
        return [IPv4Network("192.168.10.0/24")]

    async def apply(self, plan: HostPlan) -> list[str]:
        self.applied.append(plan)
        return []


def network_map(version: int, *networks: str) -> apb.NetworkMap:
    subnets = []
    for i, name in enumerate(networks):
        subnets.append(
            apb.NetworkSubnet(network=name, node_id="n1", node_address="192.168.10.1", subnet=f"10.128.{i}.0/24")
        )
        subnets.append(
            apb.NetworkSubnet(network=name, node_id="n2", node_address="192.168.10.2", subnet=f"10.128.{50 + i}.0/24")
        )
    return apb.NetworkMap(version=version, pool="10.128.0.0/9", subnets=subnets)


def task(stack: str = "", name: str = "web", networks: tuple[str, ...] = ()) -> pb.Task:
    spec = pb.ServiceSpec(name=f"{stack}_{name}" if stack else name, stack=stack, networks=list(networks))
    return pb.Task(id="t1", service_name=spec.name, spec=spec)


async def test_prepare_waits_for_a_subnet_then_attaches_with_dns() -> None:
    runtime = FakeRuntime()
    manager = NetworkManager(runtime, "n1")
    # A controller that never sent a map does no cluster networking: Docker's default bridge, as before.
    assert await manager.prepare(task()) == Attachments()
    assert manager.update_map(network_map(1, "shop_default"))
    with pytest.raises(NetworkNotReady, match="network dockyard has no subnet on this node yet"):
        await manager.prepare(task())
    assert manager.update_map(network_map(2, "dockyard", "shop_default", "shop_back"))

    plain = await manager.prepare(task())
    assert plain.networks == (NetworkAttachment("dockyard"),)
    assert plain.dns == ("10.128.0.1",) and plain.dns_search == ("dockyard",)

    stacked = await manager.prepare(task("shop", "web", ("shop_back", "shop_default")))
    assert [a.network for a in stacked.networks] == ["shop_back", "shop_default"]
    assert all(a.aliases == () for a in stacked.networks)  # Docker's DNS would shadow the cluster-wide answer
    assert stacked.dns == ("10.128.2.1",) and stacked.dns_search == ("shop.dockyard", "dockyard")
    assert (await manager.prepare(task("shop"))).networks == (NetworkAttachment("shop_default"),)

    made = {n.name: n for n in await runtime.list_networks({NETWORK_LABEL: "shop_back"})}
    assert made["shop_back"].subnet == "10.128.2.0/24" and made["shop_back"].gateway == "10.128.2.1"
    assert made["shop_back"].bridge == bridge_name("shop_back")
    assert manager.network_name("shop_back") == "shop_back" and manager.network_name("bridge") is None


async def test_reconcile_makes_networks_applies_the_host_plan_and_removes_what_left() -> None:
    runtime = FakeRuntime()
    host = RecordingHost()
    manager = NetworkManager(runtime, "n1", host=host)
    assert await manager.reconcile() == []  # no map yet: nothing is touched
    assert host.applied == []

    manager.update_map(network_map(1, "dockyard", "shop_default"))
    assert await manager.reconcile() == []
    assert manager.applied_version == 1
    assert [n.name for n in await runtime.list_networks({labels.MANAGED: "true"})] == ["dockyard", "shop_default"]
    # The peer n2 is on the host's link: direct routes.
    assert [(str(r.destination), r.vxlan) for r in host.applied[-1].routes] == [
        ("10.128.50.0/24", False),
        ("10.128.51.0/24", False),
    ]

    assert not manager.update_map(network_map(1, "dockyard"))  # not newer: ignored
    manager.update_map(network_map(2, "dockyard"))
    assert await manager.reconcile() == []
    assert [n.name for n in await runtime.list_networks({labels.MANAGED: "true"})] == ["dockyard"]
    assert manager.network_name("shop_default") is None


async def test_a_network_in_use_stays_until_its_containers_go() -> None:
    runtime = FakeRuntime()
    manager = NetworkManager(runtime, "n1")
    manager.update_map(network_map(1, "dockyard"))
    await manager.reconcile()

    removals: list[str] = []

    async def busy(name: str) -> None:
        removals.append(name)
        raise NetworkInUse(f"network {name} has containers")

    runtime.remove_network = busy  # type: ignore[method-assign]
    manager.update_map(network_map(2))
    assert await manager.reconcile() == []  # in use is not a failure: the next pass tries again
    assert removals == ["dockyard"]
    assert [n.name for n in await runtime.list_networks({labels.MANAGED: "true"})] == ["dockyard"]


async def test_the_map_and_dns_table_are_kept_and_read_back_after_a_restart(tmp_path: Path) -> None:
    first = NetworkManager(FakeRuntime(), "n1", state_dir=tmp_path)
    first.update_map(network_map(4, "dockyard"))
    assert (tmp_path / MAP_FILE).exists()
    first.update_dns(
        apb.DnsTable(version=3, full=True, records=[apb.DnsRecord(name="db.dockyard", addresses=["10.128.0.5"])])
    )
    first.update_dns(apb.DnsTable(version=4, records=[apb.DnsRecord(name="web.dockyard", addresses=["10.128.0.6"])]))
    assert not (tmp_path / DNS_FILE).exists()  # written once per burst of deltas, or at close
    await first.close()

    again = NetworkManager(FakeRuntime(), "n1", state_dir=tmp_path)
    again.load()
    assert again.plan.version == 4 and again.plan.network("dockyard") is not None
    assert again.table.version == 4
    assert [str(a) for a in again.table.lookup("web.dockyard") or ()] == ["10.128.0.6"]
    assert [str(a) for a in again.table.lookup("db.dockyard") or ()] == ["10.128.0.5"]
    (tmp_path / MAP_FILE).write_bytes(b"\xff\xff garbage")
    damaged = NetworkManager(FakeRuntime(), "n1", state_dir=tmp_path)
    damaged.load()  # logged, not raised: the controller's map will come
    assert damaged.plan.networks == ()


def test_dns_updates_reach_the_table() -> None:
    manager = NetworkManager(FakeRuntime(), "n1")
    manager.update_dns(
        apb.DnsTable(version=1, full=True, records=[apb.DnsRecord(name="web.dockyard", addresses=["10.128.0.2"])])
    )
    assert [str(a) for a in manager.table.lookup("web.dockyard") or ()] == ["10.128.0.2"]


async def test_the_dns_server_tells_a_bare_names_stack_from_the_book_of_this_nodes_tasks(tmp_path: Path) -> None:
    book = TaskBook(tmp_path / "tasks.pb")
    table = NameTable()
    table.apply(
        apb.DnsTable(
            version=1,
            full=True,
            records=[
                apb.DnsRecord(name="db.my.dockyard", addresses=["10.128.7.7"]),
                apb.DnsRecord(name="db.my_shop.dockyard", addresses=["10.128.0.5"]),
            ],
        )
    )
    dns = DnsServer(table, upstreams=lambda: [])
    NetworkManager(FakeRuntime(), "n1", dns=dns, book=book)
    await dns.listen_on([], {IPv4Network("10.128.0.0/24"): "my_shop_default"})
    question = DNSRecord.question("db").pack()
    source = IPv4Address("10.128.0.3")
    # No task of this node on my_shop_default: its stack cannot be told, and stack my's db is not answered.
    assert DNSRecord.parse(await dns.respond(question, source) or b"").header.rcode == RCODE.NXDOMAIN
    book.upsert(task("my_shop", "web"))
    reply = DNSRecord.parse(await dns.respond(question, source) or b"")
    assert [str(rr.rdata) for rr in reply.rr] == ["10.128.0.5"]
