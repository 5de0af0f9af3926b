"""The contract of a feasibility filter: can this node take this demand, and if not, why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.scheduler.demand import Demand
from controller.scheduler.node_state import NodeState


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a node cannot take a task, as a predicate for "1 node ..." (one) and "3 nodes ..." (many).

    Equal rejections are counted together in the unplaced reason, so the text carries the detail that makes
    them different (the port, the amount needed).
    """

    one: str
    many: str


class Filter(Protocol):
    """A feasibility check. Filters run cheapest first and the first rejection is the one reported.

    check must depend only on this node's state and the demand (a node is judged again only when a task is
    placed on it), and on the demand's service only through node.services.get(demand.service_id, 0): one
    judgement serves every service with the same footprint on nodes that hold none of its tasks (shapes.py).
    """

    @property
    def name(self) -> str:
        """Returns a short stable name for logs and tests."""
        ...

    def applies(self, demand: Demand) -> bool:
        """Tells whether check could reject any node for this demand; pools skip the filter when it cannot."""
        ...

    def check(self, node: NodeState, demand: Demand) -> Rejection | None:
        """Returns None when the node can take the demand, otherwise why it cannot."""
        ...
