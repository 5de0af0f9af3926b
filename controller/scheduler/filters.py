"""The built-in feasibility filters, in the order they run."""

from __future__ import annotations

from functools import lru_cache

from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter, Rejection
from controller.scheduler.node_state import NodeState
from controller.scheduler.rule_filters import ConstraintsMatch, MaxReplicasPerNode
from controller.scheduler.units import format_bytes, format_cpus
from dockyard.v1 import types_pb2 as pb

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


@lru_cache(maxsize=1024)
def _lacking(cpu: int, memory: int, cpu_short: bool, memory_short: bool) -> Rejection:
    if cpu_short and memory_short:
        what, need = "CPU and memory", f"{format_cpus(cpu)}, {format_bytes(memory)}"
    elif cpu_short:
        what, need = "CPU", format_cpus(cpu)
    else:
        what, need = "memory", format_bytes(memory)
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


DEFAULT_FILTERS: tuple[Filter, ...] = (
    NodeAvailable(),
    ConstraintsMatch(),
    MaxReplicasPerNode(),
    HostPortsFree(),
    ResourcesFit(),
)
"""Cheap first, and the service's own rules before contention: the first rejection is the one a user reads,
and "doesn't match node.labels.zone == a" says more about a node than the memory it happens to lack."""
