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


def footprint_of(task: pb.Task) -> Demand:
    """Returns what a task holds on its node: reservations (negative ones count as zero) and host ports.

    Its placement rules are left at their defaults: they matter for where a task goes, not for what it holds,
    and skipping them keeps accounting, which reads every task, cheap.
    """
    spec = task.spec
    resources = spec.resources
    ports = spec.ports
    return Demand(
        task.service_id,
        nano_cpus(resources.cpu_reservation),
        max(0, resources.memory_reservation_bytes),
        host_ports(ports) if ports else (),
    )


def demand_of(task: pb.Task) -> Demand:
    """Returns the task's footprint and its spec's placement rules; an unknown strategy counts as spread."""
    footprint = footprint_of(task)
    spec = task.spec
    # The spec reader leaves placement unset when every field is a default, as for most services.
    if not spec.HasField("placement"):
        return footprint
    placement = spec.placement
    texts = placement.constraints
    constraints, invalid = parse_constraints(tuple(texts)) if texts else NO_CONSTRAINTS
    binpack = placement.strategy == pb.Placement.STRATEGY_BINPACK
    return Demand(*footprint[:4], constraints, placement.max_replicas_per_node, binpack, invalid)
