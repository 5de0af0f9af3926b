"""The binpack strategy: fill the fullest node that still fits, keeping emptier nodes free for large tasks."""

from __future__ import annotations

from controller.scheduler.demand import Demand
from controller.scheduler.node_state import NodeState
from controller.scheduler.ranking import Scorer
from controller.scheduler.scorers import load_fraction


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


BINPACK_SCORERS: tuple[Scorer, ...] = (MostReserved(), LeastFreeMemory(), LeastFreeCpu())
"""Most reserved first, then fewest free resources; the seeded ring breaks what is left."""
