"""The filters that enforce a service's placement rules: its constraints and its max replicas per node."""

from __future__ import annotations

from functools import lru_cache

from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Rejection
from controller.scheduler.node_state import NodeState
from dockyard.constraints import Constraint


@lru_cache(maxsize=1024)
def _unmatched(constraint: Constraint) -> Rejection:
    return Rejection(f"doesn't match {constraint}", f"don't match {constraint}")


class ConstraintsMatch:
    """Rejects nodes that fail one of the task's placement constraints, naming the first that fails."""

    __slots__ = ()
    name = "constraints"

    def applies(self, demand: Demand) -> bool:
        """Tells whether the demand has any constraint."""
        return bool(demand.constraints)

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when every constraint holds for the node's id, host name and merged labels."""
        constraints = demand.constraints
        if constraints:
            labels = node.labels()
            for constraint in constraints:
                if not constraint.matches(node.id, node.hostname, labels):
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
