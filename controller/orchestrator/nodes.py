"""What the orchestrator needs to know about nodes: which are gone, draining, or may run a global task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from dockyard.constraints import node_satisfies
from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True)
class NodeFacts:
    """A read-only view of the cluster's nodes for one reconcile pass."""

    nodes: Mapping[str, pb.Node]

    @classmethod
    def of(cls, nodes: Iterable[pb.Node]) -> NodeFacts:
        """Indexes nodes by id."""
        return cls({n.id: n for n in nodes})

    def lost(self, node_id: str) -> bool:
        """Tells whether a task placed on this node can no longer be trusted to run: node down or removed."""
        node = self.nodes.get(node_id)
        return node is None or node.status == pb.NODE_STATUS_DOWN

    @cached_property
    def draining_ids(self) -> frozenset[str]:
        """The ids of the nodes whose tasks should move elsewhere."""
        return frozenset(n.id for n in self.nodes.values() if n.availability == pb.NODE_AVAILABILITY_DRAIN)

    def draining(self, node_id: str) -> bool:
        """Tells whether the node's tasks should move elsewhere."""
        node = self.nodes.get(node_id)
        return node is not None and node.availability == pb.NODE_AVAILABILITY_DRAIN

    def name(self, node_id: str) -> str:
        """Returns the host name of a node, or its id when unknown."""
        node = self.nodes.get(node_id)
        return (node.description.hostname or node_id) if node else node_id

    def global_keep(self, node_id: str, spec: pb.ServiceSpec) -> bool:
        """Tells whether a global task on this node may stay: node not lost or draining, constraints hold."""
        node = self.nodes.get(node_id)
        if node is None or self.lost(node_id) or self.draining(node_id):
            return False
        return node_satisfies(node, spec.placement.constraints)

    def global_targets(self, spec: pb.ServiceSpec) -> list[str]:
        """Returns the ids of the nodes that should get a new global task: ready, active, matching."""
        return sorted(
            n.id
            for n in self.nodes.values()
            if n.status == pb.NODE_STATUS_READY
            and n.availability in (pb.NODE_AVAILABILITY_ACTIVE, pb.NODE_AVAILABILITY_UNSPECIFIED)
            and node_satisfies(n, spec.placement.constraints)
        )


def placement_facts(node: pb.Node) -> tuple[object, ...]:
    """Returns what NodeFacts and constraint matching read of a node; two nodes with equal facts plan alike."""
    return (
        node.status,
        node.availability,
        node.description.hostname,
        sorted(node.labels.items()),
        sorted(node.description.labels.items()),
    )
