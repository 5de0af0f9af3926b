"""A set of nodes judged for one demand, kept ordered so that finding the best costs O(log n)."""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence

from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter
from controller.scheduler.node_state import NodeState
from controller.scheduler.ranking import Scorer
from controller.scheduler.reason import RejectionKey
from controller.scheduler.tiebreak import RING_BITS

Score = tuple[float, ...]
RingSlot = tuple[int, str]
Candidate = tuple[Score, int, str]
"""A feasible node as (score, ring distance from the task, node id); the smallest is the best."""

_RING_MASK = (1 << RING_BITS) - 1
_BULK = 32  # below this many nodes, inserting in place beats re-sorting tiers that may hold thousands


class CandidatePool:
    """Nodes judged for one demand: feasible ones in tiers of equal score, the others counted by rejection.

    A heap yields the best tier; inside a tier, sorted by ring position, the task's ring point finds the
    winner by bisection. A node's entry depends only on its own state, so a node whose state changed is
    discarded and added again, and nothing else moves.
    """

    __slots__ = ("_checks", "_heap", "_rejected", "_scored", "_scores", "_tiers", "demand", "rejections")

    def __init__(self, demand: Demand, filters: Sequence[Filter], scorers: Sequence[Scorer]) -> None:
        """Creates an empty pool for the demand."""
        self.demand = demand
        # A filter that cannot reject anything for this demand would only cost a call per judgement.
        self._checks = tuple((index, f.check) for index, f in enumerate(filters) if f.applies(demand))
        self._scores = tuple(s.score for s in scorers)
        self._tiers: dict[Score, list[RingSlot]] = {}
        # Keys of emptied tiers may linger in the heap; best() drops them when they surface.
        self._heap: list[Score] = []
        self._scored: dict[str, Score] = {}
        self._rejected: dict[str, RejectionKey] = {}
        self.rejections: dict[RejectionKey, int] = {}

    def node_ids(self) -> list[str]:
        """Returns the ids of every node in the pool, feasible or not."""
        return [*self._scored, *self._rejected]

    def add(self, node: NodeState) -> None:
        """Judges a node that is not in the pool and files it as feasible or rejected."""
        score = self._judge(node)
        if score is not None:
            members = self._tiers.get(score)
            if members is None:
                self._tiers[score] = [node.ring]
                heapq.heappush(self._heap, score)
            else:
                insort(members, node.ring)

    def add_all(self, nodes: Iterable[NodeState]) -> None:
        """Like add() for each node, but sorts each tier once instead of inserting one by one."""
        batch = list(nodes)
        if len(batch) < _BULK:
            for node in batch:
                self.add(node)
            return
        tiers = self._tiers
        grown: set[Score] = set()
        for node in batch:
            score = self._judge(node)
            if score is None:
                continue
            members = tiers.get(score)
            if members is None:
                tiers[score] = [node.ring]
                heapq.heappush(self._heap, score)
            else:
                members.append(node.ring)
                grown.add(score)
        for score in grown:
            tiers[score].sort()

    def discard(self, node: NodeState) -> None:
        """Removes a node that is in the pool, including its rejection from the counts."""
        score = self._scored.pop(node.id, None)
        if score is None:
            key = self._rejected.pop(node.id)
            remaining = self.rejections[key] - 1
            if remaining:
                self.rejections[key] = remaining
            else:
                del self.rejections[key]
            return
        members = self._tiers[score]
        del members[bisect_left(members, node.ring)]
        if not members:
            del self._tiers[score]

    def best(self, point: int) -> Candidate | None:
        """Returns the best feasible node for a task at this ring point, or None when there is none."""
        heap = self._heap
        tiers = self._tiers
        while heap:
            score = heap[0]
            members = tiers.get(score)
            if members:
                break
            heapq.heappop(heap)
        else:
            return None
        index = bisect_left(members, (point, ""))
        ring, node_id = members[index] if index < len(members) else members[0]
        return score, (ring - point) & _RING_MASK, node_id

    def _judge(self, node: NodeState) -> Score | None:
        """Records and returns the node's score, or records its first rejection and returns None."""
        demand = self.demand
        for index, check in self._checks:
            rejection = check(node, demand)
            if rejection is not None:
                key = (index, rejection)
                self._rejected[node.id] = key
                self.rejections[key] = self.rejections.get(key, 0) + 1
                return None
        score = tuple([criterion(node, demand) for criterion in self._scores])
        self._scored[node.id] = score
        return score
