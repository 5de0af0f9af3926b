"""agent.network against real network namespaces: routes, VXLAN, isolation rules and the DNS server.

The topology, all in namespaces named `dkytest-an-<id>-*` (removed afterwards; nothing in the machine's own
namespace is touched):

    h1 eth0 192.168.10.11/24 --+
                                +-- br0 in `sw` (192.168.10.1, forwarding) -- 172.20.0.1/24 -- h3 eth0 172.20.0.13/24
    h2 eth0 192.168.10.12/24 --+

h1 and h2 share a link, so their subnets are routed directly; h3 is only reachable routed through `sw`,
which knows nothing of the cluster's subnets, so h1 <-> h3 goes over VXLAN. On every host a bridge per
network (named as Docker's would be) holds the gateway, and a "container" namespace hangs off it by a
veth, as a Docker container would.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from dnslib import RCODE, DNSRecord
from pyroute2.netns import create_socket

from agent.main import main as agent_main
from agent.network.cleanup import Cleanup, clean_host
from agent.network.dns import DnsServer, LocalTask, NameTable
from agent.network.host import HostNetwork
from agent.network.manager import DNS_FILE, MAP_FILE
from agent.network.plan import HOOKS, NETWORK_LABEL, ROUTE_PROTOCOL, VXLAN_DEVICE, bridge_name, gateway_of, plan
from agent.runtime.base import ContainerSpec, NetworkAttachment
from agent.runtime.fake import FakeRuntime
from dockyard import labels
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.e2e.netns import Namespaces, in_ns

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in ("ip", "nsenter", "iptables", "busybox")),
    reason="needs root, ip, nsenter, iptables and busybox",
)

POOL = "10.128.0.0/9"
ADDRESSES = {"h1": "192.168.10.11", "h2": "192.168.10.12", "h3": "172.20.0.13"}
SUBNETS = {
    ("dockyard", "h1"): "10.128.0.0/24",
    ("dockyard", "h2"): "10.128.1.0/24",
    ("dockyard", "h3"): "10.128.2.0/24",
    ("shop_default", "h1"): "10.128.3.0/24",
    ("shop_default", "h3"): "10.128.4.0/24",
}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


class Lab(Namespaces):
    def container(self, host: str, network: str, index: int = 1) -> str:
        """A namespace standing in for a container on `network` of `host`: address .(1 + index) of its subnet."""
        subnet = IPv4Network(SUBNETS[(network, host)])
        gateway = gateway_of(subnet)
        host_ns = self.ns(host)
        bridge = bridge_name(network)
        if in_ns(host_ns, "ip", "link", "show", bridge, check=False).returncode != 0:
            sh("ip", "-n", host_ns, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", host_ns, "addr", "add", f"{gateway}/{subnet.prefixlen}", "dev", bridge)
            sh("ip", "-n", host_ns, "link", "set", bridge, "up")
        ns = self.add_ns(f"{host}-{network[:4]}{index}")
        veth = f"c{network[:4]}{index}"
        sh("ip", "-n", host_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", host_ns, "link", "set", veth, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{gateway + index}/{subnet.prefixlen}", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", str(gateway))
        return ns

    def reaches(self, ns: str, address: IPv4Address) -> bool:
        return in_ns(ns, "busybox", "ping", "-c", "1", "-W", "1", str(address), check=False).returncode == 0


def address_of(host: str, network: str) -> IPv4Address:
    return gateway_of(IPv4Network(SUBNETS[(network, host)])) + 1


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(prefix=f"dkytest-an-{secrets.token_hex(2)}-")
    try:
        sw = lab.add_ns("sw")
        sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", sw, "addr", "add", "192.168.10.1/24", "dev", "br0")
        sh("ip", "-n", sw, "link", "set", "br0", "up")
        in_ns(sw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for host, address in ADDRESSES.items():
            ns = lab.add_ns(host)
            sh("ip", "-n", sw, "link", "add", f"v{host}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            if host == "h3":
                sh("ip", "-n", sw, "addr", "add", "172.20.0.1/24", "dev", f"v{host}")
                sh("ip", "-n", sw, "link", "set", f"v{host}", "up")
                sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "route", "add", "192.168.10.0/24", "via", "172.20.0.1")
            else:
                sh("ip", "-n", sw, "link", "set", f"v{host}", "master", "br0", "up")
                sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                sh("ip", "-n", ns, "link", "set", "eth0", "up")
                sh("ip", "-n", ns, "route", "add", "172.20.0.0/24", "via", "192.168.10.1")
            # As the dev cluster's hosts (dockerd --ip-forward=false): forwarding starts off.
            in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
        yield lab
    finally:
        lab.remove_namespaces()


def network_map(version: int, hosts: tuple[str, ...] = ("h1", "h2", "h3")) -> apb.NetworkMap:
    return apb.NetworkMap(
        version=version,
        pool=POOL,
        subnets=[
            apb.NetworkSubnet(network=network, node_id=host, node_address=ADDRESSES[host], subnet=cidr)
            for (network, host), cidr in SUBNETS.items()
            if host in hosts
        ],
    )


async def apply(lab: Lab, host: str, version: int, hosts: tuple[str, ...] = ("h1", "h2", "h3")) -> HostNetwork:
    net = HostNetwork(netns=lab.ns(host))
    host_plan = plan(network_map(version, hosts), host, await net.connected())
    assert await net.apply(host_plan) == []
    return net


async def test_routes_and_vxlan_fdb_follow_the_map(lab: Lab) -> None:
    h1 = await apply(lab, "h1", 1)
    assert await h1.routes() == [
        ("10.128.1.0/24", "192.168.10.12", False),
        ("10.128.2.0/24", "10.128.2.0", True),
        ("10.128.4.0/24", "10.128.4.0", True),
    ]
    assert [address for _, address in await h1.fdb()] == ["172.20.0.13"]
    again = await apply(lab, "h1", 1)  # idempotent: nothing changes, nothing fails
    assert await again.routes() == await h1.routes()

    await apply(lab, "h1", 2, hosts=("h1", "h2"))  # h3 left the cluster
    assert await h1.routes() == [("10.128.1.0/24", "192.168.10.12", False)]
    assert await h1.fdb() == []
    assert in_ns(lab.ns("h1"), "ip", "link", "show", VXLAN_DEVICE, check=False).returncode != 0

    await apply(lab, "h1", 3)  # and came back
    assert [vxlan for _, _, vxlan in await h1.routes()] == [False, True, True]

    assert await h1.clear() == []
    assert await h1.routes() == [] and await h1.fdb() == []
    assert await h1.chain("filter", "DOCKYARD-FORWARD") == []
    assert all(
        "DOCKYARD" not in in_ns(lab.ns("h1"), "iptables", "-t", table, "-S", chain, check=False).stdout
        for table, chain, _ in HOOKS
    )


async def test_traffic_flows_direct_and_over_vxlan_and_networks_are_isolated(lab: Lab) -> None:
    c = {
        (host, network): lab.container(host, network)
        for host, network in (("h1", "dockyard"), ("h2", "dockyard"), ("h3", "dockyard"), ("h1", "shop_default"))
    }
    c[("h3", "shop_default")] = lab.container("h3", "shop_default")
    # h1 as a host where dockerd manages iptables: FORWARD drops by default and DOCKER-USER comes first.
    h1 = lab.ns("h1")
    in_ns(h1, "iptables", "-N", "DOCKER-USER")
    in_ns(h1, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
    in_ns(h1, "iptables", "-P", "FORWARD", "DROP")
    # As Docker does (it loads br_netfilter): frames switched within a bridge pass FORWARD too.
    in_ns(h1, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
    neighbour = lab.container("h1", "dockyard", index=2)
    for host in ADDRESSES:
        await apply(lab, host, 1)
    assert "-A DOCKER-USER -j DOCKYARD-FORWARD" in in_ns(h1, "iptables", "-S", "DOCKER-USER").stdout

    here = c[("h1", "dockyard")]
    assert lab.reaches(neighbour, address_of("h1", "dockyard"))  # same bridge, same host
    assert lab.reaches(here, address_of("h2", "dockyard"))  # direct route
    assert lab.reaches(here, address_of("h3", "dockyard"))  # VXLAN
    assert lab.reaches(c[("h1", "shop_default")], address_of("h3", "shop_default"))  # VXLAN, other network
    assert lab.reaches(c[("h3", "dockyard")], address_of("h2", "dockyard"))  # h3 -> h2 also over VXLAN
    # Different networks do not reach each other, across hosts or on one host.
    assert not lab.reaches(here, address_of("h3", "shop_default"))
    assert not lab.reaches(c[("h1", "shop_default")], address_of("h1", "dockyard"))
    h3_shop = address_of("h3", "shop_default")
    assert not lab.reaches(c[("h3", "dockyard")], h3_shop)
    # Control: h3 runs no other rules, so it is our chain that keeps its two networks apart.
    in_ns(lab.ns("h3"), "iptables", "-F", "DOCKYARD-FORWARD")
    assert lab.reaches(c[("h3", "dockyard")], h3_shop)
    await apply(lab, "h3", 2)  # and applying the map again restores the rules
    assert not lab.reaches(c[("h3", "dockyard")], h3_shop)

    # Cross-host traffic keeps the container's address (no NAT between cluster subnets).
    nat = in_ns(h1, "iptables", "-t", "nat", "-S", "POSTROUTING").stdout.splitlines()
    assert nat[1] == "-A POSTROUTING -j DOCKYARD-POSTROUTING"


async def test_dns_server_in_a_namespace_answers_containers_and_follows_deltas(lab: Lab) -> None:
    container = lab.container("h1", "dockyard")
    await apply(lab, "h1", 1)
    table = NameTable()
    table.apply(
        apb.DnsTable(version=1, full=True, records=[apb.DnsRecord(name="db.dockyard", addresses=["10.128.2.2"])])
    )
    server = DnsServer(
        table, upstreams=lambda: [], socket_factory=lambda kind: create_socket(lab.ns("h1"), socket.AF_INET, kind)
    )
    # The container is a task of no stack on the cluster network: its bare names are `<name>.dockyard`.
    server.local_tasks = lambda: [LocalTask(pb.ServiceSpec(name="app"), {})]
    gateway = gateway_of(IPv4Network(SUBNETS[("dockyard", "h1")]))
    try:
        assert await server.listen_on([gateway], {IPv4Network(SUBNETS[("dockyard", "h1")]): "dockyard"}) == []

        loop = asyncio.get_running_loop()
        client = create_socket(container, socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)

        async def ask(name: str) -> DNSRecord:
            await loop.sock_sendto(client, DNSRecord.question(name).pack(), (str(gateway), 53))
            async with asyncio.timeout(5):
                return DNSRecord.parse(await loop.sock_recv(client, 4096))

        try:
            assert [str(r.rdata) for r in (await ask("db.dockyard")).rr] == ["10.128.2.2"]
            assert [str(r.rdata) for r in (await ask("db")).rr] == ["10.128.2.2"]  # bare name, by the source
            assert (await ask("web.dockyard")).header.rcode == RCODE.NXDOMAIN
            table.apply(apb.DnsTable(version=2, records=[apb.DnsRecord(name="web.dockyard", addresses=["10.128.1.2"])]))
            started = loop.time()
            assert [str(r.rdata) for r in (await ask("web.dockyard")).rr] == ["10.128.1.2"]
            assert loop.time() - started < 1.0
        finally:
            client.close()
    finally:
        await server.close()


def _host_state(lab: Lab, host: str) -> tuple[str, str, str]:
    """Our routes, the VXLAN device and every iptables rule of the host, as text."""
    ns = lab.ns(host)
    routes = in_ns(ns, "ip", "route", "show", "proto", str(ROUTE_PROTOCOL)).stdout
    device = in_ns(ns, "ip", "-o", "link", "show", VXLAN_DEVICE, check=False).stdout
    rules = in_ns(ns, "iptables-save").stdout
    return routes, device, rules


async def test_cleaning_a_removed_hosts_network_leaves_nothing_of_ours(lab: Lab, tmp_path: Path) -> None:
    await apply(lab, "h1", 1)
    routes, device, rules = _host_state(lab, "h1")
    assert routes and device and "DOCKYARD-FORWARD" in rules, "the host has our state to clean"
    (tmp_path / MAP_FILE).write_bytes(network_map(1).SerializeToString())
    (tmp_path / DNS_FILE).write_bytes(b"")
    runtime = FakeRuntime(images=["app:1"])
    ours = {labels.MANAGED: "true", NETWORK_LABEL: "shop_default"}
    await runtime.ensure_network("shop_default", "10.128.3.0/24", "10.128.3.1", "dky-aaaa", ours, False)
    await runtime.ensure_network(
        "dockyard", "10.128.0.0/24", "10.128.0.1", "dky-bbbb", {**ours, NETWORK_LABEL: "d"}, False
    )
    await runtime.ensure_network("other_default", "10.77.0.0/24", "10.77.0.1", "br-compose", {}, False)
    used = await runtime.create(ContainerSpec("app-1", "app:1", networks=(NetworkAttachment("dockyard"),)))
    await runtime.start(used)

    done = await clean_host(HostNetwork(netns=lab.ns("h1")), runtime, tmp_path)

    assert done.problems == []
    assert (done.networks_removed, done.networks_in_use) == (["shop_default"], ["dockyard"])
    assert sorted(done.files_removed) == sorted(str(tmp_path / name) for name in (DNS_FILE, MAP_FILE))
    assert [n.name for n in await runtime.list_networks({})] == ["dockyard", "other_default"], "another's is kept"
    routes, device, rules = _host_state(lab, "h1")
    assert (routes, device) == ("", "")
    assert "DOCKYARD" not in rules
    assert "-A POSTROUTING" not in rules or "DOCKYARD-POSTROUTING" not in rules
    # Idempotent: a second run finds nothing and fails at nothing.
    again = await clean_host(HostNetwork(netns=lab.ns("h1")), None, tmp_path)
    assert again == Cleanup()


def test_cleanup_network_command_cleans_the_named_namespace(lab: Lab, tmp_path: Path) -> None:
    asyncio.run(apply(lab, "h2", 1))
    (tmp_path / MAP_FILE).write_bytes(b"")
    saved = structlog.get_config()  # the command sends logs to the runner's stderr; later tests keep theirs
    try:
        result = CliRunner().invoke(
            agent_main,
            [
                "cleanup-network",
                "--state-dir",
                str(tmp_path),
                "--netns",
                lab.ns("h2"),
                "--no-docker-networks",
                "-ojson",
            ],
        )
    finally:
        structlog.configure(**saved)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "networks_removed": [],
        "networks_in_use": [],
        "files_removed": [str(tmp_path / MAP_FILE)],
        "problems": [],
    }
    routes, device, rules = _host_state(lab, "h2")
    assert (routes, device) == ("", "") and "DOCKYARD" not in rules
