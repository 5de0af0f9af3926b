"""Scorers: how good a feasible node is for a demand, lower first. stack.py chains them into strategies."""

from __future__ import annotations

from typing import Protocol

from controller.scheduler.model import Demand, NodeState


class Scorer(Protocol):
    """One criterion of the ranking. Scorers compare lexicographically in list order; lower wins.

    score must depend only on that node's state and the demand (never on other nodes or on totals across the
    cluster): after a placement only the chosen node is re-scored, which is what keeps a placement O(log n).
    As for filters, the service may matter only through node.services.get(demand.service_id, 0).
    """

    @property
    def name(self) -> str:
        """Returns a short stable name for logs and tests."""
        ...

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns this criterion's value for placing the demand on the node; lower is better."""
        ...


def load_fraction(node: NodeState, demand: Demand) -> float:
    """Returns the larger of the CPU and memory fractions the node would have reserved after the placement."""
    # A zero capacity only gets here when the reservation is zero too (ResourcesFit), so it counts as empty.
    cpu = (node.cpu_reserved + demand.cpu) / node.cpu_capacity if node.cpu_capacity else 0.0
    memory = (node.memory_reserved + demand.memory) / node.memory_capacity if node.memory_capacity else 0.0
    return cpu if cpu > memory else memory


# The spread strategy.


class ServiceSpread:
    """Prefers nodes holding fewer tasks of the demand's service, so replicas land on distinct nodes."""

    __slots__ = ()
    name = "service-spread"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns how many tasks of the same service the node already holds."""
        return node.services.get(demand.service_id, 0)


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


# The binpack strategy: fill the fullest node that still fits, keeping emptier nodes free for large tasks.


class MostReserved:
    """Prefers nodes with the largest reserved share of their scarcest resource."""

    __slots__ = ()
    name = "most-reserved"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns the node's dominant reserved fraction after the placement, negated so fuller ranks first."""
        # Counting the task itself favours the node it fills best: a small node it nearly fills beats a big
        # one slightly fuller now, which is what leaves the fewest scraps behind.
        return -load_fraction(node, demand)


class LeastFreeMemory:
    """Prefers nodes left with less unreserved memory; among equally full nodes, the smaller one."""

    __slots__ = ()
    name = "least-free-memory"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns the bytes left unreserved after the placement."""
        return node.memory_capacity - node.memory_reserved - demand.memory


class LeastFreeCpu:
    """Prefers nodes left with fewer unreserved CPUs, once memory ties."""

    __slots__ = ()
    name = "least-free-cpu"

    def score(self, node: NodeState, demand: Demand) -> float:
        """Returns the nano-CPUs left unreserved after the placement."""
        return node.cpu_capacity - node.cpu_reserved - demand.cpu
