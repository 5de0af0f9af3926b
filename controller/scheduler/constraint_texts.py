"""A spec's placement constraints, parsed once per distinct list rather than once per task."""

from __future__ import annotations

from functools import lru_cache

from dockyard.constraints import Constraint, ConstraintError, parse_constraint

ParsedConstraints = tuple[tuple[Constraint, ...], str]
"""The parsed constraints, and why the list is invalid ("" when every one parsed)."""

NO_CONSTRAINTS: ParsedConstraints = ((), "")


@lru_cache(maxsize=1024)
def parse_constraints(texts: tuple[str, ...]) -> ParsedConstraints:
    """Parses every constraint; a bad one yields no constraints and a reason instead of raising."""
    # The API refuses bad constraints, so one here is stored data from an older or buggy writer: the task
    # must stay unplaced and say why, and the scheduler must keep placing everything else.
    parsed = []
    for text in texts:
        try:
            parsed.append(parse_constraint(text))
        except ConstraintError as exc:
            return (), f"invalid placement constraint: {exc}"
    return tuple(parsed), ""
