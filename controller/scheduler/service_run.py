"""Placement of a run of consecutive tasks that share one demand (one service, one footprint)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from controller.scheduler.accounting import Accounting
from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter
from controller.scheduler.node_state import NodeState
from controller.scheduler.pool import CandidatePool
from controller.scheduler.ranking import Scorer
from controller.scheduler.reason import unplaced_reason


class ServiceRun:
    """Splits the nodes between the shared shape pool and a pool of nodes already holding the service.

    Nodes holding the service are moved out of the shape pool for the run and judged for the real demand;
    each node the run places on joins them. The best of the two pools' best candidates wins. close() hands
    the moved nodes back, judged on their new state, so the run costs O(nodes holding the service), not
    O(nodes).
    """

    __slots__ = ("_accounting", "_own", "_reason", "_shape", "demand")

    def __init__(
        self,
        accounting: Accounting,
        shape: CandidatePool,
        demand: Demand,
        filters: Sequence[Filter],
        scorers: Sequence[Scorer],
    ) -> None:
        """Moves the nodes that hold the demand's service from the shape pool into the run's own pool."""
        self.demand = demand
        self._accounting = accounting
        self._shape = shape
        self._own = CandidatePool(demand, filters, scorers)
        self._reason: str | None = None
        holding = [accounting.nodes[i] for i in accounting.service_nodes.get(demand.service_id, ())]
        for node in holding:
            shape.discard(node)
        self._own.add_all(holding)

    def place(self, point: int) -> NodeState | None:
        """Charges the demand to the best node for a task at this ring point; None when nothing is feasible."""
        if self._reason is not None:
            return None  # nothing changed since the last task of this run found no node
        shared = self._shape.best(point)
        own = self._own.best(point)
        if own is None or (shared is not None and shared < own):
            if shared is None:
                self._reason = self._explain()
                return None
            node = self._accounting.nodes[shared[2]]
            self._shape.discard(node)
        else:
            node = self._accounting.nodes[own[2]]
            self._own.discard(node)
        self._accounting.charge(node, self.demand)
        self._own.add(node)
        return node

    def reason(self) -> str:
        """Returns why the last place() found no node."""
        return self._reason or self._explain()

    def close(self) -> CandidatePool:
        """Returns the run's nodes to the shape pool, judged on their current state, and that pool."""
        nodes = self._accounting.nodes
        self._shape.add_all([nodes[node_id] for node_id in self._own.node_ids()])
        return self._shape

    def _explain(self) -> str:
        # The two pools partition the nodes, so their rejection counts add up to one per infeasible node.
        counts = Counter(self._shape.rejections)
        counts.update(self._own.rejections)
        return unplaced_reason(len(self._accounting.nodes), counts)
