"""SqliteStore's keyset pages: the same order as the full lists, and a page costs what it returns.

A page deep into a long table must cost about what the first page costs: the queries seek on the indexes
(`(cols) > (?, ...) ORDER BY cols LIMIT ?`) instead of reading and skipping what comes before.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.store.base import NodeKey, Put, TaskKey
from controller.store.sqlite import _SCHEMA, SqliteStore, _task_query
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


def schema() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(_SCHEMA)
    return conn


def plan(conn: sqlite3.Connection, sql: str, params: list[str | int]) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize("service_id", [None, "s1"])
@pytest.mark.parametrize("node_id", [None, "n1"])
@pytest.mark.parametrize("after", [None, ("s1", 3, 7, "t9"), ("s0", 0, 0, "")])
def test_every_task_page_query_seeks_an_index_without_sorting(
    service_id: str | None, node_id: str | None, after: TaskKey | None
) -> None:
    sql, params = _task_query(service_id, node_id, after, 100)
    found = plan(schema(), sql, params)
    assert "TEMP B-TREE" not in found, found
    assert "USING INDEX tasks_by_" in found, found
    if after is not None and after[0] == (service_id or after[0]):
        assert ">" in found, f"the key bounds the index range: {found}"


def test_node_and_service_page_queries_seek_their_indexes() -> None:
    conn = schema()
    nodes = plan(
        conn, "SELECT data FROM nodes WHERE (hostname, id) > (?, ?) ORDER BY hostname, id LIMIT ?", ["a", "b", 5]
    )
    assert "nodes_by_hostname ((hostname,id)>(?,?))" in nodes
    services = plan(
        conn,
        "SELECT s.data, s.spec_digest, b.data FROM services s LEFT JOIN specs b ON b.digest = s.spec_digest"
        " WHERE s.name > ? ORDER BY s.name LIMIT ?",
        ["a", 5],
    )
    assert "(name>?)" in services and "TEMP B-TREE" not in services


async def steps(store: SqliteStore, read: Awaitable[list[T]]) -> tuple[int, list[T]]:
    """Returns how many SQLite VM steps (in hundreds) a read costs, and what it returned."""
    count = 0

    def tick() -> int:
        nonlocal count
        count += 1
        return 0

    db = store._connection()
    await db.set_progress_handler(tick, 100)
    try:
        result = await read
        return count, result
    finally:
        await db.set_progress_handler(None, 100)  # type: ignore[arg-type]


async def test_a_deep_page_costs_what_the_first_costs(tmp_path: Path) -> None:
    """20,000 tasks and nodes: a page near the end costs about what the first costs, with any filter."""
    async with SqliteStore(tmp_path / "store.db") as store:
        for start in range(0, 20_000, 2000):
            await store.commit(
                [Put(task(f"t{i:05}", f"s{i % 2}", f"n{i % 7}", i, 1_000 + i)) for i in range(start, start + 2000)]
            )
            hosts = [
                pb.Node(id=f"n{start + i:05}", description=pb.NodeDescription(hostname=f"h{i}")) for i in range(2000)
            ]
            await store.commit([Put(n) for n in hosts])
        every = await store.list_tasks()
        for service_id, node_id in ((None, None), ("s1", None), (None, "n3"), ("s1", "n3")):
            first_cost, first = await steps(store, store.list_tasks_page(service_id, node_id, None, 100))
            sample = [t for t in every if (service_id in (None, t.service_id)) and (node_id in (None, t.node_id))]
            key = task_key(sample[len(sample) - 150])
            deep_cost, deep = await steps(store, store.list_tasks_page(service_id, node_id, key, 100))
            full_cost, _ = await steps(store, store.list_tasks(service_id, node_id))
            assert len(first) == len(deep) == 100
            # A constant factor at most (the row-value test per row), never the rows before the key.
            assert deep_cost <= 3 * first_cost + 10, (service_id, node_id, first_cost, deep_cost)
            assert deep_cost * 5 < full_cost, (service_id, node_id, deep_cost, full_cost)
        nodes = await store.list_nodes()
        first_cost, _ = await steps(store, store.list_nodes_page(None, 100))
        deep_cost, deep_nodes = await steps(store, store.list_nodes_page(node_key(nodes[-150]), 100))
        assert len(deep_nodes) == 100
        assert deep_cost <= 3 * first_cost + 10
