"""The contract of a scorer: how good a feasible node is for a demand, lower first."""

from __future__ import annotations

from typing import Protocol

from controller.scheduler.demand import Demand
from controller.scheduler.node_state import NodeState


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
