"""Placement constraints: parsing "node.labels.zone == a", and node_satisfies(), the one test of a node.

node_satisfies is what every role asks ("may this service's tasks run on that node?"), so that the scheduler
and the orchestrator (global services) can never disagree about a node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dockyard.v1 import types_pb2 as pb

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


def node_satisfies(node: pb.Node, constraints: Iterable[str]) -> bool:
    """Tells whether every constraint text holds for the node; one that does not parse matches no node.

    The node's labels are its agent-reported ones (node.description.labels) overlaid with its operator's
    (node.labels): an operator label wins over an agent label of the same key. A missing label never equals
    a value, so "node.labels.k != v" holds for a node without k.
    """
    for text in constraints:
        constraint = _parsed(text)
        if constraint is None or not _holds(constraint, node):
            return False
    return True


@lru_cache(maxsize=4096)
def _parsed(text: str) -> Constraint | None:
    # Every node of a call is judged against the same few texts, so each is parsed once, not once per node.
    try:
        return parse_constraint(text)
    except ConstraintError:
        # The API refuses these; one that is stored anyway (older or buggy writer) must place nothing.
        return None


def _holds(constraint: Constraint, node: pb.Node) -> bool:
    if constraint.field == "labels":
        # Two map look-ups instead of merging the maps: this runs once per node and constraint.
        actual = node.labels.get(constraint.key)
        if actual is None:
            actual = node.description.labels.get(constraint.key)
    elif constraint.field == "hostname":
        actual = node.description.hostname
    else:
        actual = node.id
    return (actual == constraint.value) == constraint.equal


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
