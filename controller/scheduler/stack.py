"""The scheduler's pipeline in one place: which filters judge a node, in what order, and how nodes are ranked.

For each pending task the engine (engine.py) does, in effect:

1. Demand: read the task's spec by (service, revision); a spec that is gone or a constraint that does not
   parse leaves the task unplaced with that reason (model.Demands).
2. Feasibility: run FILTERS over every node, in order; the first filter that rejects a node is the reason
   counted for it ("3 nodes: 2 lack memory (need 512MiB), 1 has port 8080/tcp in use").
3. Avoidance: feasible nodes in the task's avoid_node_ids (where its slot just failed by the host's fault, or
   the node a rebalance moves it from) are set aside; they are ranked only when no other node is feasible, so
   avoiding never leaves a task unplaced and never changes its reason.
4. Ranking: score the feasible nodes with the strategy's scorers; tuples compare left to right, lower wins.
5. Tie-break: among equal scores, the node nearest after the task on the seeded ring (engine.ring_point of
   engine.tie_break_id: service name, slot and generation, never a random id).
6. Charge the chosen node, so the next task sees this placement.

Pinned tasks (one per node for global services) skip avoidance and ranking: FILTERS run on their one node only.
The engine gets the same answer as re-judging every node for every task (reference.py) but much faster;
docs/design/scheduler.md explains how, and why the order below is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.scheduler.filters import (
    ConstraintsMatch,
    Filter,
    HostPortsFree,
    MaxReplicasPerNode,
    NodeAvailable,
    ResourcesFit,
    VolumeOnNode,
)
from controller.scheduler.model import Demand
from controller.scheduler.scorers import (
    FewestTasks,
    LeastFreeCpu,
    LeastFreeMemory,
    LeastLoaded,
    MostReserved,
    Scorer,
    ServiceSpread,
)

DEFAULT_FILTERS: tuple[Filter, ...] = (
    NodeAvailable(),  # two integer compares; rules out down, paused and drained nodes before anything else
    VolumeOnNode(),  # a task whose volume holds data on one node runs there (nothing to check for most tasks)
    ConstraintsMatch(),  # the service's own rule about where it may run
    MaxReplicasPerNode(),  # the service's own rule about how many per node
    HostPortsFree(),  # contention: another task holds a port this one publishes
    ResourcesFit(),  # contention: not enough unreserved CPU or memory
)
"""Cheap first, and the service's own rules before contention: the first rejection is the one a user reads,
and "doesn't match node.labels.zone == a" says more about a node than the memory it happens to lack."""

SPREAD_SCORERS: tuple[Scorer, ...] = (
    ServiceSpread(),  # fewest tasks of this service: replicas on distinct nodes survive a node's loss
    LeastLoaded(),  # then the smallest reserved share of the scarcest resource
    FewestTasks(),  # then fewest tasks, which separates nodes when nothing reserves anything
)
"""The default strategy: spread each service, then balance load; the seeded ring breaks what is left."""

BINPACK_SCORERS: tuple[Scorer, ...] = (
    MostReserved(),  # the fullest node the task still fits, counting the task itself
    LeastFreeMemory(),  # among equally full nodes, the smaller one
    LeastFreeCpu(),
)
"""Placement strategy binpack: fill nodes before opening new ones, keeping empty ones for large tasks."""


@dataclass(frozen=True, slots=True)
class Stack:
    """The filters every task is judged by, and the scorers of each placement strategy."""

    filters: tuple[Filter, ...] = DEFAULT_FILTERS
    spread: tuple[Scorer, ...] = SPREAD_SCORERS
    binpack: tuple[Scorer, ...] = BINPACK_SCORERS

    def scorers(self, demand: Demand) -> tuple[Scorer, ...]:
        """Returns the scorers of the strategy the demand's service chose."""
        return self.binpack if demand.binpack else self.spread


DEFAULT_STACK = Stack()
"""The stack every call uses unless told otherwise (tests and benchmarks swap pieces)."""
