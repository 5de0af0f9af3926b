"""The scheduler: decides which node each pending task runs on. Start reading at stack.py.

- stack.py: the pipeline, the order of the filters and the scorers of each strategy.
- model.py: the snapshot a call works on: what each task demands, what each node holds.
- filters.py: each feasibility filter, the reasons it gives, and how an unplaced task's reason is worded.
- scorers.py: each ranking criterion.
- engine.py: schedule(), the fast placement loop, the placement order and the seeded tie-break.
- reference.py: the same plan by brute force, which the engine is tested against.
- role.py: the I/O shell that reads the store, calls schedule() and commits its decisions.

Everything but role.py is pure: no I/O, no clock, the same inputs and seed give the same plan.
docs/design/scheduler.md is the design note.
"""

from controller.scheduler.engine import placement_order, ring_point, schedule, tie_break_id
from controller.scheduler.filters import (
    ConstraintsMatch,
    Filter,
    HostPortsFree,
    MaxReplicasPerNode,
    NodeAvailable,
    Rejection,
    ResourcesFit,
    VolumeOnNode,
)
from controller.scheduler.model import Decision, Demand, NodeState, VolumeSite, holds_resources
from controller.scheduler.reference import reference_schedule
from controller.scheduler.scorers import (
    FewestTasks,
    LeastFreeCpu,
    LeastFreeMemory,
    LeastLoaded,
    MostReserved,
    Scorer,
    ServiceSpread,
)
from controller.scheduler.stack import BINPACK_SCORERS, DEFAULT_FILTERS, DEFAULT_STACK, SPREAD_SCORERS, Stack
from dockyard.task_state import SpecKey

__all__ = [
    "BINPACK_SCORERS",
    "DEFAULT_FILTERS",
    "DEFAULT_STACK",
    "SPREAD_SCORERS",
    "ConstraintsMatch",
    "Decision",
    "Demand",
    "FewestTasks",
    "Filter",
    "HostPortsFree",
    "LeastFreeCpu",
    "LeastFreeMemory",
    "LeastLoaded",
    "MaxReplicasPerNode",
    "MostReserved",
    "NodeAvailable",
    "NodeState",
    "Rejection",
    "ResourcesFit",
    "Scorer",
    "ServiceSpread",
    "SpecKey",
    "Stack",
    "VolumeOnNode",
    "VolumeSite",
    "holds_resources",
    "placement_order",
    "reference_schedule",
    "ring_point",
    "schedule",
    "tie_break_id",
]
