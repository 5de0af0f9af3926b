"""Feasibility filters, each with the reasons it rejects nodes, and how an unplaced task's reason is worded.

The order the filters run in is set in stack.py. Each reason is a predicate that reads after a count:
"1 node lacks memory (need 512MiB)", "3 nodes have port 80/tcp in use".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from controller.scheduler.model import NANO_CPUS_PER_CPU, Demand, NodeState
from dockyard.constraints import node_satisfies
from dockyard.spec import format_bytes, format_cpus
from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a node cannot take a task, as a predicate for "1 node ..." (one) and "3 nodes ..." (many).

    Equal rejections are counted together in the unplaced reason, so the text carries the detail that makes
    them different (the port, the amount needed).
    """

    one: str
    many: str


class Filter(Protocol):
    """A feasibility check. Filters run cheapest first and the first rejection is the one reported.

    check must depend only on this node's state and the demand (a node is judged again only when a task is
    placed on it), and on the demand's service only through node.services.get(demand.service_id, 0): one
    judgement serves every service with the same footprint on nodes that hold none of its tasks (engine.py).
    """

    @property
    def name(self) -> str:
        """Returns a short stable name for logs and tests."""
        ...

    def applies(self, demand: Demand) -> bool:
        """Tells whether check could reject any node for this demand; pools skip the filter when it cannot."""
        ...

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when the node can take the demand, otherwise why it cannot."""
        ...


_NOT_READY = Rejection("not ready", "not ready")
_PAUSED = Rejection("paused", "paused")
_DRAINING = Rejection("draining", "draining")


class NodeAvailable:
    """Rejects nodes that are not READY or whose operator paused or drained them."""

    __slots__ = ()
    name = "node-available"

    def applies(self, demand: Demand) -> bool:
        """Returns True: any demand needs a usable node."""
        return True

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None for a READY node that is ACTIVE, else not ready / paused / draining."""
        if node.status != pb.NODE_STATUS_READY:
            return _NOT_READY
        if node.availability == pb.NODE_AVAILABILITY_PAUSE:
            return _PAUSED
        if node.availability == pb.NODE_AVAILABILITY_DRAIN:
            return _DRAINING
        return None


@lru_cache(maxsize=1024)
def _unmatched(constraint: str) -> Rejection:
    return Rejection(f"doesn't match {constraint}", f"don't match {constraint}")


class ConstraintsMatch:
    """Rejects nodes that fail one of the task's placement constraints, naming the first that fails."""

    __slots__ = ()
    name = "constraints"

    def applies(self, demand: Demand) -> bool:
        """Tells whether the demand has any constraint."""
        return bool(demand.constraints)

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when node_satisfies() holds for every constraint, else names the first that fails."""
        source = node.source
        for constraint in demand.constraints:
            # One at a time, so that the reason can name the constraint a node fails.
            if not node_satisfies(source, (constraint,)):
                return _unmatched(constraint)
        return None


@lru_cache(maxsize=1024)
def _at_limit(held: int, limit: int) -> Rejection:
    tasks = "task" if held == 1 else "tasks"
    detail = f"{held} {tasks} of this service (max_replicas_per_node: {limit})"
    return Rejection(f"already runs {detail}", f"already run {detail}")


class MaxReplicasPerNode:
    """Rejects nodes already holding max_replicas_per_node tasks of the service, counting this call's."""

    __slots__ = ()
    name = "max-replicas-per-node"

    def applies(self, demand: Demand) -> bool:
        """Tells whether the demand sets a limit."""
        return demand.max_per_node > 0

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when there is no limit or the node holds fewer of the service's tasks than it."""
        limit = demand.max_per_node
        if limit:
            held = node.services.get(demand.service_id, 0)
            if held >= limit:
                return _at_limit(held, limit)
        return None


@lru_cache(maxsize=1024)
def _port_in_use(port: int, protocol: str) -> Rejection:
    return Rejection(f"has port {port}/{protocol} in use", f"have port {port}/{protocol} in use")


class HostPortsFree:
    """Rejects nodes where a task already holds one of the demanded host port/protocol pairs."""

    __slots__ = ()
    name = "host-ports"

    def applies(self, demand: Demand) -> bool:
        """Tells whether the demand publishes any host port."""
        return bool(demand.ports)

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when every demanded host port is free, else names the lowest one in use."""
        if demand.ports and node.ports:
            used = node.ports
            for port in demand.ports:
                if port in used:
                    return _port_in_use(*port)
        return None


def cpus_text(nano: int) -> str:
    """Returns nano-CPUs as the spec writes CPUs, with a unit: "0.5 CPUs", "1 CPU"."""
    text = format_cpus(nano / NANO_CPUS_PER_CPU)
    return f"{text} CPU" if text == "1" else f"{text} CPUs"


@lru_cache(maxsize=1024)
def _lacking(cpu: int, memory: int, cpu_short: bool, memory_short: bool) -> Rejection:
    # Approximate bytes: "1.5GiB" reads better in a sentence than the exact "1536MiB".
    memory_text = format_bytes(memory, approximate=True)
    if cpu_short and memory_short:
        what, need = "CPU and memory", f"{cpus_text(cpu)}, {memory_text}"
    elif cpu_short:
        what, need = "CPU", cpus_text(cpu)
    else:
        what, need = "memory", memory_text
    return Rejection(f"lacks {what} (need {need})", f"lack {what} (need {need})")


class ResourcesFit:
    """Rejects nodes whose unreserved CPU or memory is smaller than the task's reservation."""

    __slots__ = ()
    name = "resources"

    def applies(self, demand: Demand) -> bool:
        """Returns True: even a zero reservation is refused by a node already over its capacity."""
        return True

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when both reservations fit in capacity minus what held tasks reserve."""
        cpu_short = node.cpu_reserved + demand.cpu > node.cpu_capacity
        memory_short = node.memory_reserved + demand.memory > node.memory_capacity
        if not (cpu_short or memory_short):
            return None
        return _lacking(demand.cpu, demand.memory, cpu_short, memory_short)


@lru_cache(maxsize=1024)
def _volume_elsewhere(volume: str, node: str) -> Rejection:
    detail = f"volume {volume} (it is on node {node})"
    return Rejection(f"lacks {detail}", f"lack {detail}")


class VolumeOnNode:
    """Rejects every node but the one a mounted volume lives on (its data is there), naming volume and node."""

    __slots__ = ()
    name = "volumes"

    def applies(self, demand: Demand) -> bool:
        """Tells whether the demand mounts a volume that lives on a node already."""
        return bool(demand.volumes)

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when every such volume lives on this node, else names the first that does not."""
        for site in demand.volumes:
            if site.node_id != node.id:
                return _volume_elsewhere(site.volume, site.node)
        return None


RejectionKey = tuple[int, Rejection]
"""A rejection and the position of the filter that gave it."""


def unplaced_reason(node_count: int, rejections: Mapping[RejectionKey, int]) -> str:
    """Returns e.g. "3 nodes: 2 lack memory (need 512MiB), 1 has port 8080/tcp in use", or "no nodes".

    Each node is counted once, under the first filter that rejected it; parts are ordered by count, then
    filter order, so the commonest obstacle reads first.
    """
    if node_count == 0:
        return "no nodes"
    head = f"{node_count} node" if node_count == 1 else f"{node_count} nodes"
    ordered = sorted(
        ((count, index, rejection) for (index, rejection), count in rejections.items()),
        key=lambda item: (-item[0], item[1], item[2].many, item[2].one),
    )
    parts = [f"{count} {rejection.one if count == 1 else rejection.many}" for count, _, rejection in ordered]
    return f"{head}: {', '.join(parts)}" if parts else f"{head}: none feasible"


def pinned_reason(node: NodeState, rejection: Rejection) -> str:
    """Returns why a task pinned to the node cannot go there, naming the node by host name, else by id."""
    return f"node {node.hostname or node.id}: {rejection.one}"


def unknown_node_reason(node_id: str) -> str:
    """Returns why a task pinned to a node that is not in the snapshot cannot be placed."""
    return f"node {node_id} is not in the cluster"
