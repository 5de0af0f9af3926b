"""The depends_on graph: cycles named as paths, start order, and both agreeing with the standard library."""

from __future__ import annotations

import graphlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.spec.dependencies import find_cycle, start_order


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({}, None),
        ({"web": []}, None),
        ({"web": ["api"], "api": ["db"], "db": []}, None),
        ({"web": ["api"], "api": ["web"]}, ["web", "api", "web"]),
        # The cycle reads from its member that comes first in the graph.
        ({"api": ["web"], "web": ["api"]}, ["api", "web", "api"]),
        ({"db": [], "web": ["api"], "api": ["cache"], "cache": ["web"]}, ["web", "api", "cache", "web"]),
        ({"web": ["web"]}, ["web", "web"]),
        # Reached from outside the cycle: the path into it is not part of it.
        ({"front": ["web"], "web": ["api"], "api": ["web"]}, ["web", "api", "web"]),
        # Names outside the graph are someone else's problem.
        ({"web": ["elsewhere"], "api": ["elsewhere", "web"]}, None),
        # A diamond is no cycle.
        ({"web": ["a", "b"], "a": ["db"], "b": ["db"], "db": []}, None),
    ],
)
def test_find_cycle(graph: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_find_cycle_takes_any_iterable_and_is_deterministic() -> None:
    graph = {"web": {"db", "api"}, "api": {"db", "web"}, "db": set[str]()}
    assert find_cycle(graph) == ["web", "api", "web"]
    assert find_cycle({name: iter(sorted(deps, reverse=True)) for name, deps in graph.items()}) == [
        "web",
        "api",
        "web",
    ]


def test_a_long_chain_needs_no_recursion() -> None:
    graph = {f"s{i}": [f"s{i + 1}"] for i in range(20_000)}
    assert find_cycle(graph) is None
    assert start_order(graph)["s0"] == 19_999
    graph["s19999"] = ["s0"]
    cycle = find_cycle(graph)
    assert cycle is not None and len(cycle) == 20_001 and cycle[0] == cycle[-1] == "s0"


def test_start_order() -> None:
    graph = {"web": ["api", "cache"], "api": ["db", "migrate"], "migrate": ["db"], "db": [], "cache": ["nowhere"]}
    assert start_order(graph) == {"web": 3, "api": 2, "migrate": 1, "db": 0, "cache": 0}
    assert list(start_order(graph)) == list(graph)


def test_start_order_of_a_cycle_is_still_whole() -> None:
    order = start_order({"web": ["api"], "api": ["web"], "db": []})
    assert order == {"web": 1, "api": 0, "db": 0}


graphs = st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefghxy"), max_size=4), max_size=8)


@settings(max_examples=200, deadline=None)
@given(graphs)
def test_the_answers_agree_with_graphlib(graph: dict[str, list[str]]) -> None:
    inside = {name: [dep for dep in deps if dep in graph] for name, deps in graph.items()}
    cycle = find_cycle(graph)
    try:
        graphlib.TopologicalSorter(inside).prepare()
    except graphlib.CycleError:
        assert cycle is not None
        assert cycle[0] == cycle[-1]
        assert len(set(cycle)) == len(cycle) - 1
        assert all(after in inside[before] for before, after in itertools.pairwise(cycle))
        return
    assert cycle is None
    order = start_order(graph)
    assert set(order) == set(graph)
    for name, deps in inside.items():
        assert order[name] == max((order[dep] + 1 for dep in deps), default=0)
