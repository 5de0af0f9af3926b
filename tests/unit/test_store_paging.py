"""SqliteStore's keyset pages: the same order as the full lists, and a page costs what it returns.

A page deep into a long table must cost about what the first page costs: it bisects the sorted keys the
store holds in memory instead of reading and skipping what comes before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.store import sqlite as sqlite_store
from controller.store.base import Delete, Kind, NodeKey, Put, TaskKey
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb

T = TypeVar("T")


def task(tid: str, service_id: str, node_id: str, slot: int, created_ns: int) -> pb.Task:
    t = pb.Task(id=tid, service_id=service_id, node_id=node_id, slot=slot)
    t.created_at.seconds, t.created_at.nanos = divmod(created_ns, 1_000_000_000)
    return t


def task_key(t: pb.Task) -> TaskKey:
    return (t.service_id, t.slot, t.created_at.seconds * 1_000_000_000 + t.created_at.nanos, t.id)


def node_key(n: pb.Node) -> NodeKey:
    return (n.description.hostname, n.id)


async def every_page(
    fetch: Callable[[Any, int], Awaitable[Sequence[Any]]], key: Callable[[Any], object], size: int
) -> list[list[str]]:
    """Follows pages of `size` from the start, each after the last one's key; returns each page's ids."""
    pages: list[list[str]] = []
    after: object = None
    while True:
        page = await fetch(after, size)
        pages.append([o.id for o in page])
        if len(page) < size:
            return pages
        after = key(page[-1])


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "store.db"
    async with SqliteStore(path) as s:
        yield s


async def test_service_pages_follow_names(store: SqliteStore) -> None:
    names = ["delta", "alpha", "echo", "bravo", "charlie", "Zulu", "älpha"]
    await store.commit([Put(pb.Service(id=f"id-{n}", name=n, spec=pb.ServiceSpec(name=n, image="i"))) for n in names])
    pages = await every_page(store.list_services_page, lambda s: s.name, 2)
    assert [i for p in pages for i in p] == [s.id for s in await store.list_services()]
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert [s.name for s in await store.list_services_page("charlie", 2)] == ["delta", "echo"]
    assert await store.list_services_page(max(names), 5) == []
    # SQLite's byte order of UTF-8 is Python's code-point order: keys the API builds compare the same.
    assert [s.name for s in await store.list_services()] == sorted(names)
    (first,) = await store.list_services_page(None, 1)
    assert first.spec.image == "i", "a page holds whole services, spec and all"


async def test_node_pages_follow_hostname_then_id(store: SqliteStore) -> None:
    nodes = [pb.Node(id=f"n{i}", description=pb.NodeDescription(hostname=f"h{i % 3}")) for i in range(10)]
    await store.commit([Put(n) for n in nodes])
    for size in (1, 3, 10, 11):
        pages = await every_page(store.list_nodes_page, node_key, size)
        assert [i for p in pages for i in p] == [n.id for n in await store.list_nodes()]
    assert [n.id for n in await store.list_nodes_page(("h1", "n4"), 2)] == ["n7", "n2"]


async def test_a_negative_limit_is_refused(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="negative"):
        await store.list_nodes_page(None, -1)


tasks_strategy = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.sampled_from(["", "n1", "n2"]),
        st.integers(0, 4),
        st.integers(0, 3),
    ),
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=tasks_strategy, size=st.integers(1, 7))
def test_task_pages_equal_the_full_list_for_every_filter(rows: list[tuple[str, str, int, int]], size: int) -> None:
    """Whatever the tasks, filters and page size: pages concatenate to list_tasks, in its order."""

    async def check() -> None:
        async with SqliteStore(":memory:") as store:
            tasks = [task(f"t{i:02}", sid, nid, slot, created) for i, (sid, nid, slot, created) in enumerate(rows)]
            await store.commit([Put(t) for t in tasks])
            for service_id in (None, "s1", "s2", "s9"):
                for node_id in (None, "", "n1"):
                    want = [t.id for t in await store.list_tasks(service_id, node_id)]

                    pages = await every_page(
                        lambda after, limit, s=service_id, n=node_id: store.list_tasks_page(s, n, after, limit),
                        task_key,
                        size,
                    )
                    assert [i for p in pages for i in p] == want
                    # A key from another service (as a stale token might carry) bounds the range consistently.
                    if service_id is not None:
                        for other in ("s0", "s5"):
                            rest = await store.list_tasks_page(service_id, node_id, (other, 0, 0, ""), 100)
                            assert [t.id for t in rest] == (want if other < service_id else [])

    asyncio.run(check())


async def test_a_deep_page_parses_only_what_it_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 tasks and nodes: any page, however deep, parses the objects it returns and no others.

    Pages bisect a sorted key list held in memory; a commit that changes a few keys moves them in that list,
    so the page after it sorts nothing.
    """
    copies = 0
    sorts = 0
    parsed, sort = SqliteStore._parsed, sorted

    def counting_parsed(self: SqliteStore, kind: Any, message: Any, keys: Sequence[Any]) -> list[Any]:
        nonlocal copies
        copies += len(keys)
        return parsed(self, kind, message, keys)

    def counting_sort(*args: Any, **kwargs: Any) -> list[Any]:
        nonlocal sorts
        sorts += 1
        return sort(*args, **kwargs)

    async with SqliteStore(":memory:") as store:
        for start in range(0, 20_000, 2000):
            await store.commit(
                [Put(task(f"t{i:05}", f"s{i % 2}", f"n{i % 7}", i, 1_000 + i)) for i in range(start, start + 2000)]
            )
            hosts = [
                pb.Node(id=f"n{start + i:05}", description=pb.NodeDescription(hostname=f"h{i}")) for i in range(2000)
            ]
            await store.commit([Put(n) for n in hosts])
        every = await store.list_tasks()
        await store.list_nodes()
        monkeypatch.setattr(SqliteStore, "_parsed", counting_parsed)
        for service_id, node_id in ((None, None), ("s1", None), (None, "n3"), ("s1", "n3")):
            sample = [t for t in every if (service_id in (None, t.service_id)) and (node_id in (None, t.node_id))]
            await store.list_tasks_page(service_id, node_id, None, 1)  # sorts this filter's index once
            await store.commit([Put(task("t-new", "s1", "n3", 5, 7))])
            monkeypatch.setattr(sqlite_store, "sorted", counting_sort, raising=False)
            copies = sorts = 0
            deep = await store.list_tasks_page(service_id, node_id, task_key(sample[len(sample) - 150]), 100)
            assert len(deep) == copies == 100
            assert sorts == 0, (service_id, node_id)
            monkeypatch.delattr(sqlite_store, "sorted")
            await store.commit([Delete(Kind.TASK, "t-new")])
        nodes = await store.list_nodes()
        copies = 0
        assert len(await store.list_nodes_page(node_key(nodes[-150]), 100)) == copies == 100
