"""Checks of a service's placement constraints as a list: each must parse, and all must hold together."""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.constraints import Constraint, ConstraintError, parse_constraint
from dockyard.spec.display import describe
from dockyard.spec.errors import Issue
from dockyard.spec.paths import index_path


def constraint_issues(constraints: Sequence[str], path: str) -> list[Issue]:
    """Returns the constraints that do not parse, repeat an earlier one, or contradict one."""
    issues = []
    accepted: list[tuple[int, Constraint]] = []
    for i, text in enumerate(constraints):
        where = index_path(path, i)
        try:
            constraint = parse_constraint(text)
        except ConstraintError as exc:
            issues.append(Issue(where, str(exc)))
            continue
        problem = _conflict(constraint, accepted)
        if problem is None:
            accepted.append((i, constraint))
        else:
            issues.append(Issue(where, problem))
    return issues


def _conflict(constraint: Constraint, earlier: Sequence[tuple[int, Constraint]]) -> str | None:
    """Says how `constraint` clashes with an earlier accepted one, or None when it does not."""
    for i, other in earlier:
        if other == constraint:
            return f"is the same as constraints[{i}]; remove one of them"
    for i, other in earlier:
        if (other.field, other.key) != (constraint.field, constraint.key):
            continue
        # Constraints are combined with "and", so these pairs leave no eligible node at all.
        if other.equal and constraint.equal:
            return (
                f"contradicts constraints[{i}]: all constraints must hold, but a node's {_subject(constraint)} "
                f"cannot be both {describe(other.value)} and {describe(constraint.value)}; keep one of them"
            )
        if other.value == constraint.value:
            return (
                f"contradicts constraints[{i}]: all constraints must hold, but a node's {_subject(constraint)} "
                f"cannot both be and not be {describe(constraint.value)}; remove one of them"
            )
    return None


def _subject(constraint: Constraint) -> str:
    return f"label {describe(constraint.key)}" if constraint.field == "labels" else constraint.field
