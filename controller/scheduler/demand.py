"""What a task asks of the node it runs on, read once from its protobuf spec."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from controller.scheduler.units import nano_cpus
from dockyard.v1 import types_pb2 as pb

HostPort = tuple[int, str]
"""A published host port and its lower-case protocol, e.g. (8080, "tcp")."""


class Demand(NamedTuple):
    """A task's footprint on a node; a tuple because one is built per task and must be cheap to make."""

    service_id: str
    cpu: int  # nano-CPUs reserved
    memory: int  # bytes reserved
    ports: tuple[HostPort, ...]  # sorted host ports > 0; port 0 lets Docker choose, so it never conflicts


def host_ports(ports: Iterable[pb.PortMapping]) -> tuple[HostPort, ...]:
    """Returns the distinct published host ports (> 0) with normalised protocol ("" means tcp), sorted."""
    found = []
    for mapping in ports:
        port = mapping.host_port
        if port > 0:
            found.append((port, (mapping.protocol or "tcp").lower()))
    return tuple(sorted(set(found))) if len(found) > 1 else tuple(found)


def demand_of(task: pb.Task) -> Demand:
    """Returns the reservations and host ports of the task's spec; negative reservations count as zero."""
    spec = task.spec
    resources = spec.resources
    ports = spec.ports
    return Demand(
        service_id=task.service_id,
        cpu=nano_cpus(resources.cpu_reservation),
        memory=max(0, resources.memory_reservation_bytes),
        ports=host_ports(ports) if ports else (),
    )
