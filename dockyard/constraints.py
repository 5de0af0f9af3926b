"""Placement constraints: parsing "node.labels.zone == a", and node_satisfies(), the one test of a node.

node_satisfies is what every role asks ("may this service's tasks run on that node?"), so that the scheduler
and the orchestrator (global services) can never disagree about a node.

Who set a fact decides its name, as in Swarm: `node.labels.KEY` are the operator's labels (Node.labels, set
through the API) and nothing else, so a constraint on them means what the operator set; `engine.labels.KEY`
are the labels the agent reports for its host (node.description.labels, its --label), which anyone holding
an agent's credentials can claim. `node.hostname` is the host name the controller recorded for the node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dockyard.v1 import types_pb2 as pb

# The fields a constraint can name, as Constraint.field says them.
LABELS = "labels"  # node.labels.KEY: the operator's
ENGINE_LABELS = "engine.labels"  # engine.labels.KEY: the agent's
HOSTNAME = "hostname"
ID = "id"

_SUBJECT = r"(?:node\.(?:labels\.[^\s=!]+|hostname|id)|engine\.labels\.[^\s=!]+)"
_SYNTAX = re.compile(
    r"^\s*(?:node\.(?:labels\.(?P<key>[^\s=!]+)|(?P<fact>hostname|id))|engine\.labels\.(?P<engine_key>[^\s=!]+))"
    r"\s*(?P<op>==|!=)\s*(?P<value>\S+)\s*$"
)
# Near misses worth a specific hint: a lone "=" as in label selectors, and a value with whitespace.
_SINGLE_EQUALS = re.compile(r"^[^=!]*[^=!\s]\s*=\s*[^=\s]")
_SPACED_VALUE = re.compile(rf"^\s*{_SUBJECT}\s*(?:==|!=)\s*\S+\s+\S")

EXAMPLES = (
    "node.labels.KEY == VALUE (operator labels), engine.labels.KEY == VALUE (agent labels), "
    "node.hostname == NAME or node.id == ID (or != instead of ==)"
)
# Long constraints are cut in messages so that one bad value cannot drown a whole report.
_MAX_SHOWN = 60


class ConstraintError(ValueError):
    """A constraint that does not parse; the message says what the accepted forms are."""


@dataclass(frozen=True)
class Constraint:
    """One parsed constraint: field is LABELS, ENGINE_LABELS, HOSTNAME or ID; key only for the two label kinds."""

    field: str
    key: str
    equal: bool
    value: str

    def __str__(self) -> str:
        if self.field == LABELS:
            subject = f"node.labels.{self.key}"
        elif self.field == ENGINE_LABELS:
            subject = f"engine.labels.{self.key}"
        else:
            subject = f"node.{self.field}"
        return f"{subject} {'==' if self.equal else '!='} {self.value}"


def parse_constraint(text: str) -> Constraint:
    """Parses one constraint; raises ConstraintError naming the accepted forms."""
    match = _SYNTAX.match(text)
    if match is None:
        raise ConstraintError(f"must have the form {EXAMPLES}, got {_shown(text)}{_hint(text)}")
    if match["key"] is not None:
        field, key = LABELS, match["key"]
    elif match["engine_key"] is not None:
        field, key = ENGINE_LABELS, match["engine_key"]
    else:
        field, key = match["fact"], ""
    return Constraint(field=field, key=key, equal=match["op"] == "==", value=match["value"])


def node_satisfies(node: pb.Node, constraints: Iterable[str]) -> bool:
    """Tells whether every constraint text holds for the node; one that does not parse matches no node.

    node.labels.KEY reads only the operator's labels (node.labels), engine.labels.KEY only the agent's
    (node.description.labels): an agent can never satisfy, or escape, a constraint on an operator label. A
    missing label never equals a value, so "node.labels.k != v" holds for a node without k.
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
    actual: str | None
    if constraint.field == LABELS:
        actual = node.labels.get(constraint.key)
    elif constraint.field == ENGINE_LABELS:
        actual = node.description.labels.get(constraint.key)
    elif constraint.field == HOSTNAME:
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
