"""Which subnet of the address pool each (network, node) pair gets: pure, so its rules are property-tested.

Every network gets one /24 (SUBNET_PREFIX) per node that takes part in it, carved from the cluster's pool
(--network-pool, DEFAULT_POOL). The rules:

- Stable: a pair keeps its subnet for as long as its node exists and the network does; nothing is ever
  renumbered to make room, so a running container's address stays valid.
- Released only when the node is gone from the cluster (or the stored subnet is unusable: not a /24, or a
  duplicate of an earlier pair's), never because the node went down or its tasks ended.
- A subnet released by a pass is not handed out by the same pass: it is free from the next one, once the
  release is committed and every agent's map has dropped it.
- New subnets are the lowest free /24s of the pool, in (network name, node id) order, so the same inputs
  give the same result. A pair the pool has no room for is reported, not forced.

Changing the pool changes where new subnets come from; subnets already given stay where they are.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from dockyard.spec.stacks import CLUSTER_NETWORK
from dockyard.task_state import is_terminal
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "DEFAULT_POOL",
    "SUBNET_PREFIX",
    "Allocation",
    "Pair",
    "allocate",
    "host_in_pool",
    "outside_pool",
    "parse_pool",
    "updated_networks",
    "wanted_pairs",
]

# The cluster's address pool unless --network-pool says otherwise: 32,768 /24s, clear of the 10.0.0.0/16 and
# 172.16.0.0/12 ranges Docker and many LANs use.
DEFAULT_POOL: Final = "10.128.0.0/9"
# Each (network, node) pair gets one subnet of this size: 253 containers per network per host.
SUBNET_PREFIX: Final = 24
_SHIFT: Final = 32 - SUBNET_PREFIX

# (network name, node id)
Pair = tuple[str, str]


def parse_pool(text: str) -> ipaddress.IPv4Network:
    """Reads an address pool (IPv4 CIDR, /8 to /24); ValueError saying what is wrong and what would do."""
    try:
        pool = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a network in CIDR form (e.g. {DEFAULT_POOL}): {exc}") from None
    if not isinstance(pool, ipaddress.IPv4Network):
        raise ValueError(f"{text!r}: the pool must be IPv4 (e.g. {DEFAULT_POOL})")
    if pool.prefixlen > SUBNET_PREFIX:
        raise ValueError(
            f"{text!r}: the pool must hold at least one /{SUBNET_PREFIX}; use a prefix of at most /{SUBNET_PREFIX}"
        )
    if pool.prefixlen < 8:
        raise ValueError(
            f"{text!r}: a pool larger than a /8 is not supported; use a prefix between /8 and /{SUBNET_PREFIX}"
        )
    return pool


def host_in_pool(host: str, pool: ipaddress.IPv4Network) -> str | None:
    """Returns why a node at `host` (its address as the controller sees it) cannot join, or None when it can.

    Agents drop and do not masquerade traffic of the pool's addresses that is not between cluster subnets, so a
    host whose own address is inside the pool would lose its LAN (and the controller) to its own rules.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # not an IP address (a Unix socket in tests): nothing the pool's rules can cut off
    if address not in pool:
        return None
    return (
        f"this node's address {host} is inside the cluster's address pool {pool}, whose traffic the agents' rules "
        "drop outside cluster networks; start the controller with a --network-pool that holds no host's address "
        "(see docs/operations.md, Networks)"
    )


def outside_pool(networks: Iterable[pb.Network], pool: ipaddress.IPv4Network) -> str | None:
    """Returns why the controller cannot start over `pool` while stored subnets lie outside it, or None.

    The agents' rules (isolation, no masquerade) cover the map's pool only, so such a subnet would run
    unprotected; the controller refuses to start rather than leave it so (or renumber running containers).
    """
    outside = sorted(
        f"{network.name}@{node_id} {subnet}"
        for network in networks
        for node_id, subnet in network.subnets.items()
        if not _within(subnet, pool)
    )
    if not outside:
        return None
    shown = ", ".join(outside[:5]) + (f" and {len(outside) - 5} more" if len(outside) > 5 else "")
    return (
        f"--network-pool {pool}: stored subnets lie outside it ({shown}); start with a --network-pool that holds "
        "them (the previous pool, or one containing both), or remove those networks and nodes first"
    )


def _within(subnet: str, pool: ipaddress.IPv4Network) -> bool:
    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return True  # unreadable: the allocator replaces it with a subnet of the pool
    return isinstance(network, ipaddress.IPv4Network) and network.subnet_of(pool)


@dataclass(frozen=True)
class Allocation:
    """What a pass changes: new subnets, released ones, and the pairs the pool had no room for."""

    assigned: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # network -> node id -> CIDR
    released: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # network -> node ids
    unplaced: tuple[Pair, ...] = ()

    @property
    def changed(self) -> frozenset[str]:
        """The names of the networks whose subnets change."""
        return frozenset(self.assigned) | frozenset(self.released)


def wanted_pairs(
    nodes: Iterable[pb.Node], tasks: Iterable[pb.Task], networks_of: Mapping[str, Sequence[str]]
) -> set[Pair]:
    """Returns the (network, node) pairs that must have a subnet now.

    Every ready node takes part in the cluster network; a node takes part in a network when a task attached
    to it is placed there and is wanted running and not finished. `networks_of` maps a task id to the
    networks of its spec (dockyard.spec.stacks.networks_of); a task missing from it joins none.
    """
    wanted = {(CLUSTER_NETWORK, n.id) for n in nodes if n.status == pb.NODE_STATUS_READY}
    for task in tasks:
        if task.node_id and task.desired_state == pb.DESIRED_STATE_RUNNING and not is_terminal(task.status.state):
            wanted.update((network, task.node_id) for network in networks_of.get(task.id, ()))
    return wanted


def _key(subnet: str) -> int | None:
    """The /24's index (its network address >> 8), or None when `subnet` is not a /24 network in CIDR form."""
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError:
        return None
    return int(network.network_address) >> _SHIFT if network.prefixlen == SUBNET_PREFIX else None


def _cidr(key: int) -> str:
    return f"{ipaddress.IPv4Address(key << _SHIFT)}/{SUBNET_PREFIX}"


def allocate(
    networks: Iterable[pb.Network],
    node_ids: Collection[str],
    wanted: Iterable[Pair],
    pool: ipaddress.IPv4Network,
) -> Allocation:
    """Returns the subnets to give and to release so that every wanted pair of an existing network has one.

    `networks` are the stored networks with their current subnets, `node_ids` every node in the cluster (a
    subnet of a node not among them is released). Wanted pairs of networks not in `networks` are ignored.
    """
    by_name = {n.name: n for n in networks}
    released: dict[str, list[str]] = {}
    kept: set[Pair] = set()
    # Every /24 a stored subnet covers, released or not: none of them is handed out by this pass.
    used: set[int] = set()
    kept_keys: set[int] = set()
    for name in sorted(by_name):
        subnets = by_name[name].subnets
        for node_id in sorted(subnets):
            key = _key(subnets[node_id])
            if key is not None:
                used.add(key)
            if node_id not in node_ids or key is None or key in kept_keys:
                released.setdefault(name, []).append(node_id)
            else:
                kept_keys.add(key)
                kept.add((name, node_id))
    first = int(pool.network_address) >> _SHIFT
    last = int(pool.broadcast_address) >> _SHIFT
    cursor = first
    assigned: dict[str, dict[str, str]] = {}
    unplaced: list[Pair] = []
    for pair in sorted(set(wanted)):
        name, node_id = pair
        if name not in by_name or pair in kept or node_id not in node_ids:
            continue
        while cursor <= last and cursor in used:
            cursor += 1
        if cursor > last:
            unplaced.append(pair)
            continue
        used.add(cursor)
        assigned.setdefault(name, {})[node_id] = _cidr(cursor)
    return Allocation(
        assigned=assigned,
        released={name: tuple(nodes) for name, nodes in released.items()},
        unplaced=tuple(unplaced),
    )


def updated_networks(networks: Iterable[pb.Network], allocation: Allocation) -> list[pb.Network]:
    """Returns a changed copy of each network the allocation changes (releases first, then new subnets)."""
    out: list[pb.Network] = []
    for network in networks:
        if network.name not in allocation.changed:
            continue
        changed = pb.Network()
        changed.CopyFrom(network)
        for node_id in allocation.released.get(network.name, ()):
            del changed.subnets[node_id]
        changed.subnets.update(allocation.assigned.get(network.name, {}))
        out.append(changed)
    return out
