"""What a task asks of the node it runs on, read once from its protobuf spec."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from controller.scheduler.constraint_texts import NO_CONSTRAINTS, parse_constraints
from controller.scheduler.units import nano_cpus
from dockyard.constraints import Constraint
from dockyard.v1 import types_pb2 as pb

HostPort = tuple[int, str]
"""A published host port and its lower-case protocol, e.g. (8080, "tcp")."""


class Demand(NamedTuple):
    """A task's footprint on a node and its service's placement rules.

    A tuple because one is built per task and must be cheap to make, and because equal demands share one
    judgement of the nodes (see shapes.py).
    """

    service_id: str
    cpu: int  # nano-CPUs reserved
    memory: int  # bytes reserved
    ports: tuple[HostPort, ...]  # sorted host ports > 0; port 0 lets Docker choose, so it never conflicts
    constraints: tuple[Constraint, ...] = ()  # every one must match the node
    max_per_node: int = 0  # most tasks of the service one node may hold; 0 means no limit
    binpack: bool = False  # rank with the binpack strategy instead of spread
    invalid: str = ""  # why the task can never be placed (a constraint that does not parse), else ""


def host_ports(ports: Iterable[pb.PortMapping]) -> tuple[HostPort, ...]:
    """Returns the distinct published host ports (> 0) with normalised protocol ("" means tcp), sorted."""
    found = []
    for mapping in ports:
        port = mapping.host_port
        if port > 0:
            found.append((port, (mapping.protocol or "tcp").lower()))
    return tuple(sorted(set(found))) if len(found) > 1 else tuple(found)


def demand_of(task: pb.Task) -> Demand:
    """Returns the reservations, host ports and placement rules of the task's spec.

    Negative reservations count as zero; an unknown strategy counts as spread, the documented default.
    """
    spec = task.spec
    resources = spec.resources
    ports = spec.ports
    service_id = task.service_id
    cpu = nano_cpus(resources.cpu_reservation)
    memory = max(0, resources.memory_reservation_bytes)
    published = host_ports(ports) if ports else ()
    # Most specs set no placement; skipping its reads is a measurable share of this once-per-task call.
    if not spec.HasField("placement"):
        return Demand(service_id, cpu, memory, published)
    placement = spec.placement
    texts = placement.constraints
    constraints, invalid = parse_constraints(tuple(texts)) if texts else NO_CONSTRAINTS
    binpack = placement.strategy == pb.Placement.STRATEGY_BINPACK
    return Demand(service_id, cpu, memory, published, constraints, placement.max_replicas_per_node, binpack, invalid)
