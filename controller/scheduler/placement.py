"""schedule(): places pending tasks one by one, each seeing the placements made before it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from controller.scheduler.accounting import Accounting
from controller.scheduler.decision import Decision
from controller.scheduler.demand import demand_of
from controller.scheduler.feasibility import Filter
from controller.scheduler.filters import DEFAULT_FILTERS
from controller.scheduler.ranking import Scorer
from controller.scheduler.scorers import SPREAD_SCORERS
from controller.scheduler.service_run import ServiceRun
from controller.scheduler.shapes import ShapePools
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
) -> list[Decision]:
    """Returns one Decision per pending task, in (service id, slot, task id) order; pure and seeded.

    tasks is every current task: those holding a node (see holds_resources) count towards its load, ports and
    spread. Each placement is charged before the next task is placed. The result depends only on the inputs
    and the seed, not on the order of nodes, tasks or pending. now is accepted so time-aware filters can be
    added without an API change; the built-in ones do not use it.

    Cost: O(nodes + tasks) accounting; O(nodes) per distinct reservation/port shape; per run of one service
    O(nodes already holding it); O(log nodes) per placement.
    """
    del now  # see the docstring
    ordered = sorted(pending, key=_placement_order)
    accounting = Accounting(nodes, tasks, seed, {task.id for task in ordered})
    shapes = ShapePools(accounting, filters, scorers)
    decisions: list[Decision] = []
    run: ServiceRun | None = None
    for task in ordered:
        demand = demand_of(task)
        if run is None or demand != run.demand:
            if run is not None:
                shapes.checkin(run.close())
            run = ServiceRun(accounting, shapes.checkout(demand), demand, filters, scorers)
        node = run.place(ring_point(seed, task.id))
        if node is None:
            decisions.append(Decision(task.id, None, run.reason()))
        else:
            decisions.append(Decision(task.id, node.id, ""))
    return decisions
