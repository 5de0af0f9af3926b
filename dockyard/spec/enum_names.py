"""The names a spec file uses for the proto's enum values, shared by the reader and the writer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from dockyard.v1 import types_pb2 as pb

# The generated enum types are distinct int subtypes; functions keep track of which one they got.
Number = TypeVar("Number", bound=int)

CONDITIONS: Mapping[str, pb.RestartPolicy.Condition.ValueType] = {
    "none": pb.RestartPolicy.CONDITION_NONE,
    "on-failure": pb.RestartPolicy.CONDITION_ON_FAILURE,
    "any": pb.RestartPolicy.CONDITION_ANY,
}
MODES: Mapping[str, pb.ServiceMode.ValueType] = {
    "replicated": pb.SERVICE_MODE_REPLICATED,
    "global": pb.SERVICE_MODE_GLOBAL,
}
STRATEGIES: Mapping[str, pb.Placement.Strategy.ValueType] = {
    "spread": pb.Placement.STRATEGY_SPREAD,
    "binpack": pb.Placement.STRATEGY_BINPACK,
}


def name_of(names: Mapping[str, Number], number: int) -> str | int:
    """Returns the name of an enum number; an unnamed number comes back as is, for load_spec to report."""
    return next((name for name, value in names.items() if value == number), number)
