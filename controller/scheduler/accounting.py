"""Per-node accounting of what tasks hold, built once per scheduling call and charged as tasks are placed."""

from __future__ import annotations

from collections.abc import Container, Sequence

from controller.scheduler.demand import Demand, footprint_of
from controller.scheduler.node_state import NodeState
from controller.scheduler.tiebreak import ring_point
from controller.scheduler.units import nano_cpus
from dockyard.v1 import types_pb2 as pb


def holds_resources(task: pb.Task) -> bool:
    """True while the task is assigned to a node and has not reached a terminal state (COMPLETE or later).

    The desired state does not matter: a task told to SHUT DOWN keeps its container, and with it the host
    ports and reservations, until the agent reports it terminal, so releasing them earlier could double-book.
    """
    return bool(task.node_id) and task.status.state < pb.TASK_STATE_COMPLETE


class Accounting:
    """Every node's state, which nodes hold each service, and the log of nodes charged during this call."""

    __slots__ = ("changes", "nodes", "service_nodes")

    def __init__(
        self, nodes: Sequence[pb.Node], tasks: Sequence[pb.Task], seed: int, skip_task_ids: Container[str]
    ) -> None:
        """Charges each holding task not in skip_task_ids to its node; tasks on unlisted nodes are ignored.

        The tasks being placed are skipped so that a pending task still naming an old node is not counted
        twice.
        """
        self.nodes: dict[str, NodeState] = {}
        self.service_nodes: dict[str, set[str]] = {}
        # Node ids in the order they were charged by placements; pools replay it to catch up.
        self.changes: list[str] = []
        for node in nodes:
            description = node.description
            node_id = node.id
            self.nodes[node_id] = NodeState(
                id=node_id,
                hostname=description.hostname,
                ring=(ring_point(seed, node_id), node_id),
                status=node.status,
                availability=node.availability or pb.NODE_AVAILABILITY_ACTIVE,
                cpu_capacity=nano_cpus(description.cpus),
                memory_capacity=max(0, description.memory_bytes),
                source=node,
            )
        for task in tasks:
            if not holds_resources(task) or task.id in skip_task_ids:
                continue
            state = self.nodes.get(task.node_id)
            if state is not None:
                state.take(footprint_of(task))
        for state in self.nodes.values():
            for service_id in state.services:
                self.service_nodes.setdefault(service_id, set()).add(state.id)

    def charge(self, node: NodeState, demand: Demand) -> None:
        """Records a placement of the demand on the node."""
        node.take(demand)
        self.service_nodes.setdefault(demand.service_id, set()).add(node.id)
        self.changes.append(node.id)
