"""The scheduler's pure core: decides which node each pending task runs on. No I/O, no clock."""

from controller.scheduler.accounting import holds_resources
from controller.scheduler.binpack import BINPACK_SCORERS, LeastFreeCpu, LeastFreeMemory, MostReserved
from controller.scheduler.decision import Decision
from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter, Rejection
from controller.scheduler.filters import DEFAULT_FILTERS, HostPortsFree, NodeAvailable, ResourcesFit
from controller.scheduler.node_state import NodeState
from controller.scheduler.placement import schedule
from controller.scheduler.ranking import Scorer
from controller.scheduler.rule_filters import ConstraintsMatch, MaxReplicasPerNode
from controller.scheduler.scorers import SPREAD_SCORERS, FewestTasks, LeastLoaded, ServiceSpread

__all__ = [
    "BINPACK_SCORERS",
    "DEFAULT_FILTERS",
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
    "holds_resources",
    "schedule",
]
