"""Per-node accounting of what current tasks hold, built once per scheduling call."""

from __future__ import annotations

from collections.abc import Container, Sequence

from controller.scheduler.demand import demand_of
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


def node_states(
    nodes: Sequence[pb.Node], tasks: Sequence[pb.Task], seed: int, skip_task_ids: Container[str]
) -> dict[str, NodeState]:
    """Returns each node's state keyed by id, charged with every holding task not in skip_task_ids.

    Tasks on nodes that are not listed are ignored. The tasks being placed are skipped so a pending task
    that still names an old node is not counted twice.
    """
    states: dict[str, NodeState] = {}
    for node in nodes:
        description = node.description
        node_id = node.id
        states[node_id] = NodeState(
            id=node_id,
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
        state = states.get(task.node_id)
        if state is not None:
            state.take(demand_of(task))
    return states
