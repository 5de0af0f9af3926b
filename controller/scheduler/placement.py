"""schedule(): places pending tasks one by one, each seeing the placements made before it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from controller.scheduler.accounting import Accounting
from controller.scheduler.binpack import BINPACK_SCORERS
from controller.scheduler.decision import Decision
from controller.scheduler.demand import demand_of
from controller.scheduler.feasibility import Filter
from controller.scheduler.filters import DEFAULT_FILTERS
from controller.scheduler.pinned import place_pinned
from controller.scheduler.ranking import Scorer
from controller.scheduler.scorers import SPREAD_SCORERS
from controller.scheduler.service_run import ServiceRun
from controller.scheduler.shapes import ShapePools
from controller.scheduler.strategies import Strategies
from controller.scheduler.tiebreak import ring_point
from dockyard.v1 import types_pb2 as pb


def _placement_order(task: pb.Task) -> tuple[str, int, str]:
    return (task.service_id, task.slot, task.id)


def schedule(
    nodes: Sequence[pb.Node],
    tasks: Sequence[pb.Task],
    pending: Sequence[pb.Task],
    now: datetime,
    seed: int,
    *,
    filters: Sequence[Filter] = DEFAULT_FILTERS,
    scorers: Sequence[Scorer] = SPREAD_SCORERS,
    binpack_scorers: Sequence[Scorer] = BINPACK_SCORERS,
) -> list[Decision]:
    """Returns one Decision per pending task: pinned ones, then the rest, each in (service, slot, id) order.

    tasks is every current task: those holding a node (see holds_resources) count towards its load, ports,
    spread and max replicas per node. A pending task with node_id set is pinned: it is judged on that node
    only. Each placement is charged before the next task is placed. scorers rank nodes for services with the
    default spread strategy, binpack_scorers for those choosing binpack. The result depends only on the
    inputs and the seed, not on the order of nodes, tasks or pending. now is accepted so time-aware filters
    can be added without an API change; the built-in ones do not use it.

    Cost: O(nodes + tasks) accounting; O(nodes) per distinct reservation/port/constraint/strategy shape; per
    run of one service O(nodes already holding it); O(log nodes) per placement; O(filters) per pinned task.
    """
    del now  # see the docstring
    # Pinned tasks go first: each has a single possible node, which a task free to go anywhere could
    # otherwise fill just before it.
    pinned = sorted((task for task in pending if task.node_id), key=_placement_order)
    free = sorted((task for task in pending if not task.node_id), key=_placement_order)
    accounting = Accounting(nodes, tasks, seed, {task.id for task in pending})
    decisions: list[Decision] = []
    for task in pinned:
        demand = demand_of(task)
        if demand.invalid:
            decisions.append(Decision(task.id, None, demand.invalid))
        else:
            decisions.append(place_pinned(accounting, filters, task.id, task.node_id, demand))
    strategies = Strategies(tuple(scorers), tuple(binpack_scorers))
    shapes = ShapePools(accounting, filters, strategies)
    run: ServiceRun | None = None
    for task in free:
        demand = demand_of(task)
        if demand.invalid:
            decisions.append(Decision(task.id, None, demand.invalid))
            continue
        if run is None or demand != run.demand:
            if run is not None:
                shapes.checkin(run.close())
            run = ServiceRun(accounting, shapes.checkout(demand), demand, filters, strategies.scorers(demand))
        node = run.place(ring_point(seed, task.id))
        if node is None:
            decisions.append(Decision(task.id, None, run.reason()))
        else:
            decisions.append(Decision(task.id, node.id, ""))
    return decisions
