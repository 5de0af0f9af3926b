"""Placement of a task pinned to one node, as the orchestrator does for each task of a global service."""

from __future__ import annotations

from collections.abc import Sequence

from controller.scheduler.accounting import Accounting
from controller.scheduler.decision import Decision
from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter


def place_pinned(
    accounting: Accounting, filters: Sequence[Filter], task_id: str, node_id: str, demand: Demand
) -> Decision:
    """Charges the demand to node_id when every filter passes there, else says what that one node lacks."""
    node = accounting.nodes.get(node_id)
    if node is None:
        return Decision(task_id, None, f"node {node_id} is not in the cluster")
    for check in filters:
        rejection = check.check(node, demand)
        if rejection is not None:
            return Decision(task_id, None, f"node {node.hostname or node.id}: {rejection.one}")
    accounting.charge(node, demand)
    return Decision(task_id, node.id, "")
