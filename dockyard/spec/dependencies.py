"""The graph of `depends_on`: cycles and start order, as pure functions of a name -> dependencies mapping.

Spec validation refuses a cycle among the services of one file, the API one across the cluster, and
the plan orders services by start_order. A graph maps each service name to the names it depends on;
a name it depends on that is not a key of the graph is not part of it (a service outside the request,
or a name another check reports), so both functions skip it.

Both walk the graph without recursion, since a request may hold thousands of services in a chain,
and give the same answer for the same mapping: keys are visited in the mapping's order, the
dependencies of one key in sorted order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["find_cycle", "start_order"]


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Returns a cycle as a path whose first and last names are the same ("web", "api", "web"), or None.

    The cycle starts at its member that comes first in the graph's order, so a file's cycle reads
    from the first service involved; a service depending on itself is the cycle [name, name].
    """
    edges = _edges(graph)
    order = {name: i for i, name in enumerate(edges)}
    state: dict[str, int] = {}  # absent: unvisited; _ON_PATH: on the current path; _DONE: no cycle through it
    for root in edges:
        if root in state:
            continue
        path = [root]
        pending = [iter(edges[root])]
        state[root] = _ON_PATH
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                state[path.pop()] = _DONE
                pending.pop()
            elif state.get(nxt) == _ON_PATH:
                cycle = path[path.index(nxt) :]
                first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[first:] + cycle[:first]
                return [*cycle, cycle[0]]
            elif nxt not in state:
                state[nxt] = _ON_PATH
                path.append(nxt)
                pending.append(iter(edges[nxt]))
    return None


def start_order(graph: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """Returns each name's start order: 0 without dependencies in the graph, else 1 + the largest of theirs.

    Services with a smaller number start first. The graph should have no cycle (find_cycle); an edge
    that would close one is ignored, so the answer is still whole and the same for the same graph.
    """
    edges = _edges(graph)
    level: dict[str, int] = {}
    on_path: set[str] = set()
    for root in edges:
        if root in level:
            continue
        path = [root]
        pending = [iter(edges[root])]
        on_path.add(root)
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                name = path.pop()
                pending.pop()
                on_path.discard(name)
                level[name] = max((level[dep] + 1 for dep in edges[name] if dep in level), default=0)
            elif nxt not in level and nxt not in on_path:
                on_path.add(nxt)
                path.append(nxt)
                pending.append(iter(edges[nxt]))
    return {name: level[name] for name in edges}


_ON_PATH = 1
_DONE = 2


def _edges(graph: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """The graph's edges between its own keys, each key's in sorted order, keys in the mapping's order."""
    return {name: sorted({dep for dep in deps if dep in graph}) for name, deps in graph.items()}
