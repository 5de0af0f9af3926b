"""Pure planning: from the controller's NetworkMap and this host's connected subnets to what the host must have.

Nothing here does I/O. `plan(map, node_id, connected)` returns a `HostPlan`: the Docker bridge networks
(one per network with a subnet on this node), the routes to every peer subnet (a direct route via the
peer when its address is on a subnet this host is connected to, else over one kernel VXLAN device with
a static neighbour and FDB entry per peer), the iptables chains' rules, and the DNS listen addresses.
The I/O in `agent.network.host` applies it and removes whatever it made that a newer plan no longer lists.

Every name and number the host sees is defined here, once, so that a host can be cleaned by them
(docs/design/network.md, "Cleaning a host").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Final

from dockyard import labels
from dockyard.v1 import agent_pb2 as apb

# Names of what this module plans on a host: interfaces `dky-*`, chains `DOCKYARD-*`.
LINK_PREFIX: Final = "dky-"
VXLAN_DEVICE: Final = "dky-vxlan"
# VXLAN network identifier and UDP port of the overlay. 4789 is IANA's VXLAN port; a VNI far above the range
# Docker's swarm overlay allocates from (4097 up, one per overlay network) lets both share the port.
VXLAN_VNI: Final = 7_340_033
VXLAN_PORT: Final = 4789
# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers on a 1500-byte underlay.
VXLAN_MTU: Final = 1450
# The routing protocol number (rtm_protocol, 0-255) that marks our routes: unassigned by IANA / iproute2's
# rt_protos, so `ip route show proto 177` lists exactly ours.
ROUTE_PROTOCOL: Final = 177
# iptables chains of our own, each hooked once at the top of the built-in chain named after it.
FORWARD_CHAIN: Final = "DOCKYARD-FORWARD"
INPUT_CHAIN: Final = "DOCKYARD-INPUT"
POSTROUTING_CHAIN: Final = "DOCKYARD-POSTROUTING"
# Docker's chain for the user's own forwarding rules; it exists when dockerd manages iptables and Docker
# keeps its jump first in FORWARD, before any DROP of its own (Docker 28 drops to unpublished ports).
DOCKER_USER_CHAIN: Final = "DOCKER-USER"
DNS_PORT: Final = 53
# The label on the Docker networks this agent creates: its value is the cluster network's name.
NETWORK_LABEL: Final = labels.NETWORK


@dataclass(frozen=True, order=True)
class LocalNetwork:
    """A cluster network with a subnet on this host: the Docker bridge network to have."""

    name: str  # cluster-wide name, also the Docker network's name
    subnet: IPv4Network
    gateway: IPv4Address  # the subnet's first address, on the bridge: containers' gateway and DNS server
    bridge: str  # the bridge interface's name
    internal: bool = False

    @property
    def labels(self) -> dict[str, str]:
        """The labels of the Docker network, by which the agent finds the networks it made."""
        return {labels.MANAGED: "true", NETWORK_LABEL: self.name}


@dataclass(frozen=True, order=True)
class Route:
    """A route to a peer's subnet: via the peer itself, or onlink via a neighbour entry on the VXLAN device."""

    destination: IPv4Network
    via: IPv4Address
    vxlan: bool = False


@dataclass(frozen=True, order=True)
class VxlanPeer:
    """A VXLAN tunnel endpoint: the FDB entry sends frames for `mac` to `address` (the peer's underlay address)."""

    mac: str
    address: IPv4Address


@dataclass(frozen=True, order=True)
class Neighbor:
    """A permanent neighbour entry on the VXLAN device: a peer subnet's next hop resolves to the peer's MAC."""

    address: IPv4Address
    mac: str


@dataclass(frozen=True)
class VxlanPlan:
    """The VXLAN device with this node's MAC, and its peers."""

    mac: str
    peers: tuple[VxlanPeer, ...]
    neighbors: tuple[Neighbor, ...]


# One iptables rule as its arguments after `-A CHAIN`.
Rule = tuple[str, ...]


@dataclass(frozen=True)
class Firewall:
    """The contents of our chains; applying them replaces each chain's rules as a whole."""

    forward: tuple[Rule, ...] = ()  # filter DOCKYARD-FORWARD
    input: tuple[Rule, ...] = ()  # filter DOCKYARD-INPUT
    postrouting: tuple[Rule, ...] = ()  # nat DOCKYARD-POSTROUTING


@dataclass(frozen=True)
class HostPlan:
    """Everything one host must have for the map it was given; `problems` says what of the map was unusable."""

    version: int
    networks: tuple[LocalNetwork, ...]
    routes: tuple[Route, ...]
    vxlan: VxlanPlan | None
    firewall: Firewall
    problems: tuple[str, ...] = field(default=())

    def network(self, name: str) -> LocalNetwork | None:
        """This host's subnet of the named network, or None when the host has none (yet)."""
        return next((n for n in self.networks if n.name == name), None)

    @property
    def dns_addresses(self) -> tuple[IPv4Address, ...]:
        """Where the DNS server listens: every local network's gateway."""
        return tuple(n.gateway for n in self.networks)


def bridge_name(network: str) -> str:
    """The bridge interface of a cluster network: `dky-` and 8 hex digits of its name's sha256 (fits IFNAMSIZ)."""
    return f"{LINK_PREFIX}{hashlib.sha256(network.encode()).hexdigest()[:8]}"


def vxlan_mac(node_id: str) -> str:
    """The VXLAN device MAC of a node, derived from its id so that peers know it without being told.

    The first octet 0x02 makes it a locally administered unicast address.
    """
    digest = hashlib.sha256(node_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def gateway_of(subnet: IPv4Network) -> IPv4Address:
    """The subnet's first usable address: the bridge's, as Docker's default gateway."""
    return subnet.network_address + 1


def empty_plan() -> HostPlan:
    """The plan of a host in no network: everything this module made goes."""
    return HostPlan(version=0, networks=(), routes=(), vxlan=None, firewall=Firewall())


@dataclass
class _Parsed:
    network: str
    node_id: str
    node_address: IPv4Address
    subnet: IPv4Network
    internal: bool


def plan(network_map: apb.NetworkMap, node_id: str, connected: Iterable[IPv4Network]) -> HostPlan:
    """Plans this host's networks, routes, VXLAN peers and firewall for the map; unusable entries go to problems."""
    problems: list[str] = []
    entries = _parse(network_map, node_id, problems)
    pool = _pool(network_map.pool, problems)
    cluster = [pool] if pool is not None else sorted({e.subnet for e in entries})
    # The host's own links, without the subnets the map hands out (our bridges are connected too).
    links = [c for c in connected if not any(c.overlaps(e.subnet) for e in entries)]

    local: dict[str, LocalNetwork] = {}
    for entry in entries:
        if entry.node_id == node_id and entry.network not in local:
            local[entry.network] = LocalNetwork(
                entry.network, entry.subnet, gateway_of(entry.subnet), bridge_name(entry.network), entry.internal
            )
    local_subnets = {n.subnet for n in local.values()}

    routes: dict[IPv4Network, Route] = {}
    peers: dict[str, VxlanPeer] = {}
    neighbors: dict[IPv4Address, Neighbor] = {}
    for entry in entries:
        if entry.node_id == node_id or entry.subnet in routes:
            continue
        if entry.subnet in local_subnets:
            problems.append(f"subnet {entry.subnet} of node {entry.node_id} is also this node's; no route to it")
            continue
        if any(entry.node_address in link for link in links):
            routes[entry.subnet] = Route(entry.subnet, entry.node_address)
            continue
        mac = vxlan_mac(entry.node_id)
        peers[entry.node_id] = VxlanPeer(mac, entry.node_address)
        # The peer subnet's network address is never a host's, so it is free to name the next hop (as flannel).
        hop = entry.subnet.network_address
        neighbors[hop] = Neighbor(hop, mac)
        routes[entry.subnet] = Route(entry.subnet, hop, vxlan=True)

    vxlan = None
    if peers:
        vxlan = VxlanPlan(vxlan_mac(node_id), tuple(sorted(peers.values())), tuple(sorted(neighbors.values())))
    networks = tuple(sorted(local.values()))
    members = {name: sorted({e.subnet for e in entries if e.network == name}) for name in local}
    return HostPlan(
        version=network_map.version,
        networks=networks,
        routes=tuple(sorted(routes.values())),
        vxlan=vxlan,
        firewall=firewall(networks, members, cluster),
        problems=tuple(problems),
    )


def firewall(
    networks: Sequence[LocalNetwork], members: Mapping[str, Sequence[IPv4Network]], cluster: Sequence[IPv4Network]
) -> Firewall:
    """Rules for our chains: same-network subnets reach each other, other cluster subnets do not, no NAT between them.

    `members` gives every subnet (on any node) of each local network; `cluster` the address pool (or, without
    one, every subnet the map names). Traffic between a local subnet and anything outside the cluster is left to
    the host's other rules (Docker's, when it manages iptables), except for internal networks, which reach
    nothing outside their own subnets.
    """
    forward: list[Rule] = []
    inputs: list[Rule] = []
    postrouting: list[Rule] = []
    for net in networks:
        here = str(net.subnet)
        # Within the bridge too: with br_netfilter loaded (Docker loads it), switched frames pass FORWARD.
        forward.append(("-s", here, "-d", here, "-j", "ACCEPT"))
        for peer in members.get(net.name, ()):
            if peer != net.subnet:
                forward.append(("-s", here, "-d", str(peer), "-j", "ACCEPT"))
                forward.append(("-s", str(peer), "-d", here, "-j", "ACCEPT"))
        if net.internal:
            forward.append(("-s", here, "-j", "DROP"))
            forward.append(("-d", here, "-j", "DROP"))
        else:
            for block in cluster:
                forward.append(("-s", here, "-d", str(block), "-j", "DROP"))
                forward.append(("-s", str(block), "-d", here, "-j", "DROP"))
        gateway = f"{net.gateway}/32"
        for protocol in ("udp", "tcp"):
            inputs.append(("-s", here, "-d", gateway, "-p", protocol, "--dport", str(DNS_PORT), "-j", "ACCEPT"))
        # ACCEPT in nat POSTROUTING ends the chain for the packet: Docker's MASQUERADE further down never sees it.
        for block in cluster:
            postrouting.append(("-s", here, "-d", str(block), "-j", "ACCEPT"))
    return Firewall(tuple(forward), tuple(inputs), tuple(postrouting))


def restore_input(rules: Firewall) -> str:
    """The iptables-restore --noflush input that replaces our chains' rules as a whole, one table at a time.

    With --noflush, declaring a user chain creates it or flushes it; the built-in chains are left alone.
    """
    lines = ["*filter", f":{FORWARD_CHAIN} - [0:0]", f":{INPUT_CHAIN} - [0:0]"]
    lines += [" ".join(("-A", FORWARD_CHAIN, *r)) for r in rules.forward]
    lines += [" ".join(("-A", INPUT_CHAIN, *r)) for r in rules.input]
    lines += ["COMMIT", "*nat", f":{POSTROUTING_CHAIN} - [0:0]"]
    lines += [" ".join(("-A", POSTROUTING_CHAIN, *r)) for r in rules.postrouting]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


# (table, built-in chain, our chain): the jumps that hook our chains in, each first in its built-in chain.
HOOKS: Final = (
    ("filter", "FORWARD", FORWARD_CHAIN),
    ("filter", DOCKER_USER_CHAIN, FORWARD_CHAIN),
    ("filter", "INPUT", INPUT_CHAIN),
    ("nat", "POSTROUTING", POSTROUTING_CHAIN),
)


def _parse(network_map: apb.NetworkMap, node_id: str, problems: list[str]) -> list[_Parsed]:
    entries: list[_Parsed] = []
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(network_map.subnets):
        where = f"network_map.subnets[{index}]"
        try:
            subnet = IPv4Network(item.subnet)
        except ValueError:
            problems.append(f"{where}.subnet: {item.subnet!r} is not an IPv4 CIDR; entry skipped")
            continue
        try:
            address = IPv4Address(item.node_address) if item.node_address else None
        except ValueError:
            address = None
        if address is None:
            if item.node_id != node_id:  # our own address is never used: our subnets are on our bridges
                problems.append(f"{where}.node_address: {item.node_address!r} is not an IPv4 address; entry skipped")
                continue
            address = IPv4Address(0)
        if subnet.prefixlen > 30:
            problems.append(f"{where}.subnet: {subnet} has no room for a gateway and containers; entry skipped")
            continue
        if (item.network, item.node_id) in seen:
            problems.append(f"{where}: a second subnet of network {item.network} on node {item.node_id}; skipped")
            continue
        seen.add((item.network, item.node_id))
        entries.append(_Parsed(item.network, item.node_id, address, subnet, item.internal))
    return entries


def _pool(text: str, problems: list[str]) -> IPv4Network | None:
    if not text:
        return None
    try:
        return IPv4Network(text)
    except ValueError:
        problems.append(f"network_map.pool: {text!r} is not an IPv4 CIDR; isolating by the subnets listed instead")
        return None
