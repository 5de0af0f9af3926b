"""The fast placement loop: the plan of stack.py, placed in O(log nodes) per task instead of O(nodes).

Read top-down: schedule() orders the tasks and hands each run of one service to a ServiceRun, which picks
from two CandidatePools (nodes judged once per demand shape and shared across services, and nodes already
holding the service). reference.py computes the same plan by brute force; the property tests hold the two
equal. docs/design/scheduler.md explains why the shortcuts are exact.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left, insort
from collections import Counter, OrderedDict
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache, partial

from controller.scheduler.filters import (
    Filter,
    RejectionKey,
    pinned_reason,
    unknown_node_reason,
    unplaced_reason,
)
from controller.scheduler.model import Cluster, Decision, Demand, Demands, NodeState
from controller.scheduler.scorers import Scorer
from controller.scheduler.stack import DEFAULT_STACK, Stack
from dockyard.task_state import SpecKey
from dockyard.v1 import types_pb2 as pb

# The seeded ring that breaks ties between equally ranked nodes.
#
# Nodes (by id) and tasks (by tie_break_id: service name, slot, generation) are hashed onto a 64-bit ring with
# the seed. Among tied nodes a task takes the first one at or after its own point, wrapping around: it
# minimises (hash(seed, node) - hash(seed, task)) mod 2**64. The ring is chosen over hashing every (task, node)
# pair because the winner is then found with one bisect in a sorted tier instead of one hash per tied node, and
# it depends only on those names, never on the order of inputs or on the random ids of new tasks.

RING_BITS = 64
_RING_MASK = (1 << RING_BITS) - 1


@lru_cache(maxsize=16)
def _seeded(seed: int) -> hashlib.blake2b:
    return hashlib.blake2b(f"{seed}\x00".encode(), digest_size=RING_BITS // 8)


def ring_point(seed: int, ident: str) -> int:
    """Returns the id's position on the ring for this seed; stable across processes, unlike hash()."""
    # Copying a hasher that already absorbed the seed is cheaper than hashing seed and id from scratch.
    hasher = _seeded(seed).copy()
    hasher.update(ident.encode())
    return int.from_bytes(hasher.digest(), "big")


def ring_distance(node_point: int, task_point: int) -> int:
    """Returns how far after the task's point the node sits on the ring; the nearest wins a tie."""
    return (node_point - task_point) & _RING_MASK


def tie_break_id(task: pb.Task) -> str:
    """Returns what puts a free task on the tie-break ring: its service's name, slot and generation.

    Never the task's id, nor its service's: both are random, made when the task or service is created, so a
    dry run (PlanApply) could not know them. These three are what the reconciler gives the same task in the
    dry run and in the real apply, so both break ties alike. A task with no service name uses the service id.
    """
    return f"{task.service_name or task.service_id}\x00{task.slot}\x00{task.generation}"


def placement_order(task: pb.Task) -> tuple[str, str, int, int, str]:
    """Returns the key tasks are placed in: service name, slot, generation; ids only settle what is left.

    Names, as for tie_break_id: the order must not depend on the random ids of new services or tasks. The
    service id right after the name keeps each service's tasks together when a deleted service and a new one
    share a name.
    """
    return (task.service_name or task.service_id, task.service_id, task.slot, task.generation, task.id)


def schedule(
    nodes: Sequence[pb.Node],
    tasks: Sequence[pb.Task],
    pending: Sequence[pb.Task],
    specs: Mapping[SpecKey, pb.ServiceSpec],
    now: datetime,
    seed: int,
    *,
    stack: Stack = DEFAULT_STACK,
    volumes: Mapping[str, str] | None = None,
    removing: Container[str] = (),
) -> list[Decision]:
    """Returns one Decision per pending task: pinned ones, then the rest, each in placement_order.

    tasks is every current task: those holding a node (see holds_resources) count towards its load, ports,
    spread and max replicas per node. A task's spec is specs[(task.service_id, task.revision)], never
    task.spec; a pending task whose spec is missing stays unplaced. A pending task with node_id set is pinned:
    it is judged on that node only. A free task goes to a node in its avoid_node_ids only when no other node is
    feasible. Each placement is charged before the next task is placed. The result depends only on the inputs
    and the seed, not on the order of nodes, tasks or pending, nor on the ids of pending tasks and of services
    (see tie_break_id): a dry run that builds the same tasks with other ids gets the same nodes. now is
    accepted so time-aware filters can be added without an API change; the built-in ones do not use it.
    volumes maps each volume that lives on a node already to that node's id (Volume.node_id): a task that
    mounts one runs only there; a task placed with a volume that lives nowhere yet pins it to its node for
    the tasks placed after it (the caller pins the records in the same commit, see controller.volumes).
    A task that mounts a volume named in `removing` (being removed) stays unplaced, saying so.

    Cost: O(nodes + tasks) accounting; O(nodes) per distinct reservation/port/constraint/strategy shape; per
    run of one service O(nodes already holding it); O(log nodes) per placement; O(filters) per pinned task.
    """
    del now  # see the docstring
    demands = Demands(specs, volumes, {node.id: node for node in nodes}, removing)
    cluster = Cluster(nodes, tasks, demands, partial(ring_point, seed), {task.id for task in pending})
    # Pinned tasks go first: each has a single possible node, which a task free to go anywhere could
    # otherwise fill just before it.
    pinned = sorted((task for task in pending if task.node_id), key=placement_order)
    free = sorted((task for task in pending if not task.node_id), key=placement_order)
    decisions: list[Decision] = []
    for task in pinned:
        demand = demands.of(task)
        if isinstance(demand, str):
            decisions.append(Decision(task.id, None, demand))
        else:
            decision = place_pinned(cluster, stack.filters, task.id, task.node_id, demand)
            if decision.node_id is not None:
                demands.pin(task, decision.node_id)
            decisions.append(decision)
    shapes = ShapePools(cluster, stack)
    run: ServiceRun | None = None
    for task in free:
        demand = demands.of(task)
        if isinstance(demand, str):
            decisions.append(Decision(task.id, None, demand))
            continue
        if run is None or demand != run.demand:
            if run is not None:
                shapes.checkin(run.close())
            run = ServiceRun(cluster, shapes.checkout(demand), demand, stack)
        node = run.place(ring_point(seed, tie_break_id(task)), task.avoid_node_ids)
        if node is None:
            decisions.append(Decision(task.id, None, run.reason()))
        else:
            demands.pin(task, node.id)
            decisions.append(Decision(task.id, node.id, ""))
    return decisions


def place_pinned(cluster: Cluster, filters: Sequence[Filter], task_id: str, node_id: str, demand: Demand) -> Decision:
    """Charges the demand to node_id when every filter passes there, else says what that one node lacks."""
    node = cluster.nodes.get(node_id)
    if node is None:
        return Decision(task_id, None, unknown_node_reason(node_id))
    for check in filters:
        rejection = check.check(node, demand)
        if rejection is not None:
            return Decision(task_id, None, pinned_reason(node, rejection))
    cluster.charge(node, demand)
    return Decision(task_id, node.id, "")


class ServiceRun:
    """Places a run of consecutive tasks that share one demand (one service, one footprint).

    Splits the nodes between the shared shape pool and a pool of nodes already holding the service. Nodes
    holding the service are moved out of the shape pool for the run and judged for the real demand; each node
    the run places on joins them. The best of the two pools' best candidates wins. close() hands the moved
    nodes back, judged on their new state, so the run costs O(nodes holding the service), not O(nodes).
    """

    __slots__ = ("_cluster", "_own", "_reason", "_shape", "demand")

    def __init__(self, cluster: Cluster, shape: CandidatePool, demand: Demand, stack: Stack) -> None:
        """Moves the nodes that hold the demand's service from the shape pool into the run's own pool."""
        self.demand = demand
        self._cluster = cluster
        self._shape = shape
        self._own = CandidatePool(demand, stack.filters, stack.scorers(demand))
        self._reason: str | None = None
        holding = [cluster.nodes[i] for i in cluster.service_nodes.get(demand.service_id, ())]
        for node in holding:
            shape.discard(node)
        self._own.add_all(holding)

    def place(self, point: int, avoid: Collection[str] = ()) -> NodeState | None:
        """Charges the demand to the best node for a task at this ring point; None when nothing is feasible.

        A node in avoid is taken only when no other node is feasible (Task.avoid_node_ids).
        """
        if self._reason is not None:
            return None  # nothing changed since the last task of this run found no node
        hidden = self._hide(avoid) if avoid else []
        pick = self._pick(point)
        if hidden:
            # Put back as they were: hiding moved nothing else, so they are judged the same.
            for pool, node in hidden:
                pool.add(node)
            if pick is None:
                pick = self._pick(point)
        if pick is None:
            self._reason = self._explain()
            return None
        pool, node = pick
        pool.discard(node)
        self._cluster.charge(node, self.demand)
        self._own.add(node)
        return node

    def reason(self) -> str:
        """Returns why the last place() found no node."""
        return self._reason or self._explain()

    def close(self) -> CandidatePool:
        """Returns the run's nodes to the shape pool, judged on their current state, and that pool."""
        nodes = self._cluster.nodes
        self._shape.add_all([nodes[node_id] for node_id in self._own.node_ids()])
        return self._shape

    def _pick(self, point: int) -> tuple[CandidatePool, NodeState] | None:
        """Returns the best feasible node of the two pools for a task at this ring point, with its pool."""
        shared = self._shape.best(point)
        own = self._own.best(point)
        if own is None or (shared is not None and shared < own):
            return None if shared is None else (self._shape, self._cluster.nodes[shared[2]])
        return self._own, self._cluster.nodes[own[2]]

    def _hide(self, avoid: Collection[str]) -> list[tuple[CandidatePool, NodeState]]:
        """Takes the feasible nodes in avoid out of their pool for one pick; returns them with their pools."""
        hidden = []
        for node_id in avoid:
            node = self._cluster.nodes.get(node_id)
            if node is None:
                continue
            for pool in (self._own, self._shape):
                if pool.feasible(node_id):
                    pool.discard(node)
                    hidden.append((pool, node))
                    break
        return hidden

    def _explain(self) -> str:
        # The two pools partition the nodes, so their rejection counts add up to one per infeasible node.
        counts = Counter(self._shape.rejections)
        counts.update(self._own.rejections)
        return unplaced_reason(len(self._cluster.nodes), counts)


NO_SERVICE = "\x00no-service"
"""The made-up service id shape pools are judged for; the NUL keeps it apart from real ids."""

_KEPT_SHAPES = 8  # each pool is O(nodes) memory; distinct shapes beyond this are rebuilt when they return


class ShapePools:
    """Candidate pools shared by every service whose tasks have the same footprint, kept for one call.

    Filters and scorers may depend on the service only through node.services[demand.service_id]. So a node
    that holds no task of a service judges the same for it as for a made-up service held nowhere, and one
    pool judged for that made-up service serves all services of one shape. Only nodes already holding the
    service need judging per service (ServiceRun); that keeps a run of a small service from costing O(nodes).

    The shape keeps what a node is judged on for any service: reservations, ports, constraints and strategy.
    It drops max_per_node, which cannot reject a node holding none of the service (a limit is at least one).
    """

    __slots__ = ("_cluster", "_pools", "_stack", "_synced")

    def __init__(self, cluster: Cluster, stack: Stack) -> None:
        """Starts with no pools; they are built on first use."""
        self._cluster = cluster
        self._stack = stack
        self._pools: OrderedDict[Demand, CandidatePool] = OrderedDict()
        self._synced: dict[Demand, int] = {}  # shape -> length of the change log the pool reflects

    def checkout(self, demand: Demand) -> CandidatePool:
        """Returns the pool of the demand's shape, holding every node judged on its current state."""
        shape = demand._replace(service_id=NO_SERVICE, max_per_node=0)
        nodes = self._cluster.nodes
        changes = self._cluster.changes
        pool = self._pools.get(shape)
        if pool is None:
            pool = CandidatePool(shape, self._stack.filters, self._stack.scorers(shape))
            pool.add_all(nodes.values())
            self._pools[shape] = pool
            if len(self._pools) > _KEPT_SHAPES:
                evicted, _ = self._pools.popitem(last=False)
                del self._synced[evicted]
        else:
            self._pools.move_to_end(shape)
            for node_id in dict.fromkeys(changes[self._synced[shape] :]):
                pool.discard(nodes[node_id])
                pool.add(nodes[node_id])
        self._synced[shape] = len(changes)
        return pool

    def checkin(self, pool: CandidatePool) -> None:
        """Marks a pool whose every node was judged again after the last change as up to date."""
        self._synced[pool.demand] = len(self._cluster.changes)


Score = tuple[float, ...]
RingSlot = tuple[int, str]
Candidate = tuple[Score, int, str]
"""A feasible node as (score, ring distance from the task, node id); the smallest is the best."""

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

    def feasible(self, node_id: str) -> bool:
        """Tells whether the node is in the pool and passed every filter."""
        return node_id in self._scored

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
