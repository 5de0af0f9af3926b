"""The agent's network side: takes the controller's NetworkMap and DnsTable, keeps the host matching them,
and tells the worker how a task's container joins its networks (the NetworkPreparer).

A map is planned at once (pure, agent.network.plan), so `prepare` answers from the newest map; a loop then
makes Docker and the host match: a labelled bridge network per local subnet (runtime.ensure_network),
routes, VXLAN and iptables (agent.network.host), and the DNS server's listeners on the gateways. It runs
again on every newer map and every REPAIR_SECONDS (Docker or an operator may have changed things). Docker
networks of ours that the map no longer lists are removed once no container uses them.

Until a map arrives (from the controller or from the state dir, where the last one is kept) nothing is
changed: an agent restarted while the controller is away keeps what the host has. On shutdown nothing is
torn down either: containers keep running and reach each other (static stability).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Final, Protocol

import structlog
from google.protobuf.message import DecodeError

from agent.network.dns import DnsServer, LocalTask, NameTable
from agent.network.plan import NETWORK_LABEL, HostPlan, LocalNetwork, empty_plan, plan
from agent.preparers import Attachments
from agent.runtime.base import NetworkAttachment, NetworkInfo, NetworkInUse, RuntimeFailure
from agent.task_book import TaskBook
from dockyard import labels
from dockyard.clock import Clock, SystemClock
from dockyard.logs import Throttle
from dockyard.spec import stacks
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = ["DNS_FILE", "MAP_FILE", "REPAIR_SECONDS", "HostSide", "NetworkManager", "NetworkNotReady"]

log = structlog.get_logger()

# How often the host is checked against the map even when nothing new arrived.
REPAIR_SECONDS: Final = 30.0
# The last map and DNS table, so that a restarted agent knows its networks and names before (or without)
# the controller's answer.
MAP_FILE: Final = "network-map.pb"
DNS_FILE: Final = "dns-table.pb"
# Deltas come in bursts (the controller batches them for up to 200 ms); the table is written once per burst.
DNS_SAVE_DELAY: Final = 1.0


class NetworkNotReady(RuntimeFailure):
    """A task's network has no subnet on this node yet (or its Docker network cannot be made); tried again."""


class NetworkRuntime(Protocol):
    """The container runtime's network calls (agent.runtime.base.ContainerRuntime has them)."""

    async def ensure_network(
        self, name: str, subnet: str, gateway: str, bridge: str, labels: Mapping[str, str], masquerade: bool
    ) -> NetworkInfo:
        """Creates the bridge network unless it exists as asked."""
        ...

    async def list_networks(self, labels: Mapping[str, str]) -> list[NetworkInfo]:
        """The networks with all the given labels."""
        ...

    async def remove_network(self, name: str) -> None:
        """Removes the network; raises NetworkInUse while a container is attached."""
        ...


class HostSide(Protocol):
    """Routes, VXLAN and rules (agent.network.host.HostNetwork); absent where the agent must not touch the host."""

    async def connected(self) -> list[IPv4Network]:
        """The host's own link subnets."""
        ...

    async def apply(self, plan: HostPlan) -> list[str]:
        """Makes the host match the plan; returns what failed."""
        ...


class NetworkManager:
    """Keeps this node's networks as the newest map says; implements NetworkPreparer for the worker."""

    def __init__(
        self,
        runtime: NetworkRuntime,
        node_id: str,
        *,
        host: HostSide | None = None,
        dns: DnsServer | None = None,
        state_dir: Path | None = None,
        clock: Clock | None = None,
        repair_seconds: float = REPAIR_SECONDS,
        book: TaskBook | None = None,
    ) -> None:
        """`book` (this node's tasks) tells the DNS server the stack of a container asking a bare name."""
        self._runtime = runtime
        self._node_id = node_id
        self._host = host
        self.table = dns.table if dns is not None else NameTable()
        self._dns = dns
        if dns is not None and book is not None:
            dns.local_tasks = lambda: local_tasks(book)
        self._state_dir = state_dir
        self._clock: Clock = clock or SystemClock()
        self._repair = repair_seconds
        self._throttle = Throttle(self._clock, interval=60.0, burst=3)
        self._map: apb.NetworkMap | None = None
        self._connected: list[IPv4Network] = []
        self.plan: HostPlan = empty_plan()
        self._ensured: dict[str, LocalNetwork] = {}  # Docker networks known to match the plan
        self._wake = asyncio.Event()
        self._dns_save: asyncio.TimerHandle | None = None
        self.applied_version = 0  # the map version the host last fully matched (0: none)

    # -- input from the controller link --------------------------------------------------------------------

    def update_map(self, network_map: apb.NetworkMap) -> bool:
        """Takes a map unless an equal or newer one is held; plans it at once and wakes the loop. True if taken."""
        if self._map is not None and network_map.version <= self._map.version:
            return False
        self._map = network_map
        self._replan()
        self._save(network_map)
        self._wake.set()
        return True

    def update_dns(self, table: apb.DnsTable) -> None:
        """Applies a full DNS table or a delta (answers change at once)."""
        problems = self.table.apply(table)
        if problems and self._throttle.allow("dns-table") is not None:
            log.warning("dns table entries skipped", problems=problems[:5], count=len(problems))
        if self._state_dir is not None and self._dns_save is None:
            with contextlib.suppress(RuntimeError):  # no running loop (a synchronous caller): saved at close
                self._dns_save = asyncio.get_running_loop().call_later(DNS_SAVE_DELAY, self.save_dns)

    def save_dns(self) -> None:
        """Writes the DNS table to the state dir now."""
        self._dns_save = None
        if self._state_dir is not None:
            self._write(DNS_FILE, self.table.snapshot().SerializeToString())

    # -- NetworkPreparer ------------------------------------------------------------------------------------

    async def prepare(self, task: pb.Task) -> Attachments:
        """The task's networks as Docker attachments, with the first network's gateway as its DNS server.

        Raises NetworkNotReady when a network has no subnet on this node yet (the controller sends the map
        before the task, so this is a short wait) or its Docker network cannot be made now. Before any map
        has come (from the controller or the state dir) the controller does not do cluster networking:
        containers go on Docker's default bridge, as before it did.
        """
        if self._map is None:
            return Attachments()
        wanted = stacks.networks_of(task.spec)
        local: list[LocalNetwork] = []
        for name in wanted:
            network = self.plan.network(name)
            if network is None:
                raise NetworkNotReady(f"network {name} has no subnet on this node yet; waiting for the controller")
            local.append(network)
        for network in local:
            if self._ensured.get(network.name) != network:
                await self._ensure(network)
        # No aliases: Docker's embedded DNS would answer a service's short name itself, with this host's
        # containers only; without them it forwards the name to our server, which answers cluster-wide.
        return Attachments(
            networks=tuple(NetworkAttachment(n.name) for n in local),
            dns=(str(local[0].gateway),),
            dns_search=stacks.dns_search(task.spec),
        )

    def network_name(self, docker_name: str) -> str | None:
        """The cluster network of a Docker network: ours carry the cluster network's own name."""
        if self.plan.network(docker_name) is not None or docker_name in self._ensured:
            return docker_name
        return None

    # -- the loop ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Takes the map and DNS table kept in the state dir, if any (the controller's next ones replace them)."""
        saved_map = apb.NetworkMap()
        if self._read(MAP_FILE, saved_map):
            self.update_map(saved_map)
        saved_table = apb.DnsTable()
        if self._read(DNS_FILE, saved_table):
            self.table.apply(saved_table)

    def _read(self, name: str, message: apb.NetworkMap | apb.DnsTable) -> bool:
        if self._state_dir is None:
            return False
        try:
            message.ParseFromString((self._state_dir / name).read_bytes())
        except FileNotFoundError:
            return False
        except (OSError, DecodeError) as exc:
            log.warning("kept network state not read; waiting for the controller's", file=name, error=str(exc))
            return False
        return True

    async def run(self) -> None:
        """Reconciles on every newer map and every repair period, until cancelled; never tears anything down."""
        try:
            while True:
                if self._map is not None:
                    await self.reconcile()
                with contextlib.suppress(TimeoutError):
                    async with self._clock.timeout(self._repair):
                        await self._wake.wait()
                self._wake.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        """Keeps the DNS table, stops the DNS listeners; routes, rules and Docker networks stay (static stability)."""
        if self._dns_save is not None:
            self._dns_save.cancel()
            self.save_dns()
        if self._dns is not None:
            await self._dns.close()

    async def reconcile(self) -> list[str]:
        """Makes Docker, the host and the DNS listeners match the newest map; returns (and logs) what failed."""
        network_map = self._map
        if network_map is None:
            return []
        self._wake.clear()
        problems: list[str] = []
        if self._host is not None:
            try:
                self._connected = await self._host.connected()
            except Exception as exc:  # netlink trouble must not stop the rest
                problems.append(f"host links not read: {exc}")
            self._replan()
        current = self.plan
        problems += current.problems
        for network in current.networks:
            try:
                await self._ensure(network)
            except NetworkNotReady as exc:
                problems.append(str(exc))
        if self._host is not None:
            problems += await self._host.apply(current)
        if self._dns is not None:
            problems += await self._dns.listen_on(current.dns_addresses, {n.subnet: n.name for n in current.networks})
        problems += await self._remove_stale(current)
        if problems:
            if self._throttle.allow("reconcile") is not None:
                log.warning("network not fully applied", version=current.version, problems=problems[:10])
        elif self.applied_version != current.version:
            log.info(
                "network map applied",
                version=current.version,
                networks=[n.name for n in current.networks],
                routes=len(current.routes),
                vxlan_peers=len(current.vxlan.peers) if current.vxlan else 0,
            )
        if not problems:
            self.applied_version = current.version
        return problems

    def _replan(self) -> None:
        if self._map is not None:
            self.plan = plan(self._map, self._node_id, self._connected)

    async def _ensure(self, network: LocalNetwork) -> None:
        try:
            await self._make(network)
        except RuntimeFailure:
            # A network the map dropped may still hold this subnet ("Pool overlaps"): the controller gives a
            # removed network's subnet to the next one, and the loop would remove the old Docker network only on
            # its next pass, up to REPAIR_SECONDS later. Or a concurrent caller made this one meanwhile. Remove
            # what is stale and unused now, and try once more.
            await self._remove_stale(self.plan)
            try:
                await self._make(network)
            except RuntimeFailure as exc:
                raise NetworkNotReady(f"docker network {network.name} ({network.subnet}) not ready: {exc}") from exc
        self._ensured[network.name] = network

    async def _make(self, network: LocalNetwork) -> None:
        await self._runtime.ensure_network(
            network.name,
            str(network.subnet),
            str(network.gateway),
            network.bridge,
            network.labels,
            # Docker's NAT to the outside; cluster traffic is exempted by DOCKYARD-POSTROUTING.
            masquerade=not network.internal,
        )

    async def _remove_stale(self, current: HostPlan) -> list[str]:
        try:
            ours = await self._runtime.list_networks({labels.MANAGED: "true"})
        except RuntimeFailure as exc:
            return [f"docker networks not listed: {exc}"]
        problems: list[str] = []
        for info in ours:
            if NETWORK_LABEL not in info.labels or current.network(info.name) is not None:
                continue
            try:
                await self._runtime.remove_network(info.name)
                self._ensured.pop(info.name, None)
                log.info("docker network removed", network=info.name)
            except NetworkInUse:
                pass  # its containers go with their tasks; the next pass removes it
            except RuntimeFailure as exc:
                problems.append(f"docker network {info.name} not removed: {exc}")
        return problems

    def _save(self, network_map: apb.NetworkMap) -> None:
        if self._state_dir is not None:
            self._write(MAP_FILE, network_map.SerializeToString())

    def _write(self, name: str, data: bytes) -> None:
        assert self._state_dir is not None
        path = self._state_dir / name
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as exc:
            if self._throttle.allow(f"save {name}") is not None:
                log.warning("network state not kept", file=name, error=str(exc))

    @property
    def dns_addresses(self) -> Sequence[IPv4Address]:
        """Where the DNS server should listen now (the local gateways)."""
        return self.plan.dns_addresses


def local_tasks(book: TaskBook) -> list[LocalTask]:
    """The book's tasks whose spec is known, with the addresses the worker last reported for them."""
    found: list[LocalTask] = []
    for task in book:
        spec = book.spec_of(task)
        if spec is not None:
            found.append(LocalTask(spec, task.status.addresses))
    return found
