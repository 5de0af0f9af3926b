"""node_satisfies(), the one test of a node against placement constraints: table tests and a property."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.constraints import node_satisfies
from dockyard.v1 import types_pb2 as pb


def node(
    agent: Mapping[str, str] | None = None, operator: Mapping[str, str] | None = None, hostname: str = "h1"
) -> pb.Node:
    """Returns node n1 with the agent's labels, the operator's labels and a host name."""
    result = pb.Node(id="n1", labels=operator)
    result.description.hostname = hostname
    result.description.labels.update(agent or {})
    return result


@pytest.mark.parametrize(
    ("constraints", "agent", "operator", "holds"),
    [
        ((), {}, {}, True),
        (("node.labels.zone == a",), {}, {"zone": "a"}, True),
        (("node.labels.zone == a",), {"zone": "a"}, {}, False),  # an agent cannot claim an operator label
        (("node.labels.zone == a",), {"zone": "a"}, {"zone": "b"}, False),
        (("node.labels.zone != a",), {"zone": "b"}, {"zone": "a"}, False),  # nor shed one
        (("engine.labels.zone == a",), {"zone": "a"}, {}, True),
        (("engine.labels.zone == a",), {}, {"zone": "a"}, False),
        (("engine.labels.zone == a",), {"zone": "a"}, {"zone": "b"}, True),
        (("node.labels.zone == b", "engine.labels.zone == a"), {"zone": "a"}, {"zone": "b"}, True),
        (("node.labels.zone == a",), {}, {}, False),  # a missing label never equals
        (("node.labels.zone != a",), {}, {}, True),
        (("engine.labels.zone != a",), {}, {}, True),
        (("node.labels.zone != a",), {}, {"zone": "a"}, False),
        (("node.labels.zone == ",), {}, {"zone": ""}, False),  # does not parse: matches nothing
        (("node.labels.zone = a",), {}, {"zone": "a"}, False),  # does not parse: matches nothing
        (("engine.hostname == h1",), {}, {}, False),  # does not parse: matches nothing
        (("node.hostname == h1", "node.id == n1"), {}, {}, True),
        (("node.hostname == h1", "node.id != n1"), {}, {}, False),
        (("node.labels.zone == a", "bad"), {}, {"zone": "a"}, False),
        (("  node.labels.zone==a  ",), {}, {"zone": "a"}, True),
        (("  engine.labels.zone==a  ",), {"zone": "a"}, {}, True),
    ],
)
def test_node_satisfies(
    constraints: tuple[str, ...], agent: dict[str, str], operator: dict[str, str], holds: bool
) -> None:
    """Every constraint must hold; each label kind reads only its own map; an unparseable one matches nothing."""
    assert node_satisfies(node(agent, operator), constraints) is holds


def test_looking_at_labels_changes_nothing() -> None:
    """Asking about a label the node lacks does not add it (protobuf maps insert on a plain read)."""
    subject = node({"zone": "a"}, {"rack": "1"})
    assert node_satisfies(subject, ["node.labels.disk != ssd", "engine.labels.disk != ssd"])
    assert dict(subject.labels) == {"rack": "1"}
    assert dict(subject.description.labels) == {"zone": "a"}


KEYS = ["zone", "rack"]
VALUES = ["a", "b"]


@st.composite
def constraint_texts(draw: st.DrawFn) -> tuple[str, str, str, bool]:
    """A constraint on an operator or agent label, the host name or the id, as (text, field, key, equal)."""
    field = draw(st.sampled_from(["labels", "engine.labels", "hostname", "id"]))
    key = draw(st.sampled_from(KEYS)) if field.endswith("labels") else ""
    value = draw(st.sampled_from([*VALUES, "h1", "n1"]))
    equal = draw(st.booleans())
    subject = f"{'engine' if field == 'engine.labels' else 'node'}.labels.{key}" if key else f"node.{field}"
    return f"{subject} {'==' if equal else '!='} {value}", field, key, equal


@given(
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.lists(constraint_texts(), max_size=3),
)
def test_node_satisfies_is_the_conjunction_over_each_label_kind(
    agent: dict[str, str], operator: dict[str, str], constraints: list[tuple[str, str, str, bool]]
) -> None:
    """Restated independently: node.labels read the operator's map only, engine.labels the agent's only."""
    maps = {"labels": operator, "engine.labels": agent}
    facts = {"hostname": "h1", "id": "n1"}
    expected = all(
        ((maps[field].get(key) if field in maps else facts[field]) == text.split()[-1]) == equal
        for text, field, key, equal in constraints
    )
    assert node_satisfies(node(agent, operator), [text for text, *_ in constraints]) is expected
