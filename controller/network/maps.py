"""What each agent is told about the cluster's networks: its NetworkMap, and whether a task may go to it yet.

Pure: the dispatcher's publisher (controller/dispatcher/networks.py) feeds it the networks and node
addresses it follows from the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dockyard.spec.stacks import networks_of
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

__all__ = ["covers", "network_map", "participation", "peer_host"]


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer ("ipv4:10.0.0.5:4567" -> "10.0.0.5", "ipv6:[fd00::1]:80" -> "fd00::1")."""
    _, sep, rest = peer.partition(":")
    if not sep:
        return ""
    if rest.startswith("["):
        return rest[1:].partition("]")[0]
    return rest.rpartition(":")[0] if ":" in rest else rest


def participation(networks: Iterable[pb.Network], node_id: str) -> frozenset[str]:
    """The names of the networks in which the node has a subnet."""
    return frozenset(n.name for n in networks if node_id in n.subnets)


def network_map(
    networks: Mapping[str, pb.Network], hosts: Mapping[str, str], names: Iterable[str], pool: str, version: int
) -> apb.NetworkMap:
    """Returns the map of the named networks: every subnet of each, with its node's address, in a stable order.

    A node whose address is unknown is listed with an empty address (the agent cannot route to it yet).
    """
    out = apb.NetworkMap(version=version, pool=pool)
    for name in sorted(names):
        network = networks.get(name)
        if network is None:
            continue
        for node_id in sorted(network.subnets):
            out.subnets.append(
                apb.NetworkSubnet(
                    network=name,
                    node_id=node_id,
                    node_address=hosts.get(node_id, ""),
                    subnet=network.subnets[node_id],
                    internal=network.internal,
                )
            )
    return out


def covers(networks: Mapping[str, pb.Network], node_id: str, spec: pb.ServiceSpec | None) -> bool:
    """Tells whether the node has a subnet of every network a task of `spec` joins (no spec: nothing to wait for).

    A network that does not exist is not waited for: the apply refuses names that exist nowhere, and the
    network role makes a stack's implicit default network as soon as a service needs it; should a task still
    name a missing one, its agent says so in the task's status, where holding it here would say nothing.
    """
    if spec is None:
        return True
    for name in networks_of(spec):
        network = networks.get(name)
        if network is not None and node_id not in network.subnets:
            return False
    return True
