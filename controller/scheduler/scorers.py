"""The built-in scorers and the spread strategy built from them; binpack.py holds the other strategy."""

from __future__ import annotations

from controller.scheduler.demand import Demand
from controller.scheduler.node_state import NodeState
from controller.scheduler.ranking import Scorer


class ServiceSpread:
    """Prefers nodes holding fewer tasks of the demand's service, so replicas land on distinct nodes."""

    __slots__ = ()
    name = "service-spread"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns how many tasks of the same service the node already holds."""
        return node.services.get(demand.service_id, 0)


def load_fraction(node: NodeState, demand: Demand) -> float:
    """Returns the larger of the CPU and memory fractions the node would have reserved after the placement."""
    # A zero capacity only gets here when the reservation is zero too (ResourcesFit), so it counts as empty.
    cpu = (node.cpu_reserved + demand.cpu) / node.cpu_capacity if node.cpu_capacity else 0.0
    memory = (node.memory_reserved + demand.memory) / node.memory_capacity if node.memory_capacity else 0.0
    return cpu if cpu > memory else memory


class LeastLoaded:
    """Prefers nodes with the smallest reserved share of their scarcest resource."""

    __slots__ = ()
    name = "least-loaded"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns the node's dominant reserved fraction after the placement."""
        return load_fraction(node, demand)


class FewestTasks:
    """Prefers nodes holding fewer tasks; separates nodes when reservations are all zero."""

    __slots__ = ()
    name = "fewest-tasks"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns how many tasks the node holds."""
        return node.task_count


SPREAD_SCORERS: tuple[Scorer, ...] = (ServiceSpread(), LeastLoaded(), FewestTasks())
"""The default strategy: spread each service, then balance load; the seeded ring breaks what is left."""
