"""Which scorers rank the nodes for a demand, by the placement strategy its service chose."""

from __future__ import annotations

from dataclasses import dataclass

from controller.scheduler.demand import Demand
from controller.scheduler.ranking import Scorer


@dataclass(frozen=True, slots=True)
class Strategies:
    """The scorer tuple of each strategy for one call; services in one call may use different ones."""

    spread: tuple[Scorer, ...]
    binpack: tuple[Scorer, ...]

    def scorers(self, demand: Demand) -> tuple[Scorer, ...]:
        """Returns the scorers of the demand's strategy."""
        return self.binpack if demand.binpack else self.spread
