"""Candidate pools shared by every service whose tasks have the same footprint.

Filters and scorers may depend on the service only through node.services[demand.service_id]. So a node that
holds no task of a service judges the same for it as for a made-up service held nowhere, and one pool
judged for that made-up service serves all services of one shape. Only nodes already holding the service
need judging per service (see ServiceRun); that keeps a run of a small service from costing O(nodes).

The shape keeps what a node is judged on for any service: reservations, ports, constraints and strategy. It
drops max_per_node, which cannot reject a node holding none of the service (a limit is at least one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from controller.scheduler.accounting import Accounting
from controller.scheduler.demand import Demand
from controller.scheduler.feasibility import Filter
from controller.scheduler.pool import CandidatePool
from controller.scheduler.strategies import Strategies

NO_SERVICE = "\x00no-service"
"""The made-up service id shape pools are judged for; the NUL keeps it apart from real ids."""

_KEPT_SHAPES = 8  # each pool is O(nodes) memory; distinct shapes beyond this are rebuilt when they return


class ShapePools:
    """Builds, caches and brings up to date the pool of each demand shape during one call."""

    __slots__ = ("_accounting", "_filters", "_pools", "_strategies", "_synced")

    def __init__(self, accounting: Accounting, filters: Sequence[Filter], strategies: Strategies) -> None:
        """Starts with no pools; they are built on first use."""
        self._accounting = accounting
        self._filters = filters
        self._strategies = strategies
        self._pools: OrderedDict[Demand, CandidatePool] = OrderedDict()
        self._synced: dict[Demand, int] = {}  # shape -> length of the change log the pool reflects

    def checkout(self, demand: Demand) -> CandidatePool:
        """Returns the pool of the demand's shape, holding every node judged on its current state."""
        shape = demand._replace(service_id=NO_SERVICE, max_per_node=0)
        nodes = self._accounting.nodes
        changes = self._accounting.changes
        pool = self._pools.get(shape)
        if pool is None:
            pool = CandidatePool(shape, self._filters, self._strategies.scorers(shape))
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
        self._synced[pool.demand] = len(self._accounting.changes)
