"""Placement constraints: parsing "node.labels.zone == a" and matching it against a node."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

_SYNTAX = re.compile(r"^\s*node\.(?P<field>labels\.(?P<key>[^\s=!]+)|hostname|id)\s*(?P<op>==|!=)\s*(?P<value>\S+)\s*$")
# Near misses worth a specific hint: a lone "=" as in label selectors, and a value with whitespace.
_SINGLE_EQUALS = re.compile(r"^[^=!]*[^=!\s]\s*=\s*[^=\s]")
_SPACED_VALUE = re.compile(r"^\s*node\.(?:labels\.[^\s=!]+|hostname|id)\s*(?:==|!=)\s*\S+\s+\S")

EXAMPLES = "node.labels.KEY == VALUE, node.hostname == NAME or node.id == ID (or != instead of ==)"
# Long constraints are cut in messages so that one bad value cannot drown a whole report.
_MAX_SHOWN = 60


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
        raise ConstraintError(f"must have the form {EXAMPLES}, got {_shown(text)}{_hint(text)}")
    field = "labels" if match["key"] else match["field"]
    return Constraint(field=field, key=match["key"] or "", equal=match["op"] == "==", value=match["value"])


def _hint(text: str) -> str:
    if _SINGLE_EQUALS.match(text):
        return "; compare with == or !="
    if _SPACED_VALUE.match(text):
        return "; the value cannot contain whitespace"
    return ""


def _shown(text: str) -> str:
    """Double-quotes `text` with non-printable characters escaped, so a message stays on one line."""
    short = text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
    encoded = json.dumps(short, ensure_ascii=False)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in encoded)
