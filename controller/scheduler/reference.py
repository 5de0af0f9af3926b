"""The plan by definition: for every task, judge every node afresh and take the best. Slow, and obviously right.

engine.schedule() must return exactly what reference_schedule() returns for the same inputs; the property
tests (tests/unit/test_scheduler_properties.py) hold it to that on generated clusters. Any change to how the
engine places tasks is a change here first. It shares with the engine only the model (what a task demands,
what a node holds), the stack (filters and scorers) and the wording of reasons, never its shortcuts: no
shared pools, no per-service runs, no caching of judgements.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Mapping, Sequence
from datetime import datetime
from functools import partial

from controller.scheduler.engine import placement_order, ring_distance, ring_point, tie_break_id
from controller.scheduler.filters import RejectionKey, pinned_reason, unknown_node_reason, unplaced_reason
from controller.scheduler.model import Cluster, Decision, Demands
from controller.scheduler.stack import DEFAULT_STACK, Stack
from dockyard.task_state import SpecKey
from dockyard.v1 import types_pb2 as pb


def reference_schedule(
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
    """Returns the decisions engine.schedule() must return, computed in O(nodes) per task.

    Pinned tasks come first and are judged on their own node only; then the others, each in placement_order.
    A free task goes to the node with the smallest (in its avoid_node_ids, score, ring distance from the task's
    tie_break_id, node id) among those that pass every filter; when none does, its reason counts each node
    under the first filter that rejected it.
    """
    del now  # as in engine.schedule
    demands = Demands(specs, volumes, {node.id: node for node in nodes}, removing)
    cluster = Cluster(nodes, tasks, demands, partial(ring_point, seed), {task.id for task in pending})
    plan = []
    for task in sorted(pending, key=lambda t: (not t.node_id, *placement_order(t))):
        demand = demands.of(task)
        if isinstance(demand, str):
            plan.append(Decision(task.id, None, demand))
            continue
        if task.node_id:
            pinned = cluster.nodes.get(task.node_id)
            if pinned is None:
                plan.append(Decision(task.id, None, unknown_node_reason(task.node_id)))
                continue
            rejections = [r for r in (f.check(pinned, demand) for f in stack.filters) if r is not None]
            if rejections:
                plan.append(Decision(task.id, None, pinned_reason(pinned, rejections[0])))
            else:
                cluster.charge(pinned, demand)
                demands.pin(task, pinned.id)
                plan.append(Decision(task.id, pinned.id, ""))
            continue
        scorers = stack.scorers(demand)
        point = ring_point(seed, tie_break_id(task))
        avoid = set(task.avoid_node_ids)
        best: tuple[bool, tuple[float, ...], int, str] | None = None
        counts: Counter[RejectionKey] = Counter()
        for node in cluster.nodes.values():
            rejection = next(
                ((i, r) for i, f in enumerate(stack.filters) if (r := f.check(node, demand)) is not None), None
            )
            if rejection is not None:
                counts[rejection] += 1
                continue
            score = tuple(scorer.score(node, demand) for scorer in scorers)
            candidate = (node.id in avoid, score, ring_distance(node.ring[0], point), node.id)
            best = candidate if best is None else min(best, candidate)
        if best is None:
            plan.append(Decision(task.id, None, unplaced_reason(len(cluster.nodes), counts)))
        else:
            cluster.charge(cluster.nodes[best[3]], demand)
            demands.pin(task, best[3])
            plan.append(Decision(task.id, best[3], ""))
    return plan
