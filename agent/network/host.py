"""The host side of a plan: routes, the VXLAN device and its FDB/neighbour entries (pyroute2), our iptables chains.

Everything here is idempotent and touches only what agent.network.plan names: routes of protocol
ROUTE_PROTOCOL, the `dky-vxlan` device, the `DOCKYARD-*` chains and one jump to each. Applying a plan makes
the host match it, removing what an older plan made and this one does not list; `clear` removes it all.
It works in the agent's own network namespace, or in a named one (tests, and `nsenter`-style tooling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import IPv4Network, ip_interface
from pathlib import Path
from typing import Any, Final

import structlog
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.network.plan import (
    HOOKS,
    LINK_PREFIX,
    ROUTE_PROTOCOL,
    VXLAN_DEVICE,
    VXLAN_MTU,
    VXLAN_PORT,
    VXLAN_VNI,
    HostPlan,
    Route,
    VxlanPlan,
    empty_plan,
    restore_input,
)

__all__ = ["HostNetwork", "HostNetworkError"]

log = structlog.get_logger()

NETNS_DIR: Final = Path("/var/run/netns")
_ONLINK: Final = 4  # RTNH_F_ONLINK: the next hop is on the device even without an address there
_NUD_PERMANENT: Final = 0x80
_MAIN_TABLE: Final = 254
_COMMAND_SECONDS: Final = 20.0
_NOT_FOUND: Final = (2, 3, 19)  # ENOENT, ESRCH, ENODEV: already gone


class HostNetworkError(Exception):
    """A command or netlink call that changes the host failed; the message says which and why."""


class HostNetwork:
    """Applies host plans in one network namespace: None is the agent's own, else a name under /var/run/netns."""

    def __init__(self, netns: str | None = None, iptables: str = "iptables") -> None:
        self.netns = netns
        self._iptables = iptables

    def _ipr(self) -> AsyncIPRoute:
        # flags=0: never create a namespace that is not there.
        return AsyncIPRoute(netns=str(NETNS_DIR / self.netns), flags=0) if self.netns else AsyncIPRoute()

    async def _run(self, *argv: str, stdin: str | None = None, check: bool = True) -> tuple[int, str]:
        prefix = ["nsenter", f"--net={NETNS_DIR / self.netns}", "--"] if self.netns else []
        process = await asyncio.create_subprocess_exec(
            *prefix,
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(_COMMAND_SECONDS):
                output, _ = await process.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise HostNetworkError(f"{' '.join(argv)}: no answer within {_COMMAND_SECONDS:g}s") from None
        text = output.decode(errors="replace").strip()
        if check and process.returncode != 0:
            raise HostNetworkError(f"{' '.join(argv)} failed ({process.returncode}): {text}")
        return process.returncode or 0, text

    async def connected(self) -> list[IPv4Network]:
        """The subnets of the host's IPv4 addresses (links a peer may be directly on); ours and loopback left out."""
        async with self._ipr() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" async for link in await ipr.get_links()}
            subnets: list[IPv4Network] = []
            async for message in await ipr.addr("dump", family=2):
                if names.get(message["index"], "").startswith(LINK_PREFIX):
                    continue
                interface = ip_interface(f"{message.get_attr('IFA_ADDRESS')}/{message['prefixlen']}")
                if not interface.is_loopback and isinstance(interface.network, IPv4Network):
                    subnets.append(interface.network)
        return subnets

    async def apply(self, plan: HostPlan) -> list[str]:
        """Makes the host match the plan; returns what could not be done (the rest is done regardless)."""
        problems: list[str] = []
        for step in (self._forwarding, self._links, self._firewall):
            try:
                problems += await step(plan)
            except (HostNetworkError, NetlinkError, OSError) as exc:
                problems.append(f"{step.__name__.lstrip('_')}: {exc}")
        return problems

    async def clear(self) -> list[str]:
        """Removes everything this module makes: our routes, the VXLAN device, our chains and their jumps."""
        problems = await self._links(empty_plan())
        for table, chain, target in HOOKS:
            while (await self._run(self._iptables, "-w", "-t", table, "-D", chain, "-j", target, check=False))[0] == 0:
                pass
        for table, target in {(t, target) for t, _, target in HOOKS}:
            await self._run(self._iptables, "-w", "-t", table, "-F", target, check=False)
            await self._run(self._iptables, "-w", "-t", table, "-X", target, check=False)
        return problems

    async def _forwarding(self, plan: HostPlan) -> list[str]:
        # Routing between the bridges and the peers needs it; dockerd with --ip-forward=false leaves it off. Once on,
        # it stays on: other things on the host may rely on it by then, and it is harmless without our routes.
        if not plan.networks:
            return []
        _, current = await self._run("sysctl", "-n", "net.ipv4.ip_forward")
        if current != "1":
            await self._run("sysctl", "-qw", "net.ipv4.ip_forward=1")
            log.info("ip forwarding turned on", netns=self.netns)
        return []

    async def _links(self, plan: HostPlan) -> list[str]:
        problems: list[str] = []
        async with self._ipr() as ipr:
            vxlan = await self._vxlan(ipr, plan.vxlan, problems)
            await self._routes(ipr, plan.routes, vxlan, problems)
        return problems

    async def _vxlan(self, ipr: AsyncIPRoute, want: VxlanPlan | None, problems: list[str]) -> int | None:
        """Makes the VXLAN device, its FDB and neighbour entries match; returns its index (None: no device)."""
        found = await ipr.link_lookup(ifname=VXLAN_DEVICE)
        index: int | None = found[0] if found else None
        if index is not None:
            link = (await ipr.link("get", index=index))[0]
            if want is None or not _same_vxlan(link, want):
                await ipr.link("del", index=index)  # takes its routes, neighbours and FDB entries along
                log.info("vxlan device removed", device=VXLAN_DEVICE)
                index = None
        if want is None:
            return None
        if index is None:
            await ipr.link(
                "add",
                ifname=VXLAN_DEVICE,
                kind="vxlan",
                vxlan_id=VXLAN_VNI,
                vxlan_port=VXLAN_PORT,
                vxlan_learning=0,
                address=want.mac,
                mtu=VXLAN_MTU,
            )
            index = (await ipr.link_lookup(ifname=VXLAN_DEVICE))[0]
            log.info("vxlan device created", device=VXLAN_DEVICE, vni=VXLAN_VNI, port=VXLAN_PORT, mac=want.mac)
        await ipr.link("set", index=index, state="up")

        have_fdb = set()
        async for entry in await ipr.fdb("dump", ifindex=index):
            destination = entry.get_attr("NDA_DST")
            if destination and entry["ifindex"] == index:
                have_fdb.add((str(entry.get_attr("NDA_LLADDR")), str(destination)))
        want_fdb = {(peer.mac, str(peer.address)) for peer in want.peers}
        for mac, address in sorted(have_fdb - want_fdb):
            await _quietly(ipr.fdb("del", ifindex=index, lladdr=mac, dst=address))
        for mac, address in sorted(want_fdb - have_fdb):
            try:
                await ipr.fdb("append", ifindex=index, lladdr=mac, dst=address)
            except NetlinkError as exc:
                problems.append(f"fdb entry {mac} -> {address}: {exc}")

        have_neigh = set()
        async for entry in await ipr.neigh("dump", ifindex=index, family=2):
            if entry["ifindex"] == index and entry.get_attr("NDA_DST"):
                have_neigh.add((str(entry.get_attr("NDA_DST")), str(entry.get_attr("NDA_LLADDR") or "")))
        want_neigh = {(str(n.address), n.mac) for n in want.neighbors}
        for address, _mac in sorted(have_neigh - want_neigh):
            await _quietly(ipr.neigh("del", dst=address, ifindex=index))
        for address, mac in sorted(want_neigh - have_neigh):
            try:
                await ipr.neigh("replace", dst=address, lladdr=mac, ifindex=index, state=_NUD_PERMANENT)
            except NetlinkError as exc:
                problems.append(f"neighbour {address} -> {mac}: {exc}")
        return index

    async def _routes(self, ipr: AsyncIPRoute, routes: Sequence[Route], vxlan: int | None, problems: list[str]) -> None:
        have: dict[IPv4Network, tuple[str, int | None]] = {}
        async for message in await ipr.route("dump", proto=ROUTE_PROTOCOL, family=2):
            if message["proto"] != ROUTE_PROTOCOL or message["table"] != _MAIN_TABLE:
                continue
            destination = IPv4Network(f"{message.get_attr('RTA_DST')}/{message['dst_len']}")
            have[destination] = (str(message.get_attr("RTA_GATEWAY")), message.get_attr("RTA_OIF"))
        wanted = {r.destination: r for r in routes}
        for destination in sorted(set(have) - set(wanted)):
            await _quietly(ipr.route("del", dst=str(destination), proto=ROUTE_PROTOCOL, table=_MAIN_TABLE))
        for route in routes:
            current = have.get(route.destination)
            if current is not None and current[0] == str(route.via) and (not route.vxlan or current[1] == vxlan):
                continue
            spec: dict[str, Any] = {"dst": str(route.destination), "gateway": str(route.via), "proto": ROUTE_PROTOCOL}
            if route.vxlan:
                if vxlan is None:
                    problems.append(f"route to {route.destination}: no VXLAN device")
                    continue
                spec.update(oif=vxlan, flags=_ONLINK)
            try:
                await ipr.route("replace", **spec)
            except NetlinkError as exc:
                problems.append(f"route to {route.destination} via {route.via}: {exc}")

    async def _firewall(self, plan: HostPlan) -> list[str]:
        await self._run(f"{self._iptables}-restore", "-w", "--noflush", stdin=restore_input(plan.firewall))
        problems: list[str] = []
        for table, chain, target in HOOKS:
            exists, _ = await self._run(self._iptables, "-w", "-t", table, "-S", chain, check=False)
            if exists != 0:
                continue  # DOCKER-USER only exists while dockerd manages iptables
            hooked, _ = await self._run(self._iptables, "-w", "-t", table, "-C", chain, "-j", target, check=False)
            if hooked != 0:
                code, text = await self._run(
                    self._iptables, "-w", "-t", table, "-I", chain, "1", "-j", target, check=False
                )
                if code != 0:
                    problems.append(f"iptables -t {table} -I {chain} 1 -j {target}: {text}")
        return problems

    async def routes(self) -> list[tuple[str, str, bool]]:
        """Our routes as (destination, next hop, through VXLAN), for tests and diagnostics."""
        async with self._ipr() as ipr:
            found = await ipr.link_lookup(ifname=VXLAN_DEVICE)
            vxlan = found[0] if found else None
            found_routes: list[tuple[str, str, bool]] = [
                (
                    f"{m.get_attr('RTA_DST')}/{m['dst_len']}",
                    str(m.get_attr("RTA_GATEWAY")),
                    vxlan is not None and m.get_attr("RTA_OIF") == vxlan,
                )
                async for m in await ipr.route("dump", proto=ROUTE_PROTOCOL, family=2)
                if m["proto"] == ROUTE_PROTOCOL
            ]
        return sorted(found_routes)

    async def fdb(self) -> list[tuple[str, str]]:
        """The VXLAN device's FDB entries as (MAC, peer address); empty without the device."""
        async with self._ipr() as ipr:
            found = await ipr.link_lookup(ifname=VXLAN_DEVICE)
            if not found:
                return []
            entries: list[tuple[str, str]] = [
                (str(e.get_attr("NDA_LLADDR")), str(e.get_attr("NDA_DST")))
                async for e in await ipr.fdb("dump", ifindex=found[0])
                if e.get_attr("NDA_DST") and e["ifindex"] == found[0]
            ]
        return sorted(entries)

    async def chain(self, table: str, chain: str) -> list[str]:
        """`iptables -S` of one chain (empty when it does not exist)."""
        code, text = await self._run(self._iptables, "-w", "-t", table, "-S", chain, check=False)
        return text.splitlines() if code == 0 else []


def _same_vxlan(link: Any, want: VxlanPlan) -> bool:
    info = link.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan" or data is None:
        return False
    return bool(
        data.get_attr("IFLA_VXLAN_ID") == VXLAN_VNI
        and data.get_attr("IFLA_VXLAN_PORT") == VXLAN_PORT
        and str(link.get_attr("IFLA_ADDRESS")).lower() == want.mac
    )


async def _quietly(call: Any) -> None:
    """Awaits a removal; one that is already gone is fine."""
    try:
        await call
    except NetlinkError as exc:
        if exc.code not in _NOT_FOUND:
            raise
