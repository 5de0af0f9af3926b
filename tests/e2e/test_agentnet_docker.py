"""agent.network with real Docker across two namespace hosts, each with its own dockerd.

h1 and h2 share no link: they reach each other only through a router namespace that knows nothing of the
cluster's subnets, so their containers talk over VXLAN. h1's dockerd manages iptables (FORWARD policy
DROP, DOCKER-USER, MASQUERADE), h2's runs as the dev cluster's (--iptables=false --ip-forward=false). The
agent's network code (NetworkManager with HostNetwork and DnsServer, in each host's namespace) sets them
up from one NetworkMap; containers made through the NetworkPreparer and container_spec then resolve each
other by name through Docker's embedded DNS and our server, reach each other within a network, and not
across networks. Namespaces are named `dkytest-an-<id>-*` and removed afterwards with the dockerds.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyroute2.netns import create_socket

from agent.container_spec import container_spec
from agent.network.dns import DnsServer, NameTable
from agent.network.host import HostNetwork
from agent.network.manager import NetworkManager
from agent.runtime.docker import DockerRuntime
from agent.task_book import TaskBook
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb
from tests.conftest import require_docker
from tests.e2e.netns import Namespaces, in_ns

pytestmark = pytest.mark.docker

# host -> (its address, its router, the dockerd manages iptables)
HOSTS = {"h1": ("192.168.30.11", "192.168.30.1", True), "h2": ("172.21.0.12", "172.21.0.1", False)}
SUBNETS = {
    ("dockyard", "h1"): "10.128.0.0/24",
    ("dockyard", "h2"): "10.128.1.0/24",
    ("shop_default", "h1"): "10.128.2.0/24",
    ("shop_default", "h2"): "10.128.3.0/24",
}


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {done.stdout} {done.stderr}")
    return done


@dataclass
class Hosts(Namespaces):
    root: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, host: str) -> str:
        return f"unix://{self.root / host}/docker.sock"

    def in_ns(self, host: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return in_ns(self.ns(host), *argv)

    def start(self, image: str) -> None:
        sw = self.add_ns("sw")
        self.in_ns("sw", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for index, (host, (address, router, iptables)) in enumerate(HOSTS.items()):
            name = self.add_ns(host)
            sh("ip", "-n", sw, "link", "add", f"v{host}", "type", "veth", "peer", "name", "eth0", "netns", name)
            sh("ip", "-n", sw, "addr", "add", f"{router}/24", "dev", f"v{host}")
            sh("ip", "-n", sw, "link", "set", f"v{host}", "up")
            sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            sh("ip", "-n", name, "route", "add", "default", "via", router)
            root = self.root / host
            for sub in ("d", "x"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / "daemon.json").write_text("{}\n")
            argv = [
                "nsenter",
                f"--net=/var/run/netns/{name}",
                "dockerd",
                "--config-file",
                str(root / "daemon.json"),
                "--data-root",
                str(root / "d"),
                "--exec-root",
                str(root / "x"),
                "--pidfile",
                str(root / "docker.pid"),
                "--host",
                self.url(host),
                "--bip",
                f"172.31.{240 + index}.1/24",
            ]
            if not iptables:
                argv += ["--iptables=false", "--ip-forward=false", "--ip-masq=false"]
            with open(root / "dockerd.log", "wb") as log:
                self.daemons[host] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        for host in HOSTS:
            deadline = time.monotonic() + 60
            while sh("docker", "-H", self.url(host), "info", check=False).returncode != 0:
                if self.daemons[host].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"dockerd of {host} did not start: {(self.root / host / 'dockerd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.2)
            subprocess.run(
                f"docker save {image} | docker -H {self.url(host)} load -q", shell=True, check=True, capture_output=True
            )

    def stop(self) -> None:
        for host, daemon in self.daemons.items():
            ids = sh("docker", "-H", self.url(host), "ps", "-aq", check=False).stdout.split()
            if ids:
                sh("docker", "-H", self.url(host), "rm", "-f", *ids, check=False)
            daemon.terminate()
        for daemon in self.daemons.values():
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        self.remove_namespaces()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def hosts(test_image: str) -> Iterator[Hosts]:
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in ("dockerd", "nsenter", "ip", "iptables")):
        require_docker("needs root, dockerd, nsenter, ip and iptables")
    # A short root: unix socket paths are limited to about 100 bytes.
    lab = Hosts(prefix=f"dkytest-an-{secrets.token_hex(2)}-", root=Path(tempfile.mkdtemp(prefix="dkyan-", dir="/tmp")))
    try:
        lab.start(test_image)
        yield lab
    finally:
        lab.stop()


def network_map() -> apb.NetworkMap:
    return apb.NetworkMap(
        version=1,
        pool="10.128.0.0/9",
        subnets=[
            apb.NetworkSubnet(network=network, node_id=host, node_address=HOSTS[host][0], subnet=cidr)
            for (network, host), cidr in SUBNETS.items()
        ],
    )


async def test_containers_on_two_dockerds_resolve_and_reach_each_other_by_network(
    hosts: Hosts, test_image: str
) -> None:
    managers: dict[str, NetworkManager] = {}
    runtimes: dict[str, DockerRuntime] = {}
    # Each host's tasks, from which its DNS server tells the stack of a container asking a bare name.
    books = {host: TaskBook(hosts.root / f"{host}-tasks.pb") for host in HOSTS}
    try:
        for host in HOSTS:
            runtimes[host] = DockerRuntime(hosts.url(host))
            path = f"/var/run/netns/{hosts.ns(host)}"
            dns = DnsServer(
                NameTable(), socket_factory=lambda kind, path=path: create_socket(path, socket.AF_INET, kind, flags=0)
            )
            managers[host] = NetworkManager(
                runtimes[host], host, host=HostNetwork(netns=hosts.ns(host)), dns=dns, book=books[host]
            )
            managers[host].update_map(network_map())
            assert await managers[host].reconcile() == []

        async def start(host: str, name: str, stack: str = "") -> str:
            spec = pb.ServiceSpec(
                name=f"{stack}_{name}" if stack else name, stack=stack, image=test_image, command=["sleep", "300"]
            )
            task = pb.Task(id=f"{host}{name}{stack}".ljust(12, "0"), service_name=spec.name, slot=1, spec=spec)
            books[host].upsert(task)
            attached = await managers[host].prepare(task)
            made = container_spec(
                task, host, networks=attached.networks, dns=attached.dns, dns_search=attached.dns_search
            )
            container = await runtimes[host].create(made)
            await runtimes[host].start(container)
            return container

        web, db = await start("h1", "web"), await start("h2", "db")
        shop_web, shop_db = await start("h1", "web", "shop"), await start("h2", "db", "shop")
        address = {}
        for key, host, container in (
            ("web", "h1", web),
            ("db", "h2", db),
            ("shop_web", "h1", shop_web),
            ("shop_db", "h2", shop_db),
        ):
            address[key] = next(iter((await runtimes[host].inspect(container)).addresses.values()))
        records = [
            apb.DnsRecord(name="web.dockyard", addresses=[address["web"]]),
            apb.DnsRecord(name="db.dockyard", addresses=[address["db"]]),
            apb.DnsRecord(name="web.shop.dockyard", addresses=[address["shop_web"]]),
            apb.DnsRecord(name="db.shop.dockyard", addresses=[address["shop_db"]]),
        ]
        for manager in managers.values():
            manager.update_dns(apb.DnsTable(version=1, full=True, records=records))

        async def run_in(host: str, container: str, command: str) -> tuple[int, str]:
            # Not subprocess.run: the DNS servers answer on this event loop.
            process = await asyncio.create_subprocess_exec(
                "docker",
                "-H",
                hosts.url(host),
                "exec",
                container,
                "sh",
                "-c",
                command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await process.communicate()
            return process.returncode or 0, output.decode()

        code, out = await run_in("h1", web, "ping -c1 -W2 db")  # a bare name, over VXLAN, into --iptables=false
        assert code == 0 and f"({address['db']})" in out, out
        code, out = await run_in("h1", shop_web, "ping -c1 -W2 db")  # the same bare name within stack shop
        assert code == 0 and f"({address['shop_db']})" in out, out
        code, out = await run_in("h2", shop_db, "ping -c1 -W2 web.shop.dockyard")  # into Docker-managed iptables
        assert code == 0 and f"({address['shop_web']})" in out, out
        assert (await run_in("h1", web, f"ping -c1 -W1 {address['shop_db']}"))[0] != 0  # networks isolated
        assert (await run_in("h2", db, f"ping -c1 -W1 {address['shop_web']}"))[0] != 0
        code, out = await run_in("h1", web, "nslookup nothere.dockyard")
        assert "NXDOMAIN" in out or "can't find" in out, out
        for manager in managers.values():
            manager.update_dns(
                apb.DnsTable(version=2, records=[apb.DnsRecord(name="db.dockyard", addresses=["10.128.1.99"])])
            )
        code, out = await run_in("h1", web, "nslookup db.dockyard")
        assert "10.128.1.99" in out, out
    finally:
        for manager in managers.values():
            await manager.close()
        for runtime in runtimes.values():
            await runtime.close()
