"""A node as the scheduler sees it during one call: fixed facts plus what its tasks hold."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.scheduler.demand import Demand, HostPort
from dockyard.v1 import types_pb2 as pb


@dataclass(slots=True, eq=False)
class NodeState:
    """Plain-attribute copy of a node, so filters and scorers never touch protobuf in the hot loop.

    ring is the node's position on the seeded tie-break ring, paired with its id to make it unique.
    source keeps the original message for filters that need rarely read fields.
    """

    id: str
    hostname: str
    ring: tuple[int, str]
    status: int
    availability: int  # UNSPECIFIED is already mapped to ACTIVE
    cpu_capacity: int  # nano-CPUs
    memory_capacity: int  # bytes
    source: pb.Node
    cpu_reserved: int = 0
    memory_reserved: int = 0
    task_count: int = 0
    ports: set[HostPort] = field(default_factory=set)
    services: dict[str, int] = field(default_factory=dict)  # service id -> tasks held here
    _labels: dict[str, str] | None = field(default=None, init=False, repr=False)

    def labels(self) -> Mapping[str, str]:
        """Returns the agent's labels overlaid with the operator's (operators win), built on first use."""
        # Built lazily: copying two protobuf maps per node would tax every call, and only constraints read them.
        labels = self._labels
        if labels is None:
            source = self.source
            labels = self._labels = {**source.description.labels, **source.labels}
        return labels

    def take(self, demand: Demand) -> None:
        """Records that one more task with this demand holds resources, ports and a service slot here."""
        self.cpu_reserved += demand.cpu
        self.memory_reserved += demand.memory
        self.task_count += 1
        if demand.ports:
            self.ports.update(demand.ports)
        services = self.services
        services[demand.service_id] = services.get(demand.service_id, 0) + 1
