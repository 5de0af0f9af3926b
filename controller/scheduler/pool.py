"""The feasible nodes for one demand, ordered so that each placement costs O(log n)."""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence

from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter
from controller.scheduler.node_state import NodeState
from controller.scheduler.ranking import Scorer
from controller.scheduler.reason import RejectionKey, unplaced_reason

Score = tuple[float, ...]
RingSlot = tuple[int, str]


class CandidatePool:
    """Feasible nodes for one demand, grouped into tiers of equal score, each tier sorted by ring position.

    A heap yields the best tier; inside it the task's ring point picks the winner by bisection. Placing a task
    only changes the chosen node, so only that node is re-filtered and re-scored. Usage never shrinks during a
    call, so a node that fails a filter is dropped for good and counted in the unplaced reason.
    """

    __slots__ = (
        "_checks",
        "_demand",
        "_heap",
        "_node_count",
        "_nodes",
        "_reason",
        "_rejections",
        "_scores",
        "_tiers",
    )

    def __init__(
        self,
        nodes: Mapping[str, NodeState],
        demand: Demand,
        filters: Sequence[Filter],
        scorers: Sequence[Scorer],
    ) -> None:
        """Filters and scores every node once for this demand."""
        self._nodes = nodes
        self._demand = demand
        self._checks = tuple(enumerate(f.check for f in filters))
        self._scores = tuple(s.score for s in scorers)
        self._node_count = len(nodes)
        self._rejections: dict[RejectionKey, int] = {}
        self._reason: str | None = None
        tiers: dict[Score, list[RingSlot]] = {}
        # _rejected and _score inlined: this loop runs once per node per pool and dominates building one.
        checks = self._checks
        scores = self._scores
        rejections = self._rejections
        for node in nodes.values():
            for index, check in checks:
                rejection = check(node, demand)
                if rejection is not None:
                    key = (index, rejection)
                    rejections[key] = rejections.get(key, 0) + 1
                    break
            else:
                score = tuple([criterion(node, demand) for criterion in scores])
                members = tiers.get(score)
                if members is None:
                    tiers[score] = [node.ring]
                else:
                    members.append(node.ring)
        for members in tiers.values():
            members.sort()
        self._tiers = tiers
        # Keys of emptied tiers may linger in the heap; they are dropped when they surface.
        self._heap = list(tiers)
        heapq.heapify(self._heap)

    def place(self, point: int) -> NodeState | None:
        """Reserves the demand on the best node for a task at this ring point; None when none is feasible."""
        heap = self._heap
        tiers = self._tiers
        while heap:
            best = heap[0]
            members = tiers.get(best)
            if members:
                break
            heapq.heappop(heap)
        else:
            return None
        index = bisect_left(members, (point, ""))
        slot = members.pop(index if index < len(members) else 0)
        if not members:
            del tiers[best]
            heapq.heappop(heap)
        node = self._nodes[slot[1]]
        node.take(self._demand)
        if not self._rejected(node):
            score = self._score(node)
            members = tiers.get(score)
            if members is None:
                tiers[score] = [slot]
                heapq.heappush(heap, score)
            else:
                insort(members, slot)
        return node

    def reason(self) -> str:
        """Returns why no node is feasible, counting each node under the first filter that rejected it."""
        if self._reason is None:
            self._reason = unplaced_reason(self._node_count, self._rejections)
        return self._reason

    def _rejected(self, node: NodeState) -> bool:
        demand = self._demand
        for index, check in self._checks:
            rejection = check(node, demand)
            if rejection is not None:
                key = (index, rejection)
                self._rejections[key] = self._rejections.get(key, 0) + 1
                self._reason = None
                return True
        return False

    def _score(self, node: NodeState) -> Score:
        demand = self._demand
        return tuple([score(node, demand) for score in self._scores])
