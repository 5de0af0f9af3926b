"""Placement constraints: parsing "node.labels.zone == a" and matching it against a node."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_SYNTAX = re.compile(r"^\s*node\.(?P<field>labels\.(?P<key>[^\s=!]+)|hostname|id)\s*(?P<op>==|!=)\s*(?P<value>\S+)\s*$")

EXAMPLES = "node.labels.KEY == VALUE, node.hostname != NAME or node.id == ID"


class ConstraintError(ValueError):
    """A constraint that does not parse; the message says what the accepted forms are."""


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: field is "labels", "hostname" or "id"; key only for labels."""

    field: str
    key: str
    equal: bool
    value: str

    def matches(self, node_id: str, hostname: str, labels: Mapping[str, str]) -> bool:
        """Tells whether a node satisfies the constraint (a missing label never equals a value)."""
        if self.field == "labels":
            actual: str | None = labels.get(self.key)
        elif self.field == "hostname":
            actual = hostname
        else:
            actual = node_id
        return (actual == self.value) == self.equal

    def __str__(self) -> str:
        subject = f"node.labels.{self.key}" if self.field == "labels" else f"node.{self.field}"
        return f"{subject} {'==' if self.equal else '!='} {self.value}"


def parse_constraint(text: str) -> Constraint:
    """Parses one constraint; raises ConstraintError naming the accepted forms."""
    match = _SYNTAX.match(text)
    if match is None:
        raise ConstraintError(f"cannot read {text!r}; write {EXAMPLES}")
    field = "labels" if match["key"] else match["field"]
    return Constraint(field=field, key=match["key"] or "", equal=match["op"] == "==", value=match["value"])
