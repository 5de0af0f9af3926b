"""Each distinct spec stored once: history rows, service rows and events refer to it by digest.

Also: bounded history, spec bodies deleted with their last reference, readers and watchers that still get
whole services, and the migration of a schema-1 file (built here with schema 1's own DDL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.errors import StoreDamaged
from controller.store.base import Action, Delete, Event, Kind, Put
from controller.store.sqlite import SqliteStore, restore_file
from dockyard.v1 import types_pb2 as pb
from tests.store_schema import assert_current_schema

DEADLINE = 5.0
BIG = 200 * 1024


def spec(image: str = "app:1", replicas: int = 1, env_bytes: int = 0) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name="web", image=image, replicas=replicas)
    for i in range(10):
        result.env[f"K{i}"] = str(i)  # a map: equal specs must serialize alike whatever the insertion order
    if env_bytes:
        result.env["BLOB"] = os.urandom(env_bytes // 2).hex()
    return result


def service(revision: int, s: pb.ServiceSpec, sid: str = "svc-web", spec_revision: int = 0) -> pb.Service:
    result = pb.Service(id=sid, name=s.name, revision=revision, spec_revision=spec_revision or revision)
    result.spec.CopyFrom(s)
    return result


def scaled(previous: pb.Service, replicas: int) -> pb.Service:
    """The next revision of a service with only replicas changed, as ScaleService writes it."""
    result = pb.Service()
    result.CopyFrom(previous)
    result.revision += 1
    result.spec.replicas = replicas
    return result


async def take(events: AsyncIterator[Event], count: int) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(DEADLINE):
        while len(out) < count:
            out.append(await anext(events))
    return out


async def raw(store: SqliteStore, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Runs a query on the store's own connection (white-box: what the tables hold)."""
    rows = await store._connection().execute_fetchall(sql, params)
    return [tuple(row) for row in rows]


async def count(store: SqliteStore, table: str) -> int:
    ((n,),) = await raw(store, f"SELECT COUNT(*) FROM {table}")
    assert isinstance(n, int)
    return n


def file_bytes(path: Path) -> int:
    """The database with its WAL (the lock file aside)."""
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name in (path.name, path.name + "-wal"))


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "store.db"
    async with SqliteStore(path) as s:
        yield s


async def test_scaling_stores_one_spec_body_and_every_revision_reads_back(store: SqliteStore) -> None:
    current = service(1, spec(env_bytes=4096))
    await store.commit([Put(current)])
    for replicas in range(2, 60):
        current = scaled(current, replicas)
        await store.commit([Put(current, expect_version=current.version)])
    assert await count(store, "specs") == 1
    assert await count(store, "service_history") == 59
    for revision in (1, 30, 59):
        past = await store.get_service_spec("svc-web", revision)
        want = spec(env_bytes=0)
        assert past is not None
        assert past.replicas == revision
        assert past.env["BLOB"] == current.spec.env["BLOB"]
        past.ClearField("replicas")
        past.env.pop("BLOB")
        want.ClearField("replicas")
        assert past == want
    got = await store.get_service("web")
    assert got == current


async def test_rows_and_events_hold_no_spec_copies(store: SqliteStore) -> None:
    current = service(1, spec(env_bytes=BIG))
    await store.commit([Put(current)])
    for replicas in range(2, 12):
        current = scaled(current, replicas)
        await store.commit([Put(current)])
    await store.commit([Delete(Kind.SERVICE, "svc-web")])
    largest_event = await raw(store, "SELECT MAX(length(data)) FROM events")
    assert largest_event[0][0] < 200  # type: ignore[operator]
    assert await raw(store, "SELECT COUNT(DISTINCT spec_digest) FROM events") == [(1,)]


async def test_readers_and_watchers_get_whole_services_as_written(store: SqliteStore) -> None:
    """With a spec, without one, with zero replicas, with maps: reads, replay and live events all equal what was put."""
    bare = pb.Service(id="bare", name="bare", revision=1)
    empty = pb.Service(id="empty", name="empty", revision=1, spec=pb.ServiceSpec())
    zero = service(1, spec(replicas=0), sid="zero")
    zero.name = "zero"
    full = service(3, spec(replicas=7, env_bytes=1000), sid="full", spec_revision=2)
    full.name = "full"
    full.created_at.seconds = 12
    written = [bare, empty, zero, full]
    async with contextlib.aclosing(store.watch(0)) as live:
        await store.commit([Put(s) for s in written])
        live_events = await take(live, 4)
    async with contextlib.aclosing(store.watch(0)) as replay:
        replayed = await take(replay, 4)
    by_id = {s.id: s for s in written}
    for event in [*live_events, *replayed]:
        assert event.obj == by_id[event.id]
    assert not (live_events[0].obj.HasField("spec") or replayed[0].obj.HasField("spec"))
    assert live_events[1].obj.HasField("spec")
    for s in written:
        assert await store.get_service(s.id) == s
    assert sorted(await store.list_services(), key=lambda s: s.id) == sorted(written, key=lambda s: s.id)
    empty_spec = await store.get_service_spec("bare", 1)
    assert empty_spec == pb.ServiceSpec()


async def test_a_delete_event_carries_the_whole_last_value(store: SqliteStore) -> None:
    first = service(1, spec(env_bytes=500))
    await store.commit([Put(first)])
    async with contextlib.aclosing(store.watch(1)) as live:
        await store.commit([Delete(Kind.SERVICE, "svc-web")])
        (gone,) = await take(live, 1)
    async with contextlib.aclosing(store.watch(1)) as replay:
        (replayed,) = await take(replay, 1)
    for event in (gone, replayed):
        assert event.action is Action.DELETE
        assert event.obj == first


async def test_watchers_share_one_body_per_commit_and_mutate_their_own_copies(store: SqliteStore) -> None:
    await store.commit([Put(pb.Node(id="n1"))])
    async with contextlib.aclosing(store.watch(0)) as one, contextlib.aclosing(store.watch(0)) as two:
        await take(one, 1)
        await take(two, 1)  # both are live now, waiting on their queues
        await store.commit([Put(service(1, spec(env_bytes=2000)))])
        queued = [sub.buffer[0] for sub in store._subscribers]
        assert len(queued) == 2
        assert queued[0].spec is queued[1].spec, "the commit's serialized body, not a copy per watcher"
        (a,) = await take(one, 1)
        assert isinstance(a.obj, pb.Service)
        a.obj.spec.image = "changed"
        (b,) = await take(two, 1)
        assert isinstance(b.obj, pb.Service)
        assert b.obj.spec.image == "app:1"


async def test_history_keeps_the_newest_revisions_and_always_the_current() -> None:
    async with SqliteStore(":memory:", history_limit=5) as store:
        current = service(1, spec(image="v1"))
        await store.commit([Put(current)])
        for revision in range(2, 13):
            current = service(revision, spec(image=f"v{revision}"))
            await store.commit([Put(current)])
        kept = [r for r in range(1, 13) if await store.get_service_spec("svc-web", r) is not None]
        assert kept == [8, 9, 10, 11, 12]
        # Their bodies went in the same commits: one per kept revision, nothing else.
        assert await count(store, "service_history") == 5
        assert await raw(
            store, "SELECT COUNT(*) FROM specs WHERE digest NOT IN (SELECT digest FROM service_history)"
        ) == [(await count(store, "specs") - 5,)]
        # A service put back to an old revision number keeps that one, and the newest others.
        await store.commit([Put(service(3, spec(image="back")))])
        kept = [r for r in range(1, 13) if await store.get_service_spec("svc-web", r) is not None]
        assert kept == [3, 9, 10, 11, 12]
        again = await store.get_service_spec("svc-web", 3)
        assert again is not None
        assert again.image == "back"


async def test_spec_bodies_go_with_their_last_reference() -> None:
    """History pruned, events trimmed, service deleted: each drops bodies nothing else refers to."""
    async with SqliteStore(":memory:", history_limit=2, keep_events=3) as store:
        for revision in range(1, 6):
            await store.commit([Put(service(revision, spec(image=f"v{revision}")))])
        # History holds v4, v5; kept events (revisions 3-5) refer to v3, v4, v5.
        assert await count(store, "specs") == 3
        await store.commit([Delete(Kind.SERVICE, "svc-web")])
        # The delete event (and revisions 4, 5) still refer to v4 and v5.
        assert await count(store, "specs") == 2
        assert await count(store, "service_history") == 0
        for i in range(3):
            await store.commit([Put(pb.Node(id=f"n{i}"))])
        assert await count(store, "specs") == 0


async def test_an_event_outliving_its_history_still_replays_whole() -> None:
    async with SqliteStore(":memory:", history_limit=1) as store:
        written = [service(r, spec(image=f"v{r}")) for r in range(1, 6)]
        for s in written:
            await store.commit([Put(s)])
        assert await store.get_service_spec("svc-web", 1) is None
        async with contextlib.aclosing(store.watch(0)) as events:
            assert [e.obj for e in await take(events, 5)] == written


@pytest.mark.parametrize("limit", [0, -3])
def test_history_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="history_limit"):
        SqliteStore(":memory:", history_limit=limit)


async def test_scaling_a_large_spec_barely_grows_the_file(tmp_path: Path) -> None:
    """300 scales of a 200 KiB spec: a few dozen bytes each, not a copy per revision and per event."""
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        current = service(1, spec(env_bytes=BIG))
        await store.commit([Put(current)])
    before = file_bytes(path)
    async with SqliteStore(path) as store:
        for replicas in range(2, 302):
            current = scaled(current, replicas)
            await store.commit([Put(current)])
    grown = file_bytes(path) - before
    assert grown < 300 * 1024, f"grew by {grown} bytes"


async def test_a_dangling_spec_reference_is_damage(tmp_path: Path) -> None:
    """Found when the store loads the file into memory: reads never go to the file once it is open."""
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        await store.commit([Put(service(1, spec()))])
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM specs")
    with pytest.raises(StoreDamaged, match="referred to but missing"):
        await SqliteStore(path).open()


# Schema 1, as the first version of the store created it: a full spec in every history row, every service
# row and every service event.
SCHEMA_V1 = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS services (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_by_hostname ON nodes (hostname, id);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, service_id TEXT NOT NULL, node_id TEXT NOT NULL, slot INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_by_service ON tasks (service_id, slot, created_ns, id);
CREATE INDEX IF NOT EXISTS tasks_by_node ON tasks (node_id, service_id, slot, created_ns, id);
CREATE TABLE IF NOT EXISTS service_history (
    service_id TEXT NOT NULL, revision INTEGER NOT NULL, spec BLOB NOT NULL,
    PRIMARY KEY (service_id, revision)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, revision INTEGER NOT NULL, kind TEXT NOT NULL, action TEXT NOT NULL,
    id TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_revision ON events (revision);
PRAGMA user_version = 1;
COMMIT;
"""


class V1Writer:
    """Writes a schema-1 file the way the first store did: one revision per call, full copies everywhere."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.executescript(SCHEMA_V1)
        self.revision = 0
        self.events: list[tuple[int, Action, str, pb.Service | pb.Task]] = []

    def put_service(self, s: pb.Service) -> None:
        self.revision += 1
        s.version = self.revision
        data = s.SerializeToString()
        self.conn.execute(
            "INSERT INTO services (id, name, version, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " name = excluded.name, version = excluded.version, data = excluded.data",
            (s.id, s.name, s.version, data),
        )
        self.conn.execute(
            "INSERT OR IGNORE INTO service_history (service_id, revision, spec) VALUES (?, ?, ?)",
            (s.id, s.revision, s.spec.SerializeToString()),
        )
        self.event(Action.PUT, s, data)

    def delete_service(self, s: pb.Service) -> None:
        self.revision += 1
        self.conn.execute("DELETE FROM services WHERE id = ?", (s.id,))
        self.conn.execute("DELETE FROM service_history WHERE service_id = ?", (s.id,))
        self.event(Action.DELETE, s, s.SerializeToString())

    def put_task(self, t: pb.Task) -> None:
        self.revision += 1
        t.version = self.revision
        data = t.SerializeToString()
        self.conn.execute(
            "INSERT INTO tasks (id, service_id, node_id, slot, created_ns, version, data) VALUES (?, ?, ?, ?, 0, ?, ?)",
            (t.id, t.service_id, t.node_id, t.slot, t.version, data),
        )
        self.event(Action.PUT, t, data)

    def event(self, action: Action, obj: pb.Service | pb.Task, data: bytes) -> None:
        kind = Kind.SERVICE if isinstance(obj, pb.Service) else Kind.TASK
        self.conn.execute(
            "INSERT INTO events (revision, kind, action, id, data) VALUES (?, ?, ?, ?, ?)",
            (self.revision, kind.value, action.value, obj.id, data),
        )
        self.conn.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (self.revision,))
        copy = type(obj)()
        copy.CopyFrom(obj)
        self.events.append((self.revision, action, obj.id, copy))

    def close(self) -> None:
        self.conn.close()


def write_v1(
    path: Path, scales: int = 40, env_bytes: int = 20_000
) -> tuple[V1Writer, dict[int, pb.ServiceSpec], pb.Service]:
    """A schema-1 file: a service applied twice then scaled, a task, and a deleted second service."""
    v1 = V1Writer(path)
    specs: dict[int, pb.ServiceSpec] = {}
    current = service(1, spec(image="app:1", env_bytes=env_bytes))
    v1.put_service(current)
    specs[1] = pb.ServiceSpec()
    specs[1].CopyFrom(current.spec)
    changed = spec(image="app:2", env_bytes=env_bytes)
    current = service(2, changed)
    v1.put_service(current)
    specs[2] = pb.ServiceSpec()
    specs[2].CopyFrom(current.spec)
    for replicas in range(2, 2 + scales):
        current = scaled(current, replicas)
        v1.put_service(current)
        specs[current.revision] = pb.ServiceSpec()
        specs[current.revision].CopyFrom(current.spec)
    v1.put_task(pb.Task(id="t1", service_id=current.id, slot=1, revision=current.revision))
    other = service(1, spec(image="other:1"), sid="svc-other")
    other.name = "other"
    v1.put_service(other)
    v1.delete_service(other)
    v1.close()
    return v1, specs, current


async def test_a_schema_1_file_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    v1, specs, current = write_v1(path)
    size_before = path.stat().st_size
    async with SqliteStore(path) as store:
        assert store.revision == v1.revision
        assert await store.get_service("web") == current
        assert [s.name for s in await store.list_services()] == ["web"]
        for revision, want in specs.items():
            assert await store.get_service_spec(current.id, revision) == want
        # Two distinct specs apart from replicas (app:1, app:2) and the deleted service's, kept by its events.
        assert await count(store, "specs") == 3
        ((spec_revisions,),) = await raw(
            store,
            "SELECT group_concat(spec_revision) FROM (SELECT spec_revision FROM service_history ORDER BY revision)",
        )
        assert spec_revisions == ",".join(["1"] + ["2"] * (len(specs) - 1))
        async with contextlib.aclosing(store.watch(0)) as events:
            replayed = await take(events, len(v1.events))
        assert [(e.revision, e.action, e.id, e.obj) for e in replayed] == v1.events
        # The migrated store works on: a scale adds a small row and no body.
        await store.commit([Put(scaled(current, 99))])
        assert await count(store, "specs") == 3
    assert_current_schema(path, indexes=True)
    assert path.stat().st_size < size_before / 4, "vacuumed: the copies' pages are given back"
    async with SqliteStore(path) as reopened:
        assert (await reopened.get_service("web")) is not None


async def test_migration_prunes_history_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    _, specs, current = write_v1(path, scales=30, env_bytes=100)
    async with SqliteStore(path, history_limit=4) as store:
        kept = [r for r in specs if await store.get_service_spec(current.id, r) is not None]
        assert kept == sorted(specs)[-4:]
        # app:2 (the kept history), and app:1 and other:1, which only kept events still refer to.
        assert await count(store, "specs") == 3
        assert await count(store, "service_history") == 4
        assert await store.get_service("web") == current


async def test_a_schema_1_file_that_does_not_decode_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    write_v1(path, scales=2, env_bytes=10)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE service_history SET spec = ? WHERE revision = 2", (b"\x0a\xff\xff\xff\xff",))
    store = SqliteStore(path)
    with pytest.raises(StoreDamaged) as caught:
        await store.open()
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert "does not decode" in message
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (1,), "the failed migration changed nothing"
        assert conn.execute("SELECT COUNT(*) FROM service_history").fetchone() == (4,)


async def test_a_foreign_file_claiming_schema_1_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE services (id TEXT)")
        conn.execute("PRAGMA user_version = 1")
    store = SqliteStore(path)
    with pytest.raises(StoreDamaged, match="not a Dockyard store"):
        await store.open()


async def test_a_schema_1_backup_restores_and_migrates(tmp_path: Path) -> None:
    backup = tmp_path / "old-backup.db"
    _, specs, current = write_v1(backup, scales=3, env_bytes=100)
    db = tmp_path / "state" / "controller.db"
    summary, _ = restore_file(backup, db)
    assert (summary.services, summary.tasks) == (1, 1)
    async with SqliteStore(db) as store:
        assert await store.get_service("web") == current
        assert await store.get_service_spec(current.id, 1) == specs[1]
