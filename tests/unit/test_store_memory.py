"""SqliteStore serves reads from memory: memory and file agree, a failed write leaves memory as it was,
reads never wait for a commit, and one large commit reaches a live watcher through its queue."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.store.base import Check, ConflictError, Delete, Event, Kind, Op, Put, StoredObject
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb

SERVICE_IDS = ["s1", "s2", "s3"]
NODE_IDS = ["n1", "n2", "n3"]
TASK_IDS = [f"t{i}" for i in range(6)]
VOLUME_IDS = ["v1", "v2", "v3"]
IDS = {Kind.SERVICE: SERVICE_IDS, Kind.NODE: NODE_IDS, Kind.TASK: TASK_IDS, Kind.VOLUME: VOLUME_IDS}

# Expect-version choices: none, whatever the object is at now (resolved when the batch is built), absent,
# or a revision that is probably wrong.
expect = st.sampled_from([None, None, None, None, "now", "now", "now", 0, 3, 7])

service_put = st.tuples(
    st.just("service"), st.sampled_from(SERVICE_IDS), st.sampled_from("abc"), st.integers(1, 4), st.booleans(), expect
)
node_put = st.tuples(st.just("node"), st.sampled_from(NODE_IDS), st.sampled_from(["h1", "h2"]), expect)
task_put = st.tuples(
    st.just("task"),
    st.sampled_from(TASK_IDS),
    st.sampled_from(SERVICE_IDS),
    st.sampled_from(["", *NODE_IDS]),
    st.integers(0, 3),
    st.integers(0, 2),
    expect,
)
# Volumes stand for every named kind (one table, one code path); names clash as services' do.
volume_put = st.tuples(
    st.just("volume"), st.sampled_from(VOLUME_IDS), st.sampled_from("ab"), st.sampled_from(["", *NODE_IDS]), expect
)
delete = st.tuples(st.just("delete"), st.sampled_from(list(IDS)), st.integers(0, 5), expect)
check = st.tuples(st.just("check"), st.sampled_from(list(IDS)), st.integers(0, 5), expect)
op_strategy = st.one_of(service_put, node_put, task_put, volume_put, delete, check)
# A batch of ops, or "reopen": close the store and open it again on the same file.
step_strategy = st.one_of(st.lists(op_strategy, min_size=1, max_size=5), st.just("reopen"))


async def version_of(store: SqliteStore, kind: Kind, oid: str) -> int:
    """Returns an object's stored version, 0 when absent."""
    found: StoredObject | None
    if kind is Kind.SERVICE:
        found = await store.get_service(oid)
        found = found if found is not None and found.id == oid else None
    elif kind is Kind.NODE:
        found = await store.get_node(oid)
    elif kind is Kind.VOLUME:
        found = await store.get_object(kind, oid)
        found = found if isinstance(found, pb.Volume) and found.id == oid else None
    else:
        found = await store.get_task(oid)
    return found.version if found is not None else 0


async def build(store: SqliteStore, drawn: Sequence[tuple[Any, ...]]) -> list[Op]:
    """Turns drawn tuples into ops, resolving "now" to the stored version."""
    ops: list[Op] = []
    for item in drawn:
        what, rest = item[0], item[1:]
        kind = {"service": Kind.SERVICE, "node": Kind.NODE, "task": Kind.TASK, "volume": Kind.VOLUME}.get(what)
        if kind is None:
            kind, index, want = rest
            oid = IDS[kind][index % len(IDS[kind])]
        else:
            oid, want = rest[0], rest[-1]
        version = await version_of(store, kind, oid) if want == "now" else want
        if what == "service":
            _, name, revision, image, _ = rest
            spec = pb.ServiceSpec(name=name, image="x" if image else "y", replicas=revision % 3)
            ops.append(Put(pb.Service(id=oid, name=name, revision=revision, spec=spec), version))
        elif what == "node":
            ops.append(Put(pb.Node(id=oid, description=pb.NodeDescription(hostname=rest[1])), version))
        elif what == "task":
            _, service_id, node_id, slot, created, _ = rest
            task = pb.Task(id=oid, service_id=service_id, node_id=node_id, slot=slot)
            task.created_at.seconds = created
            ops.append(Put(task, version))
        elif what == "volume":
            _, name, node_id, _ = rest
            ops.append(Put(pb.Volume(id=oid, name=name, node_id=node_id), version))
        elif what == "delete":
            ops.append(Delete(kind, oid, version))
        else:
            ops.append(Check(kind, oid, version if version is not None else 0))
    return ops


async def everything(store: SqliteStore) -> dict[str, object]:
    """Returns every answer the store's reads give, for comparing two stores."""
    out: dict[str, object] = {
        "revision": store.revision,
        "services": await store.list_services(),
        "nodes": await store.list_nodes(),
        "service pages": [await store.list_services_page(after, 2) for after in (None, "a", "b", "c")],
        "node pages": [await store.list_nodes_page(after, 2) for after in (None, ("h1", "n1"), ("h2", ""))],
    }
    for name in [*SERVICE_IDS, "a", "b", "c"]:
        out[f"service {name}"] = await store.get_service(name)
    for sid in SERVICE_IDS:
        out[f"specs {sid}"] = [await store.get_service_spec(sid, revision) for revision in range(6)]
    for nid in NODE_IDS:
        out[f"node {nid}"] = await store.get_node(nid)
    for tid in TASK_IDS:
        out[f"task {tid}"] = await store.get_task(tid)
    out["volumes"] = await store.list_objects(Kind.VOLUME)
    for name in [*VOLUME_IDS, "a", "b"]:
        out[f"volume {name}"] = await store.get_object(Kind.VOLUME, name)
    for service_id in (None, *SERVICE_IDS):
        for node_id in (None, "", *NODE_IDS):
            out[f"tasks {service_id} {node_id}"] = await store.list_tasks(service_id, node_id)
            for after in (None, ("s1", 1, 1_000_000_000, "t3"), ("s2", 0, 0, "")):
                out[f"page {service_id} {node_id} {after}"] = await store.list_tasks_page(service_id, node_id, after, 2)
    return out


async def run_model(steps: list[list[tuple[Any, ...]] | str], path: Path) -> None:
    """Commits each batch (conflicts allowed), reopening when asked; memory always equals a fresh load."""
    store = SqliteStore(path, keep_events=5, history_limit=2)
    await store.open()
    try:
        for step in steps:
            if step == "reopen":
                before = await everything(store)
                await store.close()
                store = SqliteStore(path, keep_events=5, history_limit=2)
                await store.open()
                assert await everything(store) == before
                continue
            assert not isinstance(step, str)
            with contextlib.suppress(ConflictError):
                await store.commit(await build(store, step))
        final = await everything(store)
    finally:
        await store.close()
    async with SqliteStore(path, keep_events=5, history_limit=2) as fresh:
        assert await everything(fresh) == final


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step_strategy, min_size=1, max_size=10))
def test_memory_equals_a_fresh_load_after_random_batches(steps: list[list[tuple[Any, ...]] | str]) -> None:
    """Puts, renames, name clashes, conflicts, deletes, checks and reopens: a fresh store reads the same."""
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run_model(steps, Path(directory) / "store.db"))


def task(tid: str, service_id: str = "s1", node_id: str = "n1", slot: int = 1) -> pb.Task:
    return pb.Task(id=tid, service_id=service_id, node_id=node_id, slot=slot)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "store.db") as s:
        yield s


async def test_a_failed_write_leaves_memory_and_file_as_they_were(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.commit([Put(task("t1")), Put(pb.Service(id="s1", name="web", revision=1))])
    before = await everything(store)
    real_write = SqliteStore._write

    async def failing_write(self: SqliteStore, *args: Any) -> None:
        await real_write(self, *args)
        raise sqlite3.OperationalError("disk I/O error")  # after every row went in: the rollback undoes it

    monkeypatch.setattr(SqliteStore, "_write", failing_write)
    moved = task("t1", node_id="n2")
    with pytest.raises(sqlite3.OperationalError):
        await store.commit([Put(moved), Put(task("t2")), Delete(Kind.SERVICE, "s1")])
    assert moved.version == 0, "the caller's object is untouched too"
    assert await everything(store) == before
    assert store.damage is None, "an I/O error is not damage"
    monkeypatch.setattr(SqliteStore, "_write", real_write)
    assert await store.commit([Put(task("t3"))]) == 2


async def test_reads_answer_while_a_commit_is_being_written(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read during a commit's write sees the revision before it, whole; after it, the new one."""
    await store.commit([Put(task("t1"))])
    writing, release = asyncio.Event(), asyncio.Event()
    real_write = SqliteStore._write

    async def held_write(self: SqliteStore, *args: Any) -> None:
        writing.set()
        await release.wait()
        await real_write(self, *args)

    monkeypatch.setattr(SqliteStore, "_write", held_write)
    commit = asyncio.create_task(store.commit([Put(task("t1", node_id="n2")), Put(task("t2", node_id="n2"))]))
    await writing.wait()
    async with asyncio.timeout(5):
        assert [t.node_id for t in await store.list_tasks()] == ["n1"]
        assert await store.list_tasks(node_id="n2") == []
        assert store.revision == 1
    release.set()
    assert await commit == 2
    assert [t.id for t in await store.list_tasks(node_id="n2")] == ["t1", "t2"]
    assert await store.list_tasks(node_id="n1") == []


async def test_reads_hand_out_copies(store: SqliteStore) -> None:
    await store.commit([Put(task("t1")), Put(pb.Service(id="s1", name="web", spec=pb.ServiceSpec(image="a")))])
    got = await store.get_task("t1")
    assert got is not None
    got.node_id = "elsewhere"
    (listed,) = await store.list_tasks()
    listed.slot = 99
    service = await store.get_service("web")
    assert service is not None
    service.spec.image = "changed"
    again = await store.get_task("t1")
    assert again is not None and (again.node_id, again.slot) == ("n1", 1)
    web = await store.get_service("s1")
    assert web is not None and web.spec.image == "a"


async def test_one_large_commit_reaches_a_live_watcher_through_its_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 events in one commit, more than the queue's bound: still queued whole, not re-read from the table."""
    async with SqliteStore(":memory:", watch_buffer=100) as store:
        await store.commit([Put(task("t0"))])
        async with contextlib.aclosing(store.watch(0)) as events:
            assert [e.revision async for e in take(events, 1)] == [1]
            replays = 0
            real_read = SqliteStore._read_events

            async def counting_read(self: SqliteStore, after: int, upto: int) -> Any:
                nonlocal replays
                replays += 1
                return await real_read(self, after, upto)

            monkeypatch.setattr(SqliteStore, "_read_events", counting_read)
            await store.commit([Put(task(f"t{i}", slot=i)) for i in range(10_000)])
            got = [e async for e in take(events, 10_000)]
            assert [e.id for e in got] == [f"t{i}" for i in range(10_000)]
            assert replays == 0
            # Behind by a commit, the watcher's next one does not fit: it overflows and catches up from the table.
            await store.commit([Put(task("a"))])
            await store.commit([Put(task(f"t{i}", slot=i + 1)) for i in range(200)])
            got = [e async for e in take(events, 201)]
            assert [e.revision for e in got] == [3] + [4] * 200
            assert replays == 1


async def take(events: AsyncIterator[Event], n: int) -> AsyncIterator[Event]:
    """Yields the next n events."""
    for _ in range(n):
        yield await anext(events)


def test_reads_issue_no_query() -> None:
    """Reads come from memory: no list, page or get method sends SQLite a statement."""

    async def run() -> None:
        async with SqliteStore(":memory:") as store:
            await store.commit([Put(task("t1")), Put(pb.Node(id="n1")), Put(pb.Service(id="s1", name="web"))])
            queries: list[str] = []
            db = store._connection()
            await db.set_trace_callback(queries.append)
            await everything(store)
            await db.set_trace_callback(None)
            assert queries == []

    asyncio.run(run())
