"""The SQLite Store: protobuf blobs plus indexed lookup columns, a revisioned event log, and watches.

Semantics this backend pins down where the Store protocol leaves room:

- Revisions. Every commit that changes something takes the next store revision; each object it writes gets
  that revision as its version. A batch that changes nothing (empty, or only deletes of missing objects
  without expect_version) takes no revision and returns the current one. So every revision has at least one
  event, which lets the trimmed horizon be derived from the oldest kept event.
- Batches. Ops apply in order, and each expect_version is checked against the state left by the earlier ops
  of the same batch. Two services may not share a name; a clash is reported as ConflictError.
- Copies. commit() snapshots every Put's object as soon as it starts running, so later changes by the
  caller reach neither the table nor the events. After a successful commit the caller's object gets the new
  version too, so it can be written again with expect_version=obj.version; on failure it is untouched.
  Reads and events always hand out freshly decoded messages that the caller may mutate.
- Cancellation. A commit that has started runs to completion even if its caller is cancelled (the caller
  then does not learn the outcome); otherwise the database and the in-memory revision could disagree.
- History. A service's spec is kept per (service id, service.revision), first write wins. Deleting the
  service deletes its history too: nothing can roll back a service that no longer exists.
- Tasks list ordered by service id, slot, creation time, then id.
- Trimming keeps whole revisions: a revision's events go only once the newer ones alone number keep_events.
- Watching. Each watcher has a bounded in-memory queue that commits fill synchronously, in the same step in
  which they advance the revision. A watcher registers its queue and notes the revision in one step, reads
  everything up to that revision from the events table, then drains the queue: no commit can fall between
  the two sources. A watcher that falls behind by more than its queue holds is not buffered further; it
  re-reads the missed revisions from the table (WatchExpired if they were trimmed meanwhile). So a slow
  watcher never blocks or slows a commit, and costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import sqlite3
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import aiosqlite

from controller.store.base import (
    Action,
    Check,
    ConflictError,
    Delete,
    Event,
    Kind,
    Op,
    Put,
    StoredObject,
    WatchExpired,
)
from dockyard.v1 import types_pb2 as pb

_SCHEMA_VERSION: Final = 1

# The script runs in autocommit mode, so it brackets itself in one transaction to create all or nothing.
_SCHEMA: Final = """
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

_TABLES: Final = {Kind.SERVICE: "services", Kind.NODE: "nodes", Kind.TASK: "tasks"}
_MESSAGES: Final[dict[Kind, type[pb.Service] | type[pb.Node] | type[pb.Task]]] = {
    Kind.SERVICE: pb.Service,
    Kind.NODE: pb.Node,
    Kind.TASK: pb.Task,
}

# ON CONFLICT (id), not INSERT OR REPLACE: REPLACE would silently delete another service holding the name.
_UPSERTS: Final = {
    Kind.SERVICE: "INSERT INTO services (id, name, version, data) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version, data = excluded.data",
    Kind.NODE: "INSERT INTO nodes (id, hostname, version, data) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version,"
    " data = excluded.data",
    Kind.TASK: "INSERT INTO tasks (id, service_id, node_id, slot, created_ns, version, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id,"
    " node_id = excluded.node_id, slot = excluded.slot, created_ns = excluded.created_ns,"
    " version = excluded.version, data = excluded.data",
}

# Bounded by SQLite's host-parameter limit.
_ID_CHUNK: Final = 500
# A replaying watcher reads this many revisions per query, so it never holds the lock for long.
_REPLAY_PAGE: Final = 256

_Row = tuple[str | int | bytes, ...]


def _kind_of(obj: StoredObject) -> Kind:
    """Returns the kind of a stored message; TypeError for anything else."""
    if isinstance(obj, pb.Service):
        return Kind.SERVICE
    if isinstance(obj, pb.Node):
        return Kind.NODE
    if isinstance(obj, pb.Task):
        return Kind.TASK
    raise TypeError(f"not a storable object: {type(obj).__name__}")


def _decode(kind: Kind, data: bytes) -> StoredObject:
    """Returns a fresh message of the kind parsed from data."""
    return _MESSAGES[kind].FromString(data)


def _columns(obj: StoredObject, data: bytes) -> _Row:
    """Returns the row for the kind's upsert statement."""
    if isinstance(obj, pb.Service):
        return (obj.id, obj.name, obj.version, data)
    if isinstance(obj, pb.Node):
        return (obj.id, obj.description.hostname, obj.version, data)
    created_ns = obj.created_at.seconds * 1_000_000_000 + obj.created_at.nanos
    return (obj.id, obj.service_id, obj.node_id, obj.slot, created_ns, obj.version, data)


@dataclass(frozen=True, slots=True)
class _Record:
    """One event as stored: the watcher decodes it itself, so every watcher gets its own message."""

    revision: int
    kind: Kind
    action: Action
    id: str
    data: bytes

    def to_event(self) -> Event:
        """Returns the event with a freshly decoded object."""
        return Event(self.revision, self.kind, self.action, self.id, _decode(self.kind, self.data))


# eq=False keeps identity hashing: subscribers live in a set.
@dataclass(slots=True, eq=False)
class _Subscriber:
    """A watcher's live feed: whole commits in order, until one would overflow the bound."""

    limit: int
    buffer: deque[_Record] = field(default_factory=deque)
    # Once set, nothing more is buffered; the watcher drains, then re-reads the rest from the table.
    overflowed: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, records: Sequence[_Record]) -> None:
        """Buffers one commit's records entirely, or marks the feed as overflowed."""
        if not self.overflowed:
            if len(self.buffer) + len(records) > self.limit:
                self.overflowed = True
            else:
                self.buffer.extend(records)
        self.wake.set()

    def close(self) -> None:
        """Tells the watcher to finish once its buffer is drained."""
        self.closed = True
        self.wake.set()


@dataclass(frozen=True, slots=True)
class _Step:
    """One op of a commit, with a private copy of a Put's object taken when commit() was called."""

    kind: Kind
    id: str
    op: Op
    snapshot: StoredObject | None


@dataclass(slots=True)
class _Batch:
    """What a commit will write, worked out against the rows it read inside its transaction."""

    revision: int
    upserts: dict[Kind, dict[str, _Row]] = field(default_factory=dict)
    deletes: dict[Kind, set[str]] = field(default_factory=dict)
    records: list[_Record] = field(default_factory=list)
    history_cleared: set[str] = field(default_factory=set)
    history: dict[str, dict[int, bytes]] = field(default_factory=dict)


def _check(kind: Kind, oid: str, expected: int | None, found: tuple[int, bytes] | None) -> None:
    """Raises ConflictError unless expected is None or equals the found version (0: absent)."""
    actual = found[0] if found is not None else 0
    if expected is not None and expected != actual:
        raise ConflictError(f"{kind} {oid}: expected version {expected}, found {actual}")


def _plan_put(
    batch: _Batch,
    current: dict[tuple[Kind, str], tuple[int, bytes] | None],
    kind: Kind,
    obj: StoredObject,
    expected: int | None,
) -> None:
    """Adds one put to the batch after checking it."""
    _check(kind, obj.id, expected, current[(kind, obj.id)])
    obj.version = batch.revision
    data = obj.SerializeToString()
    current[(kind, obj.id)] = (batch.revision, data)
    batch.deletes.get(kind, set()).discard(obj.id)
    batch.upserts.setdefault(kind, {})[obj.id] = _columns(obj, data)
    batch.records.append(_Record(batch.revision, kind, Action.PUT, obj.id, data))
    if isinstance(obj, pb.Service):
        batch.history.setdefault(obj.id, {}).setdefault(obj.revision, obj.spec.SerializeToString())


def _plan_delete(batch: _Batch, current: dict[tuple[Kind, str], tuple[int, bytes] | None], op: Delete) -> None:
    """Adds one delete to the batch after checking it; a blind delete of nothing is dropped.

    A checked delete of a missing object conflicts even with expect_version 0: the caller believed it
    existed, or asked to delete something it requires to be absent.
    """
    found = current[(op.kind, op.id)]
    if found is None:
        if op.expect_version is None:
            return
        raise ConflictError(f"{op.kind} {op.id}: expected version {op.expect_version}, found none to delete")
    _check(op.kind, op.id, op.expect_version, found)
    current[(op.kind, op.id)] = None
    batch.upserts.get(op.kind, {}).pop(op.id, None)
    batch.deletes.setdefault(op.kind, set()).add(op.id)
    batch.records.append(_Record(batch.revision, op.kind, Action.DELETE, op.id, found[1]))
    if op.kind is Kind.SERVICE:
        batch.history.pop(op.id, None)
        batch.history_cleared.add(op.id)


class SqliteStore:
    """A Store on one SQLite file (or ":memory:"), in WAL mode, with an in-process change feed."""

    def __init__(self, path: str | os.PathLike[str], *, keep_events: int = 10000, watch_buffer: int = 4096) -> None:
        """Prepares a store without touching the disk; watch_buffer bounds each watcher's queue (events)."""
        if keep_events < 1 or watch_buffer < 1:
            raise ValueError("keep_events and watch_buffer must be at least 1")
        self._path = os.fspath(path)
        self._keep = keep_events
        self._watch_buffer = watch_buffer
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        # Besides ordering commits, the lock keeps reads out of a commit's open transaction: they share the
        # connection and would otherwise see its uncommitted rows.
        self._lock = asyncio.Lock()
        self._revision = 0
        self._trimmed_through = 0
        self._event_count = 0
        self._revision_sizes: deque[tuple[int, int]] = deque()
        self._subscribers: set[_Subscriber] = set()

    async def __aenter__(self) -> Self:
        """Opens the store."""
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Closes the store."""
        await self.close()

    async def open(self) -> None:
        """Opens (creating if needed) and loads the revision and event horizon; RuntimeError if open."""
        if self._db is not None:
            raise RuntimeError("store is already open")
        db = await aiosqlite.connect(self._path, isolation_level=None)
        try:
            await db.execute_fetchall("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            (version,) = next(iter(await db.execute_fetchall("PRAGMA user_version")))
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"store schema {version} is newer than this controller's {_SCHEMA_VERSION}")
            await db.executescript(_SCHEMA)
            rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'revision'")
            (self._revision,) = next(iter(rows))
            sizes = await db.execute_fetchall(
                "SELECT revision, COUNT(*) FROM events GROUP BY revision ORDER BY revision"
            )
        except BaseException:
            await db.close()
            raise
        self._revision_sizes = deque((rev, count) for rev, count in sizes)
        self._event_count = sum(count for _, count in self._revision_sizes)
        self._trimmed_through = self._revision_sizes[0][0] - 1 if self._revision_sizes else self._revision
        self._db = db
        self._closed = False
        self._subscribers = set()

    async def close(self) -> None:
        """Ends every watcher, waits for a running commit, and closes; closing twice is harmless."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.close()
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    @property
    def revision(self) -> int:
        """The revision of the last committed batch (0 for an empty store)."""
        return self._revision

    def _connection(self) -> aiosqlite.Connection:
        """Returns the open connection; RuntimeError when the store is not open."""
        if self._db is None:
            raise RuntimeError("store is closed" if self._closed else "store is not open")
        return self._db

    async def _fetch(self, sql: str, params: Sequence[str | int] = ()) -> list[sqlite3.Row]:
        """Runs one query outside any commit's transaction and returns all rows."""
        async with self._lock:
            return list(await self._connection().execute_fetchall(sql, params))

    async def commit(self, ops: Sequence[Op]) -> int:
        """Applies every op in one transaction, or none (ConflictError); returns the new revision."""
        self._connection()
        steps: list[_Step] = []
        for op in ops:
            if isinstance(op, Put):
                if not op.obj.id:
                    raise ValueError("a stored object needs an id")
                steps.append(_Step(_kind_of(op.obj), op.obj.id, op, copy.deepcopy(op.obj)))
            else:
                steps.append(_Step(op.kind, op.id, op, None))
        if not steps:
            return self._revision
        return await asyncio.shield(self._commit(steps))

    async def _commit(self, steps: list[_Step]) -> int:
        """Runs the transaction under the lock, then publishes; see commit()."""
        async with self._lock:
            db = self._connection()
            await db.execute("BEGIN IMMEDIATE")
            try:
                batch = await self._plan(db, steps)
                if not batch.records:
                    await db.execute("ROLLBACK")
                    return self._revision
                cutoff, remaining = self._trim_point(len(batch.records))
                await self._write(db, batch, cutoff)
                await db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may have rolled back already; the original error is the one to report.
                with contextlib.suppress(sqlite3.Error):
                    await db.execute("ROLLBACK")
                raise
            self._committed(batch, cutoff, remaining, steps)
            return batch.revision

    async def _plan(self, db: aiosqlite.Connection, steps: list[_Step]) -> _Batch:
        """Checks each expect_version against stored rows and earlier ops; ConflictError on a mismatch."""
        wanted: dict[Kind, set[str]] = {}
        for step in steps:
            wanted.setdefault(step.kind, set()).add(step.id)
        current: dict[tuple[Kind, str], tuple[int, bytes] | None] = {}
        for kind, ids in wanted.items():
            for oid in ids:
                current[(kind, oid)] = None
            ordered = sorted(ids)
            for start in range(0, len(ordered), _ID_CHUNK):
                chunk = ordered[start : start + _ID_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT id, version, data FROM {_TABLES[kind]} WHERE id IN ({marks})"
                for oid, version, data in await db.execute_fetchall(sql, chunk):
                    current[(kind, oid)] = (version, data)

        batch = _Batch(revision=self._revision + 1)
        for step in steps:
            if isinstance(step.op, Put):
                assert step.snapshot is not None
                _plan_put(batch, current, step.kind, step.snapshot, step.op.expect_version)
            elif isinstance(step.op, Check):
                _check(step.kind, step.id, step.op.version, current[(step.kind, step.id)])
            else:
                _plan_delete(batch, current, step.op)
        return batch

    def _trim_point(self, new_events: int) -> tuple[int | None, int]:
        """Returns the newest revision whose events may go (None: none) and the event count left after."""
        count = self._event_count + new_events
        cutoff = None
        for revision, size in self._revision_sizes:
            if count - size < self._keep:
                break
            count -= size
            cutoff = revision
        return cutoff, count

    async def _write(self, db: aiosqlite.Connection, batch: _Batch, cutoff: int | None) -> None:
        """Writes the planned batch inside the open transaction; a service-name clash is a ConflictError."""
        # Deletes first, so a batch may free a service name and reuse it.
        for kind, ids in batch.deletes.items():
            if ids:
                await db.executemany(f"DELETE FROM {_TABLES[kind]} WHERE id = ?", [(i,) for i in ids])
        for kind, rows in batch.upserts.items():
            try:
                await db.executemany(_UPSERTS[kind], rows.values())
            except sqlite3.IntegrityError as exc:
                names = sorted(str(row[1]) for row in rows.values())
                raise ConflictError(f"service name already taken by another service (one of {names})") from exc
        if batch.history_cleared:
            await db.executemany(
                "DELETE FROM service_history WHERE service_id = ?", [(i,) for i in batch.history_cleared]
            )
        history = [(sid, rev, spec) for sid, specs in batch.history.items() for rev, spec in specs.items()]
        if history:
            await db.executemany(
                "INSERT OR IGNORE INTO service_history (service_id, revision, spec) VALUES (?, ?, ?)", history
            )
        await db.executemany(
            "INSERT INTO events (revision, kind, action, id, data) VALUES (?, ?, ?, ?, ?)",
            [(r.revision, r.kind.value, r.action.value, r.id, r.data) for r in batch.records],
        )
        await db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (batch.revision,))
        if cutoff is not None:
            await db.execute("DELETE FROM events WHERE revision <= ?", (cutoff,))

    def _committed(
        self,
        batch: _Batch,
        cutoff: int | None,
        remaining: int,
        steps: list[_Step],
    ) -> None:
        """Moves the in-memory state to the committed revision and feeds the watchers, without awaiting."""
        self._revision = batch.revision
        self._revision_sizes.append((batch.revision, len(batch.records)))
        if cutoff is not None:
            while self._revision_sizes[0][0] <= cutoff:
                self._revision_sizes.popleft()
            self._trimmed_through = cutoff
        self._event_count = remaining
        for step in steps:
            if isinstance(step.op, Put):
                step.op.obj.version = batch.revision
        for subscriber in self._subscribers:
            subscriber.offer(batch.records)

    async def get_service(self, name_or_id: str) -> pb.Service | None:
        """Returns the service with that id or, failing that, that name."""
        rows = await self._fetch(
            "SELECT data FROM services WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1",
            (name_or_id,),
        )
        return pb.Service.FromString(rows[0][0]) if rows else None

    async def list_services(self) -> list[pb.Service]:
        """Returns every service, ordered by name."""
        rows = await self._fetch("SELECT data FROM services ORDER BY name")
        return [pb.Service.FromString(row[0]) for row in rows]

    async def get_service_spec(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Returns the spec a service had at one of its revisions, None once the service is deleted."""
        rows = await self._fetch(
            "SELECT spec FROM service_history WHERE service_id = ? AND revision = ?", (service_id, revision)
        )
        return pb.ServiceSpec.FromString(rows[0][0]) if rows else None

    async def get_node(self, node_id: str) -> pb.Node | None:
        """Returns the node with that id."""
        rows = await self._fetch("SELECT data FROM nodes WHERE id = ?", (node_id,))
        return pb.Node.FromString(rows[0][0]) if rows else None

    async def list_nodes(self) -> list[pb.Node]:
        """Returns every node, ordered by hostname then id."""
        rows = await self._fetch("SELECT data FROM nodes ORDER BY hostname, id")
        return [pb.Node.FromString(row[0]) for row in rows]

    async def get_task(self, task_id: str) -> pb.Task | None:
        """Returns the task with that id."""
        rows = await self._fetch("SELECT data FROM tasks WHERE id = ?", (task_id,))
        return pb.Task.FromString(rows[0][0]) if rows else None

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Returns the tasks, filtered by service id and/or node id, ordered by service, slot, creation."""
        clauses: list[str] = []
        params: list[str] = []
        if service_id is not None:
            clauses.append("service_id = ?")
            params.append(service_id)
        if node_id is not None:
            clauses.append("node_id = ?")
            params.append(node_id)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._fetch(f"SELECT data FROM tasks{where} ORDER BY service_id, slot, created_ns, id", params)
        return [pb.Task.FromString(row[0]) for row in rows]

    async def watch(self, since: int) -> AsyncGenerator[Event, None]:
        """Yields every event with a revision above since, then live ones, until the store closes.

        Raises WatchExpired when events after since were already trimmed (also later, if the watcher falls
        so far behind that its backlog is trimmed before it re-reads it).
        """
        if self._closed:
            return
        self._connection()
        subscriber = _Subscriber(self._watch_buffer)
        self._subscribers.add(subscriber)
        try:
            cursor = max(since, 0)
            while True:
                # No await between here and reading self._revision: commits publish in the same step that
                # advances the revision, so events up to target are in the table and all later ones will
                # reach the buffer. Replay (cursor, target] from the table, then drain the buffer.
                subscriber.buffer.clear()
                subscriber.overflowed = False
                target = self._revision
                while cursor < target:
                    upto = min(target, cursor + _REPLAY_PAGE)
                    records = await self._read_events(cursor, upto)
                    if records is None:
                        return
                    for record in records:
                        yield record.to_event()
                    cursor = upto
                while True:
                    if subscriber.buffer:
                        record = subscriber.buffer.popleft()
                        # Only a watcher asking from beyond the current revision can see older events here.
                        if record.revision > since:
                            cursor = record.revision
                            yield record.to_event()
                    elif subscriber.overflowed:
                        break
                    elif subscriber.closed:
                        return
                    else:
                        subscriber.wake.clear()
                        await subscriber.wake.wait()
        finally:
            self._subscribers.discard(subscriber)

    async def _read_events(self, after: int, upto: int) -> list[_Record] | None:
        """Returns stored events with after < revision <= upto (None once closed); WatchExpired if trimmed."""
        async with self._lock:
            if self._db is None:
                return None
            if after < self._trimmed_through:
                kept = self._trimmed_through + 1
                raise WatchExpired(f"events after revision {after} were trimmed; the oldest kept is {kept}")
            rows = await self._db.execute_fetchall(
                "SELECT revision, kind, action, id, data FROM events WHERE revision > ? AND revision <= ? ORDER BY seq",
                (after, upto),
            )
        return [_Record(rev, Kind(kind), Action(action), oid, data) for rev, kind, action, oid, data in rows]
