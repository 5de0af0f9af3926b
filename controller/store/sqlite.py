"""The SQLite Store: protobuf blobs plus indexed lookup columns, a revisioned event log, and watches.

Semantics this backend pins down where the Store protocol leaves room:

- Memory. Being the file's only writer (it holds the lock, see One owner), the store keeps every service,
  node and task in memory, loaded (and decoded once, to check it) at open: each as its row's serialized
  data, with the history rows and the spec bodies that services and history refer to (one body per digest,
  shared). Reads answer from memory alone: they never await, never touch SQLite, never queue behind a
  commit, and each sees exactly one committed revision. A commit checks its ops against memory (versions,
  Checks, service names), writes the file, and only once COMMIT has succeeded moves memory to the new
  revision, in the same synchronous step that advances `revision` and feeds the watchers: so no reader sees
  a revision's events without its objects or the other way round, and a failed write leaves memory as it
  was. Indexes: tasks by service id and by node id, services by name, and per list a sorted key list
  (bisected for pages) that a commit moving few keys keeps in step and one moving many (more than
  _INSORT_LIMIT) drops, to be sorted once by the next read that needs it; a put that keeps its key (a
  status update) touches no index. Cost: 10,000 tasks and 1,000 nodes take about 14 MB of resident memory.

- Revisions. Every commit that changes something takes the next store revision; each object it writes gets
  that revision as its version. A batch that changes nothing (empty, or only deletes of missing objects
  without expect_version) takes no revision and returns the current one. So every revision has at least one
  event, which lets the trimmed horizon be derived from the oldest kept event.
- Batches. Ops apply in order, and each expect_version is checked against the state left by the earlier ops
  of the same batch. Two services may not share a name; a clash is reported as ConflictError.
- Copies. commit() snapshots every Put's object as soon as it starts running, so later changes by the
  caller reach neither the table nor the events. After a successful commit the caller's object gets the new
  version too, so it can be written again with expect_version=obj.version; on failure it is untouched.
  Reads and events always hand out freshly decoded messages that the caller may mutate: reads parse the
  held bytes, which for 10,000 tasks measured faster than copying as many held messages (CopyFrom) and
  takes a fifth of the memory.
- Cancellation. A commit that has started runs to completion even if its caller is cancelled (the caller
  then does not learn the outcome); otherwise the database and the in-memory revision could disagree.
- Specs, stored once each. A service spec is content-addressed: its body with `replicas` cleared is kept
  once in the `specs` table under the sha256 of its deterministic serialization. The `services` row and
  every service event hold the service with its spec cut down to `replicas` alone, plus the digest; reads
  and watchers get the whole `pb.Service` back (the stored body merged into the stub), so nothing outside
  this module sees the split. Scaling a service therefore adds a few dozen bytes, not a copy of its spec.
  A spec body lives while a history row, a service row or a kept event refers to it; the commit that drops
  the last reference (a service delete, history pruning, event trimming) deletes it too.
- History. A service's spec is kept per (service id, service.revision), first write wins, as a small row
  (replicas, spec_revision, digest, and when, why and by which store revision it was made: the service's
  updated_at and change_cause, and the commit's revision). At most history_limit revisions per service are
  kept: each commit that writes a service drops its oldest beyond that, but never the revision the service is at now. So
  get_service_spec answers None for a pruned revision, as it does once the service is deleted: deleting
  the service deletes its history too, since nothing can roll back a service that no longer exists.
- Lists. Services list by name, nodes by hostname then id, tasks by service id, slot, creation time, then
  id; the `*_page` methods continue strictly after a key in that order (keyset paging: a bisection of the
  sorted keys in memory), so a page costs what it returns, however long the table.
- Writes. A batch is one transaction of few statements: a put that keeps a row's indexed columns (a task's
  service, slot, creation and node; a node's hostname) only UPDATEs its version and data, and rows go in
  multi-row statements (_GROUP_SIZES), so a group commit of 10,000 task puts is a few dozen statements.
- Trimming keeps whole revisions: a revision's events go only once the newer ones alone number keep_events.
- Watching. Each watcher has a bounded in-memory queue (watch_buffer events, or one commit when that is
  larger: a commit always fits an empty queue, so one large batch does not send every watcher back to the
  table) that commits fill synchronously, in the same step in which they advance the revision. A watcher
  registers its queue and notes the revision in one step, reads everything up to that revision from the
  events table, then drains the queue: no commit can fall between the two sources. A watcher that falls
  behind by more than its queue holds is not buffered further; it re-reads the missed revisions from the
  table (WatchExpired if they were trimmed meanwhile). So a slow watcher never blocks or slows a commit,
  and costs bounded memory: a queue holds references to its commits' records, shared by every queue (a
  service event's one serialized spec body too), never a copy per watcher.
- Damage. open() refuses, with StoreDamaged naming the file and the way to restore it, a file that is not a
  SQLite database, is shorter than its header says, fails `PRAGMA quick_check`, does not hold Dockyard's
  schema, holds a row that does not decode, or refers to a spec body that is missing (open reads it all).
  While open, reads do not touch the file, so damage done to it afterwards is found by what does: a commit
  or a watcher's replay that meets a damaged page (SQLite's CORRUPT or NOTADB) raises StoreDamaged, and so
  does a backup (it checks its copy). The first such error marks the store damaged for good (see `damage`
  and `on_damage`, by which the server turns NOT_SERVING), after which commits are refused without
  touching the file, since writing on top of damage can only spread it, while reads go on answering from
  memory: what they answer is the last committed state, which damage to the file cannot have changed.
- Named objects (networks, volumes, secrets, configs, registry credentials: Kind's NAMED_KINDS) live in one
  `objects` table keyed by (kind, id), a name unique per kind (UNIQUE (kind, name), checked from memory
  first as service names are); memory holds them as it holds nodes, listed by (name, id). A registry
  credential's id and name are its server.
- Schema versions. A file of schema 1 (a full spec per history row, service event and service row),
  schema 2 (history rows without when, why and by which store revision) or schema 3 (no objects table) is
  migrated in place when opened, in one transaction (all or nothing); from schema 1 it is then vacuumed so
  the file shrinks. Schema 2's history learns these only for each service's current revision (see
  _migrate_v2); schema 3 gains an empty objects table. A backup of any of them
  restores; the controller migrates it on open. A newer schema is refused.
- One owner. While open, the store holds an exclusive lock on `<file>.lock` (its pid inside); a second store
  on the same file, in this process or another, refuses to open, and `restore_file` takes the same lock.
- Backup and restore (`backup_file`, `restore_file`) go through SQLite's online backup API in one step, so a
  backup is one consistent revision even while a controller commits, and is a single self-contained file.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import functools
import hashlib
import os
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, NamedTuple, Self, TypeVar

import aiosqlite
import structlog
from google.protobuf.message import DecodeError, Message

from controller.errors import StartupError, StoreDamaged
from controller.store.base import (
    NAMED_KINDS,
    Action,
    Check,
    ConflictError,
    Delete,
    Event,
    Kind,
    NamedObject,
    NodeKey,
    Op,
    Put,
    ServiceRevision,
    StoredObject,
    TaskKey,
    WatchExpired,
    object_id,
)
from dockyard.spec.schema import SERVICE_HISTORY
from dockyard.v1 import types_pb2 as pb

__all__ = [
    "STORE_FILE",
    "BackupError",
    "SqliteStore",
    "StoreInUse",
    "StoreSummary",
    "backup_file",
    "restore_file",
]

log = structlog.get_logger()

# The store's file name inside the controller's state directory.
STORE_FILE: Final = "controller.db"

_SCHEMA_VERSION: Final = 4

# Spec bodies, content-addressed (see the module docstring). A rowid table, not WITHOUT ROWID: its rows are
# large, and SQLite advises WITHOUT ROWID only for small ones.
_CREATE_SPECS: Final = "CREATE TABLE IF NOT EXISTS specs (digest BLOB PRIMARY KEY, data BLOB NOT NULL)"
# Schema 4's table of named objects (networks, volumes, secrets, configs, registry credentials): small and
# few, so one table for every such kind, each row the object's message. A name is unique within its kind.
_CREATE_OBJECTS: Final = (
    "CREATE TABLE IF NOT EXISTS objects ("
    " kind TEXT NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (kind, id), UNIQUE (kind, name)) WITHOUT ROWID"
)
# Schema 3's history columns, which the migration from schema 2 adds (last, as ALTER TABLE puts them): when,
# why and by which store revision each kept revision was made. 0 and '' mean unknown (made before schema 3).
_HISTORY_ADDED: Final = (
    ("created_ns", "INTEGER NOT NULL DEFAULT 0"),
    ("change_cause", "TEXT NOT NULL DEFAULT ''"),
    ("store_revision", "INTEGER NOT NULL DEFAULT 0"),
)


def _create_history(added: Sequence[tuple[str, str]]) -> str:
    """Returns the history table's CREATE statement with these columns after schema 2's."""
    extra = "".join(f" {name} {kind}," for name, kind in added)
    return (
        "CREATE TABLE IF NOT EXISTS service_history ("
        " service_id TEXT NOT NULL, revision INTEGER NOT NULL, replicas INTEGER NOT NULL,"
        f" spec_revision INTEGER NOT NULL, digest BLOB NOT NULL,{extra} PRIMARY KEY (service_id, revision))"
        " WITHOUT ROWID"
    )


# Schema 2's history table, which the migration from schema 1 makes before adding schema 3's columns.
_CREATE_HISTORY_V2: Final = _create_history(())
# The columns of a history row after its key, in _HistoryRow's order.
_HISTORY_COLUMNS: Final = "replicas, spec_revision, digest, " + ", ".join(name for name, _ in _HISTORY_ADDED)
# What a commit asks when it may have dropped the last reference to a spec body.
_SPEC_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS services_by_spec ON services (spec_digest) WHERE spec_digest IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS history_by_spec ON service_history (digest)",
    "CREATE INDEX IF NOT EXISTS events_by_spec ON events (spec_digest) WHERE spec_digest IS NOT NULL",
)

# The script runs in autocommit mode, so it brackets itself in one transaction to create all or nothing.
# Columns added since schema 1 come last, where the migration's ALTER TABLE puts them, so both give one layout.
_SCHEMA: Final = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS services (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, data BLOB NOT NULL,
    spec_digest BLOB);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS nodes_by_hostname ON nodes (hostname, id);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, service_id TEXT NOT NULL, node_id TEXT NOT NULL, slot INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, version INTEGER NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_by_service ON tasks (service_id, slot, created_ns, id);
CREATE INDEX IF NOT EXISTS tasks_by_node ON tasks (node_id, service_id, slot, created_ns, id);
{_CREATE_SPECS};
{_create_history(_HISTORY_ADDED)};
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, revision INTEGER NOT NULL, kind TEXT NOT NULL, action TEXT NOT NULL,
    id TEXT NOT NULL, data BLOB NOT NULL, spec_digest BLOB);
CREATE INDEX IF NOT EXISTS events_by_revision ON events (revision);
{";".join(_SPEC_INDEXES)};
{_CREATE_OBJECTS};
PRAGMA user_version = {_SCHEMA_VERSION};
COMMIT;
"""

# Schema 1's tables and columns, to recognise a file to migrate: a full spec in every history row, service
# row and service event.
_V1_LAYOUT: Final = {
    "events": ("seq", "revision", "kind", "action", "id", "data"),
    "meta": ("key", "value"),
    "nodes": ("id", "hostname", "version", "data"),
    "service_history": ("service_id", "revision", "spec"),
    "services": ("id", "name", "version", "data"),
    "tasks": ("id", "service_id", "node_id", "slot", "created_ns", "version", "data"),
}

# A service's history rows beyond the newest ?3, never its current revision ?2: the ones pruning drops.
_PRUNABLE_HISTORY: Final = (
    "SELECT revision, digest FROM service_history WHERE service_id = ?1 AND revision NOT IN ("
    "SELECT revision FROM service_history WHERE service_id = ?1 ORDER BY revision = ?2 DESC, revision DESC"
    " LIMIT ?3)"
)
# Deletes a spec body once nothing refers to it (each NOT EXISTS is one probe of a *_by_spec index).
_DROP_UNUSED_SPEC: Final = (
    "DELETE FROM specs WHERE digest = ?1"
    " AND NOT EXISTS (SELECT 1 FROM service_history WHERE digest = ?1)"
    " AND NOT EXISTS (SELECT 1 FROM services WHERE spec_digest = ?1)"
    " AND NOT EXISTS (SELECT 1 FROM events WHERE spec_digest = ?1)"
)

_TABLES: Final = {
    Kind.SERVICE: "services",
    Kind.NODE: "nodes",
    Kind.TASK: "tasks",
    **{kind: "objects" for kind in NAMED_KINDS},
}
_MESSAGES: Final[dict[Kind, type[StoredObject]]] = {
    Kind.SERVICE: pb.Service,
    Kind.NODE: pb.Node,
    Kind.TASK: pb.Task,
    Kind.NETWORK: pb.Network,
    Kind.VOLUME: pb.Volume,
    Kind.SECRET: pb.Secret,
    Kind.CONFIG: pb.Config,
    Kind.REGISTRY: pb.RegistryCredential,
}
# The kinds whose names are unique (checked from memory before the file's UNIQUE constraint sees them).
_UNIQUE_NAMES: Final = frozenset({Kind.SERVICE, *NAMED_KINDS})


class _Grouped(NamedTuple):
    """A statement that writes many rows at once: head, then one `row` of marks per row, then tail."""

    head: str
    row: str
    tail: str = ""


# ON CONFLICT (id), not INSERT OR REPLACE: REPLACE would silently delete another service holding the name.
_UPSERTS: Final = {
    Kind.SERVICE: _Grouped(
        "INSERT INTO services (id, name, version, data, spec_digest) VALUES ",
        "(?, ?, ?, ?, ?)",
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version, data = excluded.data,"
        " spec_digest = excluded.spec_digest",
    ),
    Kind.NODE: _Grouped(
        "INSERT INTO nodes (id, hostname, version, data) VALUES ",
        "(?, ?, ?, ?)",
        " ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version,"
        " data = excluded.data",
    ),
    Kind.TASK: _Grouped(
        "INSERT INTO tasks (id, service_id, node_id, slot, created_ns, version, data) VALUES ",
        "(?, ?, ?, ?, ?, ?, ?)",
        " ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, node_id = excluded.node_id,"
        " slot = excluded.slot, created_ns = excluded.created_ns, version = excluded.version, data = excluded.data",
    ),
    **{
        kind: _Grouped(
            "INSERT INTO objects (kind, id, name, version, data) VALUES ",
            "(?, ?, ?, ?, ?)",
            " ON CONFLICT (kind, id) DO UPDATE SET name = excluded.name, version = excluded.version,"
            " data = excluded.data",
        )
        for kind in NAMED_KINDS
    },
}

# For a put that keeps the row's indexed columns: only version and data change, so no index is touched.
# Rows are (id, version, data).
_UPDATES: Final = {
    kind: _Grouped(
        f"UPDATE {table} SET version = v.column2, data = v.column3 FROM (VALUES ",
        "(?, ?, ?)",
        f") AS v WHERE {table}.id = v.column1",
    )
    for kind, table in ((Kind.NODE, "nodes"), (Kind.TASK, "tasks"))
}
_INSERT_EVENTS: Final = _Grouped(
    "INSERT INTO events (revision, kind, action, id, data, spec_digest) VALUES ", "(?, ?, ?, ?, ?, ?)"
)
# How many rows one statement writes, largest first: a batch of 10,000 puts is 39 statements per table and a
# few for the rest, so SQLite's thread takes the GIL once per statement rather than once per row (a busy
# event loop makes each taking slow), and the distinct statements stay few enough for the statement cache.
_GROUP_SIZES: Final = (256, 32, 4, 1)

# Bounded by SQLite's host-parameter limit.
_ID_CHUNK: Final = 500
# A replaying watcher reads this many revisions per query, so it never holds the lock for long.
_REPLAY_PAGE: Final = 256

_Row = tuple[str | int | bytes | None, ...]
# Where an object stands in its kind's list order, its id last: (name, id) for services, NodeKey, TaskKey.
_Key = tuple[str | int, ...]
# More key changes than this in one commit re-sort an index (once, when next read) instead of moving each.
_INSORT_LIMIT: Final = 64
# How many ops a commit plans between letting other tasks run (about a millisecond's work).
_PLAN_SLICE: Final = 500
# Above every slot (a uint32): (service id, this) bounds that service's run of TaskKeys from above.
_PAST_ANY_SLOT: Final = 2**32

_M = TypeVar("_M", bound=Message)
_T = TypeVar("_T")

# SQLite's result codes for a file that is damaged or is not a database; others (busy, full, I/O) are not damage.
_DAMAGE_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_MAGIC: Final = b"SQLite format 3\x00"
# How many problems quick_check reports at most: the first says enough, the count says how bad.
_QUICK_CHECK_ROWS: Final = 20
# Waiting for a busy database beats failing: the controller's commits are short.
_BUSY_TIMEOUT_SECONDS: Final = 10.0


class StoreInUse(StartupError):
    """Another store (another controller, or a restore) holds the file's lock; holder is its pid as recorded."""

    def __init__(self, message: str, holder: str) -> None:
        """Keeps the holder's recorded pid ("" when unknown) beside the one-line message."""
        super().__init__(message)
        self.holder = holder


class BackupError(Exception):
    """A backup or restore that cannot be done; str() is one line that says why."""


@dataclass(frozen=True)
class StoreSummary:
    """What a store file holds, as backup and restore report it."""

    revision: int
    services: int
    nodes: int
    tasks: int

    def __str__(self) -> str:
        """Returns e.g. "revision 12: 2 services, 1 nodes, 5 tasks"."""
        return f"revision {self.revision}: {self.services} services, {self.nodes} nodes, {self.tasks} tasks"


def _remedy(path: str) -> str:
    """Returns the sentence that tells an operator how to get past a damaged store file."""
    directory = Path(path).parent
    return (
        f"restore a backup with `dockyard-controller restore BACKUP --state-dir {directory}`,"
        f" or move {Path(path).name} away to start a new cluster"
    )


def _damaged(path: str, what: str) -> StoreDamaged:
    """Returns the one-line error for a damaged store file: the file, what is wrong, how to restore."""
    return StoreDamaged(f"{path}: {what}; {_remedy(path)}")


def _one_line(text: str, limit: int = 240) -> str:
    """Returns text on one line, cut to about limit characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _is_damage(exc: sqlite3.Error) -> bool:
    """Tells whether SQLite reported a damaged file (extended codes count by their primary code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _DAMAGE_CODES


def _non_empty(path: Path) -> bool:
    """Tells whether a file exists and holds at least one byte."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _header_problem(path: Path) -> str | None:
    """Returns what is wrong with a database file's header and length, or None if nothing visible is.

    Missing and empty files are fine: SQLite makes a new database of them.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None
    with path.open("rb") as f:
        head = f.read(100)
    if not head.startswith(_MAGIC[: len(head)]):
        return "not a SQLite database (it does not start with SQLite's header)"
    if len(head) < 100:
        return f"truncated ({size} bytes, shorter than SQLite's 100-byte header)"
    raw_page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"damaged (its header gives page size {raw_page_size})"
    pages = int.from_bytes(head[28:32], "big")
    # The header's page count is valid only when the change counter matches "version valid for". A crash in
    # a checkpoint may leave the file shorter than page 1 says until the WAL is replayed, so only a file
    # without a journal beside it must be at least that long.
    valid = pages > 0 and head[24:28] == head[92:96]
    journals = (path.with_name(path.name + suffix) for suffix in ("-wal", "-journal"))
    if valid and size < pages * page_size and not any(_non_empty(j) for j in journals):
        return f"truncated ({size} bytes, its header says {pages * page_size})"
    return None


@functools.cache
def _expected_layout() -> dict[str, tuple[str, ...]]:
    """Returns the tables and columns the schema creates, read from a scratch in-memory database."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.executescript(_SCHEMA)
        return _layout(conn)
    finally:
        conn.close()


def _v3_layout() -> dict[str, tuple[str, ...]]:
    """Returns schema 3's tables and columns: this schema's without the objects table schema 4 added."""
    layout = dict(_expected_layout())
    del layout["objects"]
    return layout


def _v2_layout() -> dict[str, tuple[str, ...]]:
    """Returns schema 2's tables and columns: schema 3's without the history columns schema 3 added."""
    layout = _v3_layout()
    added = {name for name, _ in _HISTORY_ADDED}
    layout["service_history"] = tuple(c for c in layout["service_history"] if c not in added)
    return layout


def _layout(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Returns each table's columns in order, SQLite's own tables aside."""
    names = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")]
    return {
        name: tuple(row[0] for row in conn.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,)))
        for name in names
        if not name.startswith("sqlite_")
    }


class _Unsound(Exception):
    """What _verify found wrong with a database (str()); newer: it is a Dockyard store of a newer schema."""

    def __init__(self, what: str, *, newer: bool = False) -> None:
        """Keeps what is wrong and whether it is only a newer schema (not damage)."""
        super().__init__(what)
        self.newer = newer


def _verify(conn: sqlite3.Connection) -> StoreSummary | None:
    """Checks an open database's pages and schema; returns None for a new (empty) one, _Unsound if bad.

    A store of an older schema that open() migrates (schema 1) is sound too.
    """
    rows = [str(row[0]) for row in conn.execute(f"PRAGMA quick_check({_QUICK_CHECK_ROWS})")]
    if rows != ["ok"]:
        # Each row may hold several lines, headed by the name of the database they are about.
        problems = [line for row in rows for line in row.splitlines() if line and not line.startswith("***")]
        at_least = "at least " if len(rows) >= _QUICK_CHECK_ROWS else ""
        more = f", and {at_least}{len(problems) - 1} more problems" if len(problems) > 1 else ""
        first = _one_line(problems[0] if problems else "; ".join(rows), 160)
        raise _Unsound(f"damaged pages (quick_check: {first}{more})")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    layout = _layout(conn)
    if not layout and version == 0:
        return None
    if version > _SCHEMA_VERSION:
        raise _Unsound(
            f"written by a newer controller (schema {version}; this one knows {_SCHEMA_VERSION})", newer=True
        )
    known = {_SCHEMA_VERSION: _expected_layout(), 3: _v3_layout(), 2: _v2_layout(), 1: _V1_LAYOUT}
    if layout != known.get(version):
        tables = _one_line(", ".join(layout) or "none", 120)
        raise _Unsound(f"not a Dockyard store (schema version {version}, tables: {tables})")
    return _summary(conn)


def _summary(conn: sqlite3.Connection) -> StoreSummary:
    """Returns the revision and object counts of a verified store."""
    (revision,) = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    counts = [conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("services", "nodes", "tasks")]
    return StoreSummary(int(revision), *counts)


def _uri(path: Path, mode: str) -> str:
    """Returns a SQLite URI for an existing file (mode ro or rw: neither creates it)."""
    return f"{path.resolve().as_uri()}?mode={mode}"


def _prepare_file(path: str, history_limit: int) -> bool:
    """Checks a store file before it is opened for good, migrating an older schema; True when it is new.

    See _verify for what is refused. The migration runs here, on a plain connection in a thread, so a large
    file never stalls the event loop.
    """
    file = Path(path)
    problem = _header_problem(file)
    if problem is not None:
        raise _damaged(path, problem)
    if not _non_empty(file):
        return True
    try:
        conn = sqlite3.connect(_uri(file, "rw"), uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_SECONDS)
        try:
            if _verify(conn) is None:
                return True
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version < _SCHEMA_VERSION:
                _migrate(conn, version, history_limit)
                log.info("store migrated", path=path, schema_from=version, schema_to=_SCHEMA_VERSION)
            return False
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    except DecodeError as exc:
        raise _damaged(path, f"damaged (a stored object does not decode: {exc})") from None
    except _Unsound as exc:
        if exc.newer:
            raise StartupError(f"{path}: {exc}; run that version, or restore a backup made by this one") from None
        raise _damaged(path, str(exc)) from None


def _migrate(conn: sqlite3.Connection, version: int, history_limit: int) -> None:
    """Converts a store of an older schema (1 to 3) to this one in one transaction; see the module docstring.

    A schema-1 store is vacuumed afterwards (its full specs become references, which frees most pages).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:
            _migrate_v1(conn, history_limit)
        if version < 3:
            _migrate_v2(conn)
        _migrate_v3(conn)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    if version < 2:
        # The copies the migration dropped leave free pages; give them back so the file shrinks to what it holds.
        conn.execute("VACUUM")


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Adds schema 4's objects table (named objects: networks, volumes, ...) inside the open transaction.

    A schema-3 store holds none of them, so the table starts empty; nothing else changes.
    """
    conn.execute(_CREATE_OBJECTS)


def _migrate_v2(conn: sqlite3.Connection) -> None:
    """Adds schema 3's history columns inside the open transaction, filled in for each current revision.

    The current revision's row takes the service's updated_at and change_cause, and as its store revision
    the service's version: the last write of the service, which is no earlier than the revision's own, so an
    apply conditioned on a state revision (if_state_revision) errs towards refusing. Older rows stay unknown.
    """
    for name, kind in _HISTORY_ADDED:
        conn.execute(f"ALTER TABLE service_history ADD COLUMN {name} {kind}")
    keys = [row[0] for row in conn.execute("SELECT id FROM services")]
    for service_id in keys:
        (data,) = conn.execute("SELECT data FROM services WHERE id = ?", (service_id,)).fetchone()
        service = pb.Service.FromString(data)
        made = service.updated_at
        conn.execute(
            "UPDATE service_history SET created_ns = ?, change_cause = ?, store_revision = ?"
            " WHERE service_id = ? AND revision = ?",
            (
                made.seconds * 1_000_000_000 + made.nanos,
                service.change_cause,
                service.version,
                service.id,
                service.revision,
            ),
        )


def _migrate_v1(conn: sqlite3.Connection, history_limit: int) -> None:
    """Converts a schema-1 store to schema 2 inside the open transaction.

    Every full spec (history rows, service rows, service events) becomes a reference to one stored body;
    each history row's spec_revision is derived as the API does (the revision since which all but replicas
    is the same); history beyond history_limit is pruned as a commit would.
    """
    conn.execute("ALTER TABLE services ADD COLUMN spec_digest BLOB")
    conn.execute("ALTER TABLE events ADD COLUMN spec_digest BLOB")
    conn.execute("ALTER TABLE service_history RENAME TO service_history_v1")
    conn.execute(_CREATE_SPECS)
    conn.execute(_CREATE_HISTORY_V2)
    last: tuple[str, int, int, bytes] | None = None  # service, revision, spec_revision, digest
    old_rows = conn.execute("SELECT service_id, revision, spec FROM service_history_v1 ORDER BY 1, 2")
    for service_id, revision, data in old_rows:
        spec = pb.ServiceSpec.FromString(data)
        replicas = spec.replicas
        digest, body = _spec_body(spec)
        same = last is not None and last[:2] == (service_id, revision - 1) and last[3] == digest
        spec_revision = last[2] if same and last is not None else revision
        conn.execute("INSERT OR IGNORE INTO specs (digest, data) VALUES (?, ?)", (digest, body))
        conn.execute(
            "INSERT INTO service_history (service_id, revision, replicas, spec_revision, digest)"
            " VALUES (?, ?, ?, ?, ?)",
            (service_id, revision, replicas, spec_revision, digest),
        )
        last = (service_id, revision, spec_revision, digest)
    conn.execute("DROP TABLE service_history_v1")
    revisions: dict[str, int] = {}  # each service's current revision, which pruning keeps
    for table, key in (("services", "id"), ("events", "seq")):
        where = " WHERE kind = 'service'" if table == "events" else ""
        # Keys first: rewriting rows of the table a SELECT is still stepping through is not safe.
        keys = [row[0] for row in conn.execute(f"SELECT {key} FROM {table}{where}")]
        for row_key in keys:
            (data,) = conn.execute(f"SELECT data FROM {table} WHERE {key} = ?", (row_key,)).fetchone()
            service = pb.Service.FromString(data)
            if table == "services":
                revisions[service.id] = service.revision
            split = _split_spec(service)
            if split is None:
                continue
            digest, body = split
            conn.execute("INSERT OR IGNORE INTO specs (digest, data) VALUES (?, ?)", (digest, body))
            conn.execute(
                f"UPDATE {table} SET data = ?, spec_digest = ? WHERE {key} = ?",
                (service.SerializeToString(), digest, row_key),
            )
    for statement in _SPEC_INDEXES:
        conn.execute(statement)
    for service_id, revision in revisions.items():
        pruned = conn.execute(_PRUNABLE_HISTORY, (service_id, revision, history_limit)).fetchall()
        conn.executemany(
            "DELETE FROM service_history WHERE service_id = ? AND revision = ?",
            [(service_id, rev) for rev, _ in pruned],
        )
    conn.execute(
        "DELETE FROM specs WHERE NOT EXISTS (SELECT 1 FROM service_history h WHERE h.digest = specs.digest)"
        " AND NOT EXISTS (SELECT 1 FROM services s WHERE s.spec_digest = specs.digest)"
        " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.spec_digest = specs.digest)"
    )


def _open_error(path: str, exc: sqlite3.Error) -> StartupError:
    """Returns the one-line startup error for an SQLite error met while opening the store."""
    if _is_damage(exc):
        return _damaged(path, f"damaged ({exc})")
    return StartupError(f"{path}: cannot open the store ({exc})")


class _FileLock:
    """An exclusive advisory lock on `<db>.lock` that records its holder's pid; released on close or exit."""

    def __init__(self, db_path: str) -> None:
        """Names the lock beside the database file without taking it."""
        self._db_path = db_path
        self.path = Path(db_path + ".lock")
        self._file: BinaryIO | None = None

    def acquire(self, purpose: str) -> None:
        """Takes the lock without waiting and records this pid; StoreInUse when someone holds it."""
        # "a+b": opening must not truncate the holder's pid before we know whether we hold the lock.
        handle = self.path.open("a+b")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(64).decode("ascii", "replace").strip()
            handle.close()
            who = f"pid {holder}" if holder else "another process"
            raise StoreInUse(f"{self._db_path}: in use by {who}; {purpose}", holder) from None
        except BaseException:
            handle.close()
            raise
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Lets go of the lock; the file stays, since removing it would race with the next taker."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()


def _fsync(path: Path) -> None:
    """Flushes a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_verified(source: Path, target: Path, label: str) -> StoreSummary:
    """Copies a store file through SQLite's backup API in one step and checks the copy; BackupError if bad.

    One step means one read transaction: the copy is one committed revision even while a controller writes.
    The copy is a self-contained file (rollback journal mode), flushed to disk.
    """
    problem = _header_problem(source)
    if problem is not None:
        raise BackupError(f"{label}: {source}: {problem}")
    if not _non_empty(source):
        raise BackupError(f"{label}: {source}: empty")
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    try:
        src = sqlite3.connect(_uri(source, "ro"), uri=True, timeout=_BUSY_TIMEOUT_SECONDS)
        try:
            dst = sqlite3.connect(target, isolation_level=None)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = DELETE")
                summary = _verify(dst)
            finally:
                dst.close()
        finally:
            src.close()
    except (sqlite3.Error, _Unsound) as exc:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise BackupError(f"{label}: {source}: {exc}") from exc
    if summary is None:
        target.unlink()
        raise BackupError(f"{label}: {source}: no Dockyard store in it (no tables)")
    _fsync(target)
    return summary


def backup_file(db_path: Path, backup_path: Path, *, force: bool = False) -> StoreSummary:
    """Writes a consistent copy of a store file to backup_path, safe while a controller runs on it.

    Refuses (BackupError) a missing or damaged store, and an existing backup_path unless force. The copy is
    checked before it takes the name backup_path, so a failed backup leaves nothing behind.
    """
    if not db_path.exists():
        raise BackupError(f"cannot back up: there is no store at {db_path}")
    if backup_path.resolve() == db_path.resolve():
        raise BackupError(f"cannot back up {db_path} onto itself")
    if backup_path.exists() and not force:
        raise BackupError(f"cannot back up: {backup_path} exists; use --force to overwrite it")
    backup_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = backup_path.with_name(f".{backup_path.name}.{os.getpid()}.partial")
    try:
        summary = _copy_verified(db_path, scratch, "cannot back up")
        if backup_path.exists() and not force:
            raise BackupError(f"cannot back up: {backup_path} appeared meanwhile; use --force to overwrite it")
        os.replace(scratch, backup_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    _fsync(backup_path.parent)
    return summary


def _aside_name(db_path: Path) -> Path:
    """Returns a free name `<db>.<UTC timestamp>[.N].bak` beside the store for the file a restore replaces."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = db_path.with_name(f"{db_path.name}.{stamp}.bak")
    n = 1
    while any(candidate.with_name(candidate.name + s).exists() for s in ("", "-wal", "-journal")):
        candidate = db_path.with_name(f"{db_path.name}.{stamp}.{n}.bak")
        n += 1
    return candidate


def restore_file(backup_path: Path, db_path: Path) -> tuple[StoreSummary, Path | None]:
    """Puts a checked backup in place of the store file; returns what it holds and where the old file went.

    Refuses (BackupError) while a controller holds the store, and a backup that is not a sound Dockyard store.
    The replaced file keeps its WAL beside it under the new name (SQLite finds it there), so nothing it held
    is lost; the stale shared-memory index goes. Returns None for the old file when there was none.
    """
    if not backup_path.is_file():
        raise BackupError(f"cannot restore: there is no file at {backup_path}")
    if backup_path.resolve() == db_path.resolve():
        raise BackupError(f"cannot restore {db_path} onto itself")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    lock = _FileLock(str(db_path))
    try:
        lock.acquire("stop the controller before restoring")
    except StoreInUse as exc:
        raise BackupError(f"cannot restore: {exc}") from None
    try:
        scratch = db_path.with_name(f"{db_path.name}.restoring")
        try:
            summary = _copy_verified(backup_path, scratch, "cannot restore")
            aside = _set_aside(db_path)
            os.replace(scratch, db_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
        _fsync(db_path.parent)
    finally:
        lock.release()
    return summary, aside


def _set_aside(db_path: Path) -> Path | None:
    """Renames the store file and its journals to a free .bak name; drops the -shm index; None if no file."""
    siblings = {suffix: db_path.with_name(db_path.name + suffix) for suffix in ("", "-wal", "-journal")}
    present = {suffix: path for suffix, path in siblings.items() if path.exists()}
    aside = _aside_name(db_path) if present else None
    if aside is not None:
        for suffix, path in present.items():
            os.rename(path, aside.with_name(aside.name + suffix))
    with contextlib.suppress(FileNotFoundError):
        db_path.with_name(db_path.name + "-shm").unlink()
    return aside


def _kind_of(obj: StoredObject) -> Kind:
    """Returns the kind of a stored message; TypeError for anything else."""
    if isinstance(obj, pb.Service):
        return Kind.SERVICE
    if isinstance(obj, pb.Node):
        return Kind.NODE
    if isinstance(obj, pb.Task):
        return Kind.TASK
    kind = _NAMED_MESSAGES.get(type(obj))
    if kind is None:
        raise TypeError(f"not a storable object: {type(obj).__name__}")
    return kind


def _name_of(obj: NamedObject) -> str:
    """Returns a named object's name: a registry credential's is its server."""
    return obj.server if isinstance(obj, pb.RegistryCredential) else obj.name


_NAMED_MESSAGES: Final[dict[type[StoredObject], Kind]] = {
    message: kind for kind, message in _MESSAGES.items() if kind in NAMED_KINDS
}


def _digest(body: bytes) -> bytes:
    """Returns the content address of a spec body."""
    return hashlib.sha256(body).digest()


def _spec_body(spec: pb.ServiceSpec) -> tuple[bytes, bytes]:
    """Returns the digest and body of a spec with replicas cleared; the spec itself is left as it was.

    Deterministic serialization (maps sorted by key) makes equal specs equal bytes, hence one stored body.
    """
    replicas = spec.replicas
    spec.replicas = 0
    try:
        body = spec.SerializeToString(deterministic=True)
    finally:
        spec.replicas = replicas
    return _digest(body), body


def _split_spec(service: pb.Service) -> tuple[bytes, bytes] | None:
    """Cuts a service's spec down to its replicas; returns the digest and body of the rest (None: no spec)."""
    if not service.HasField("spec"):
        return None
    digest, body = _spec_body(service.spec)
    replicas = service.spec.replicas
    service.ClearField("spec")
    # Present even with 0 replicas: a stored service without a spec must come back without one, and with.
    service.spec.SetInParent()
    service.spec.replicas = replicas
    return digest, body


def _name(key: _Key) -> str:
    """Returns a service key's name, its first part."""
    return str(key[0])


def _decode(kind: Kind, data: bytes, spec: bytes | None = None) -> StoredObject:
    """Returns a fresh message of the kind parsed from data, a service with its spec body merged back in.

    The stub's spec holds only replicas and the body everything but (cleared, so absent on the wire), so
    merging the body into the stub's spec gives back the whole spec.
    """
    obj = _MESSAGES[kind].FromString(data)
    if spec is not None and isinstance(obj, pb.Service):
        obj.spec.MergeFromString(spec)
    return obj


def _copy(obj: _M) -> _M:
    """Returns a copy the caller may mutate (CopyFrom: faster than parsing kept bytes, see the module docstring)."""
    fresh = type(obj)()
    fresh.CopyFrom(obj)
    return fresh


def _created_ns(task: pb.Task) -> int:
    """Returns a task's creation time in ns since the epoch, the third part of its TaskKey."""
    return task.created_at.seconds * 1_000_000_000 + task.created_at.nanos


def _key(obj: StoredObject) -> _Key:
    """Returns where an object stands in its kind's list order; the id is always the last part."""
    if isinstance(obj, pb.Service):
        return (obj.name, obj.id)
    if isinstance(obj, pb.Node):
        return (obj.description.hostname, obj.id)
    if isinstance(obj, pb.Task):
        return (obj.service_id, obj.slot, _created_ns(obj), obj.id)
    return (_name_of(obj), object_id(obj))


def _columns(obj: StoredObject, data: bytes, digest: bytes | None) -> _Row:
    """Returns the row for the kind's upsert statement."""
    if isinstance(obj, pb.Service):
        return (obj.id, obj.name, obj.version, data, digest)
    if isinstance(obj, pb.Node):
        return (obj.id, obj.description.hostname, obj.version, data)
    if isinstance(obj, pb.Task):
        return (obj.id, obj.service_id, obj.node_id, obj.slot, _created_ns(obj), obj.version, data)
    return (_kind_of(obj).value, object_id(obj), _name_of(obj), obj.version, data)


class _Record(NamedTuple):
    """One event as stored: the watcher decodes it itself, so every watcher gets its own message.

    A service event's data is the stub (spec cut to replicas) and `spec` the body that `digest` names: the
    bytes object the commit serialized (or the replay read) once, shared by every watcher that queues it.
    A named tuple: a commit of thousands of puts builds one per put, cheaper than a frozen dataclass.
    """

    revision: int
    kind: Kind
    action: Action
    id: str
    data: bytes
    digest: bytes | None = None
    spec: bytes | None = None

    def to_event(self) -> Event:
        """Returns the event with a freshly decoded object."""
        return Event(self.revision, self.kind, self.action, self.id, _decode(self.kind, self.data, self.spec))


# eq=False keeps identity hashing: subscribers live in a set.
@dataclass(slots=True, eq=False)
class _Subscriber:
    """A watcher's live feed: whole commits in order, until one would overflow the bound.

    The bound is `limit` events or one commit, whichever is more: a commit always fits an empty queue, so a
    single large batch (the dispatcher's group commit) never sends a watcher that keeps up back to the table.
    The records are the commit's own, shared by every queue, so a queue costs a reference per event.
    """

    limit: int
    buffer: deque[_Record] = field(default_factory=deque)
    # Once set, nothing more is buffered; the watcher drains, then re-reads the rest from the table.
    overflowed: bool = False
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, records: Sequence[_Record]) -> None:
        """Buffers one commit's records entirely, or marks the feed as overflowed."""
        if not self.overflowed:
            if self.buffer and len(self.buffer) + len(records) > self.limit:
                self.overflowed = True
            else:
                self.buffer.extend(records)
        self.wake.set()

    def close(self) -> None:
        """Tells the watcher to finish once its buffer is drained."""
        self.closed = True
        self.wake.set()


class _Step(NamedTuple):
    """One op of a commit, with a private copy of a Put's object taken when commit() was called."""

    kind: Kind
    id: str
    op: Op
    snapshot: StoredObject | None


@functools.cache
def _grouped_sql(statement: _Grouped, rows: int) -> str:
    """Returns the statement's text for that many rows."""
    return statement.head + ", ".join([statement.row] * rows) + statement.tail


async def _write_grouped(db: aiosqlite.Connection, statement: _Grouped, rows: Sequence[_Row]) -> None:
    """Writes rows with few statements (see _GROUP_SIZES): one executemany per group size, largest first."""
    start = 0
    for size in _GROUP_SIZES:
        count = (len(rows) - start) // size
        if count:
            groups = [
                [value for row in rows[at : at + size] for value in row]
                for at in range(start, start + count * size, size)
            ]
            await db.executemany(_grouped_sql(statement, size), groups)
            start += count * size


def _chunks(items: list[_T]) -> Iterator[list[_T]]:
    """Yields items in slices that fit SQLite's host-parameter limit."""
    for start in range(0, len(items), _ID_CHUNK):
        yield items[start : start + _ID_CHUNK]


def _limit(limit: int) -> int:
    """Returns a page's item limit; ValueError for a negative one."""
    if limit < 0:
        raise ValueError(f"a page limit must not be negative, not {limit}")
    return limit


class _Ordered:
    """The keys of some objects by id, and the same keys sorted, for keyset paging by bisection.

    A commit that changes few keys moves them in the sorted list one by one; one that changes more than
    _INSORT_LIMIT drops the list, and the next read that needs it sorts the keys once. A put that keeps an
    object's key (a status update) changes nothing here.
    """

    __slots__ = ("_keys", "_sorted")

    def __init__(self) -> None:
        """Starts empty."""
        self._keys: dict[str, _Key] = {}
        self._sorted: list[_Key] | None = []

    def __len__(self) -> int:
        """Returns how many objects the index holds."""
        return len(self._keys)

    def update(self, changes: Sequence[tuple[str, _Key | None]]) -> None:
        """Sets each id's key (None: removes the id); the caller passes only changed keys."""
        ordered = self._sorted if len(changes) <= _INSORT_LIMIT else None
        for oid, key in changes:
            old = self._keys.pop(oid, None)
            if key is not None:
                self._keys[oid] = key
            if ordered is not None:
                if old is not None:
                    del ordered[bisect.bisect_left(ordered, old)]
                if key is not None:
                    bisect.insort(ordered, key)
        self._sorted = ordered

    def ordered(self) -> list[_Key]:
        """Returns every key in order; the list is the index's own, to read before the next await."""
        if self._sorted is None:
            self._sorted = sorted(self._keys.values())
        return self._sorted


@dataclass(slots=True)
class _Held:
    """An object as the store holds it in memory: its row's serialized data, parsed afresh for every read.

    Bytes, not parsed messages: parsing 10,000 tasks from compact bytes is faster than copying as many held
    messages (their memory is scattered), and costs a fifth of the memory. A service's data is its stub
    (spec cut to replicas); `digest` names its spec body, which the store holds once (see _Memory.specs).
    """

    data: bytes
    version: int
    key: _Key
    node_id: str = ""  # a task's node, which its node index files it under
    digest: bytes | None = None


class _HistoryRow(NamedTuple):
    """One kept revision of a service: its spec by reference, and when, why and by which store revision."""

    replicas: int
    spec_revision: int
    digest: bytes
    created_ns: int  # the service's updated_at when the revision was written (0: unknown, from before schema 3)
    change_cause: str
    store_revision: int  # the commit that wrote the revision (0: unknown, from before schema 3)


_KeyChanges = list[tuple[str, _Key | None]]


@dataclass(slots=True)
class _Staged:
    """What a batch changes in memory, worked out while it plans (under the commit lock, memory cannot change)."""

    puts: dict[Kind, dict[str, _Held]] = field(default_factory=lambda: {kind: {} for kind in Kind})
    removed: dict[Kind, list[str]] = field(default_factory=lambda: {kind: [] for kind in Kind})
    # Keys to move in each kind's order, and in the per-service and per-node task indexes (None: remove).
    moved: dict[Kind, _KeyChanges] = field(default_factory=lambda: {kind: [] for kind in Kind})
    by_service: dict[str, _KeyChanges] = field(default_factory=dict)
    by_node: dict[str, _KeyChanges] = field(default_factory=dict)
    # Services as they were and will be, for names and spec references.
    services: list[tuple[str, _Held | None, _Held | None]] = field(default_factory=list)
    # Named objects (NAMED_KINDS) as they were and will be, for their names.
    named: list[tuple[Kind, str, _Held | None, _Held | None]] = field(default_factory=list)


@dataclass(slots=True)
class _Batch:
    """What a commit will write, worked out against the objects held in memory, and their state after it."""

    revision: int
    # Every object the batch touches as the batch leaves it (None: deleted), and as it found it.
    final: dict[tuple[Kind, str], _Held | None] = field(default_factory=dict)
    upserts: dict[Kind, dict[str, _Row]] = field(default_factory=dict)
    # Puts that keep an existing row's indexed columns: (id, version, data) for the kind's UPDATE.
    updates: dict[Kind, dict[str, _Row]] = field(default_factory=dict)
    deletes: dict[Kind, set[str]] = field(default_factory=dict)
    records: list[_Record] = field(default_factory=list)
    history_cleared: set[str] = field(default_factory=set)
    history: dict[str, dict[int, _HistoryRow]] = field(default_factory=dict)
    # The revision each written service is at after the batch: pruning keeps it whatever its age.
    current_revision: dict[str, int] = field(default_factory=dict)
    # Each touched service's whole history after the batch, and the rows pruning drops.
    history_after: dict[str, dict[int, _HistoryRow]] = field(default_factory=dict)
    pruned: list[tuple[str, int]] = field(default_factory=list)
    # What the batch changes in memory, staged once its ops are planned.
    staged: _Staged = field(default_factory=_Staged)
    # Spec bodies the batch's puts bring (by digest).
    new_specs: dict[bytes, bytes] = field(default_factory=dict)
    # Digests the batch stops referring to from a row; each goes if nothing else refers to it.
    released: set[bytes] = field(default_factory=set)


def _check(kind: Kind, oid: str, expected: int | None, found: _Held | None) -> None:
    """Raises ConflictError unless expected is None or equals the found version (0: absent)."""
    actual = found.version if found is not None else 0
    if expected is not None and expected != actual:
        raise ConflictError(f"{kind} {oid}: expected version {expected}, found {actual}")


def _plan_put(batch: _Batch, kind: Kind, oid: str, obj: StoredObject, expected: int | None) -> None:
    """Adds one put to the batch after checking it; a service's spec goes to the specs table, cut from obj.

    A task or node whose indexed columns stay as they are (a status update, a heartbeat) is written by an
    UPDATE of its version and data alone, which leaves the table's indexes untouched: half the cost of an
    upsert, which rewrites every index entry of the row.
    """
    found = batch.final[(kind, oid)]
    if expected is not None:
        _check(kind, oid, expected, found)
    obj.version = batch.revision
    digest = body = None
    if isinstance(obj, pb.Task):
        # The common case at scale (a status round of thousands of tasks), so key and row share their parts.
        data = obj.SerializeToString()
        created = obj.created_at
        key: _Key = (obj.service_id, obj.slot, created.seconds * 1_000_000_000 + created.nanos, obj.id)
        node_id = obj.node_id
        held = _Held(data, obj.version, key, node_id)
        row: _Row = (obj.id, key[0], node_id, key[1], key[2], obj.version, data)
        same_place = found is not None and found.key == key and found.node_id == node_id
    elif isinstance(obj, pb.Service):
        if found is not None and found.digest is not None:
            batch.released.add(found.digest)
        spec_revision = obj.spec_revision
        split = _split_spec(obj)  # obj is the commit's own snapshot: cutting it touches nobody's copy
        digest, body = split if split is not None else _spec_body(pb.ServiceSpec())
        batch.new_specs[digest] = body
        batch.history.setdefault(obj.id, {}).setdefault(obj.revision, _history_row(obj, spec_revision, digest))
        batch.current_revision[obj.id] = obj.revision
        if split is None:  # no spec to refer to; the history still records an empty one, as it always did
            digest = body = None
        data = obj.SerializeToString()
        held = _Held(data, obj.version, _key(obj), digest=digest)
        row = _columns(obj, data, digest)
        same_place = False  # services are few; the upsert also checks the name
    else:
        data = obj.SerializeToString()
        held = _Held(data, obj.version, _key(obj))
        row = _columns(obj, data, digest)
        # Named objects are few and their upsert checks the name: only nodes keep a row by UPDATE.
        same_place = kind is Kind.NODE and found is not None and found.key == held.key
    batch.final[(kind, oid)] = held
    deletes = batch.deletes.get(kind)
    if deletes:
        deletes.discard(oid)
    upserts = batch.upserts.get(kind)
    if upserts is None:
        upserts = batch.upserts[kind] = {}
    updates = batch.updates.get(kind)
    if updates is None:
        updates = batch.updates[kind] = {}
    # An object an earlier op of the batch inserts stays an upsert: the UPDATEs run after the upserts.
    if same_place and oid not in upserts:
        updates[oid] = (oid, obj.version, data)
    else:
        upserts[oid] = row
        updates.pop(oid, None)
    batch.records.append(_Record(batch.revision, kind, Action.PUT, oid, data, digest, body))


def _history_row(service: pb.Service, spec_revision: int, digest: bytes) -> _HistoryRow:
    """Returns the history row of a service written at its version (the commit's revision)."""
    made = service.updated_at
    created_ns = made.seconds * 1_000_000_000 + made.nanos
    return _HistoryRow(service.spec.replicas, spec_revision, digest, created_ns, service.change_cause, service.version)


def _place(held: _Held | None) -> tuple[str, str, _Key] | None:
    """Returns a held task's service id, node id and key (None for no task): what its indexes file it under."""
    if held is None:
        return None
    return str(held.key[0]), held.node_id, held.key


class _Memory:
    """Every service, node and task of the open store, with the indexes that answer reads; see the module docstring.

    Only a commit changes it (apply), after its transaction has committed, in the step that advances the
    revision; reads copy out of it without awaiting, so each read sees one revision.
    """

    def __init__(self) -> None:
        """Starts empty, as a new store is."""
        self.held: dict[Kind, dict[str, _Held]] = {kind: {} for kind in Kind}
        self.order: dict[Kind, _Ordered] = {kind: _Ordered() for kind in Kind}
        self.by_service: dict[str, _Ordered] = {}
        self.by_node: dict[str, _Ordered] = {}
        # Each name-unique kind's names -> the id holding it; service_names is the services' one.
        self.names: dict[Kind, dict[str, str]] = {kind: {} for kind in _UNIQUE_NAMES}
        self.service_names = self.names[Kind.SERVICE]
        self.history: dict[str, dict[int, _HistoryRow]] = {}
        # The spec bodies the services and the history refer to, and how many of them refer to each.
        self.specs: dict[bytes, bytes] = {}
        self.spec_refs: dict[bytes, int] = {}

    def service_by_name_or_id(self, name_or_id: str) -> _Held | None:
        """Returns the held service with that id or, failing that, that name."""
        services = self.held[Kind.SERVICE]
        found = services.get(name_or_id)
        if found is None and (by_name := self.service_names.get(name_or_id)) is not None:
            found = services.get(by_name)
        return found

    def task_keys(
        self, service_id: str | None, node_id: str | None, after: TaskKey | None, limit: int | None
    ) -> list[_Key]:
        """Returns the keys of the tasks filtered and strictly after `after`, in order, at most limit (None: all)."""
        if node_id is not None:
            index = self.by_node.get(node_id)
        elif service_id is not None:
            index = self.by_service.get(service_id)
        else:
            index = self.order[Kind.TASK]
        if index is None:
            return []
        keys = index.ordered()
        start, end = 0, len(keys)
        if node_id is not None and service_id is not None:
            # A node's keys are in full TaskKey order, so one service's tasks are a contiguous run.
            start = bisect.bisect_left(keys, (service_id,))
            end = bisect.bisect_left(keys, (service_id, _PAST_ANY_SLOT))
        if after is not None:
            start = max(start, bisect.bisect_right(keys, tuple(after)))
        stop = end if limit is None else min(end, start + limit)
        return keys[start:stop]

    def load(self, objects: Iterable[tuple[Kind, _Held]]) -> None:
        """Holds the objects read at open (besides history and specs, memory must be empty); builds the indexes."""
        # History first: apply() lets go of every body nothing counted refers to.
        for rows in self.history.values():
            for row in rows.values():
                self._ref(row.digest, 1)
        staged = _Staged()
        for kind, held in objects:
            self.stage(staged, kind, str(held.key[-1]), held)
        self.apply(staged, {}, {})

    def stage(self, staged: _Staged, kind: Kind, oid: str, new: _Held | None) -> None:
        """Works out what holding new (None: nothing) under oid changes, against memory as it is, into staged.

        A commit stages while it plans, so its final synchronous step (apply) is mostly dictionary updates.
        """
        old = self.held[kind].get(oid)
        if new is None:
            if old is None:
                return
            staged.removed[kind].append(oid)
        else:
            staged.puts[kind][oid] = new
        if kind is Kind.SERVICE:
            staged.services.append((oid, old, new))
        elif kind in NAMED_KINDS:
            staged.named.append((kind, oid, old, new))
        same_key = old is not None and new is not None and old.key == new.key
        if not same_key:
            staged.moved[kind].append((oid, new.key if new is not None else None))
        if kind is not Kind.TASK or (same_key and old is not None and new is not None and old.node_id == new.node_id):
            return  # a status update: no index changes
        was, now = _place(old), _place(new)
        if was is not None and (now is None or now[0] != was[0]):
            staged.by_service.setdefault(was[0], []).append((oid, None))
        if was is not None and (now is None or now[1] != was[1]):
            staged.by_node.setdefault(was[1], []).append((oid, None))
        if now is not None and (was is None or was[0] != now[0] or was[2] != now[2]):
            staged.by_service.setdefault(now[0], []).append((oid, now[2]))
        if now is not None and (was is None or was[1] != now[1] or was[2] != now[2]):
            staged.by_node.setdefault(now[1], []).append((oid, now[2]))

    def apply(self, staged: _Staged, new_specs: dict[bytes, bytes], history: dict[str, dict[int, _HistoryRow]]) -> None:
        """Moves memory to what a committed batch left: its staged objects, spec bodies and history rows."""
        for kind in Kind:
            held = self.held[kind]
            held.update(staged.puts[kind])
            for oid in staged.removed[kind]:
                del held[oid]
            if staged.moved[kind]:
                self.order[kind].update(staged.moved[kind])
        for indexes, grouped in ((self.by_service, staged.by_service), (self.by_node, staged.by_node)):
            for name, changes in grouped.items():
                index = indexes.setdefault(name, _Ordered())
                index.update(changes)
                if not index:
                    del indexes[name]
        for kind, oid, old, new in staged.named:
            names = self.names[kind]
            # As for services: a batch may pass a name from one object to another.
            if old is not None and names.get(_name(old.key)) == oid:
                del names[_name(old.key)]
            if new is not None:
                names[_name(new.key)] = oid
        if not staged.services and not history:
            return
        for digest, body in new_specs.items():
            self.specs.setdefault(digest, body)
        for oid, old, new in staged.services:
            if old is not None and old.digest is not None:
                self._ref(old.digest, -1)
            if new is not None and new.digest is not None:
                self._ref(new.digest, 1)
            # A batch may pass a name from one service to another: drop it only if this service still has it.
            if old is not None and self.service_names.get(_name(old.key)) == oid:
                del self.service_names[_name(old.key)]
            if new is not None:
                self.service_names[_name(new.key)] = oid
        for service_id, rows in history.items():
            for row in self.history.get(service_id, {}).values():
                self._ref(row.digest, -1)
            for row in rows.values():
                self._ref(row.digest, 1)
            if rows:
                self.history[service_id] = rows
            else:
                self.history.pop(service_id, None)
        for digest in [d for d in self.specs if d not in self.spec_refs]:
            del self.specs[digest]

    def _ref(self, digest: bytes, delta: int) -> None:
        """Counts one reference to a spec body more (delta 1) or less (-1)."""
        count = self.spec_refs.get(digest, 0) + delta
        if count > 0:
            self.spec_refs[digest] = count
        else:
            self.spec_refs.pop(digest, None)


def _plan_delete(batch: _Batch, mem: _Memory, op: Delete) -> None:
    """Adds one delete to the batch after checking it; a blind delete of nothing is dropped.

    A checked delete of a missing object conflicts even with expect_version 0: the caller believed it
    existed, or asked to delete something it requires to be absent.
    """
    found = batch.final[(op.kind, op.id)]
    if found is None:
        if op.expect_version is None:
            return
        raise ConflictError(f"{op.kind} {op.id}: expected version {op.expect_version}, found none to delete")
    _check(op.kind, op.id, op.expect_version, found)
    batch.final[(op.kind, op.id)] = None
    batch.upserts.get(op.kind, {}).pop(op.id, None)
    batch.updates.get(op.kind, {}).pop(op.id, None)
    batch.deletes.setdefault(op.kind, set()).add(op.id)
    if op.kind is Kind.SERVICE:
        data = found.data
        body = None
        if found.digest is not None:
            batch.released.add(found.digest)
            body = batch.new_specs.get(found.digest)
            body = body if body is not None else mem.specs[found.digest]
        batch.history.pop(op.id, None)
        batch.current_revision.pop(op.id, None)
        batch.history_cleared.add(op.id)
    else:
        data, body = found.data, None
    batch.records.append(_Record(batch.revision, op.kind, Action.DELETE, op.id, data, found.digest, body))


def _check_names(batch: _Batch, mem: _Memory, kind: Kind) -> None:
    """Raises ConflictError when the batch would leave two objects of the kind (services, named) with one name.

    It follows the order in which the write applies rows (deletes, then each service's upsert in the order
    of its first put), checking each row against what the rows before it left, as SQLite's UNIQUE does: so
    what passes here is what the write accepts.
    """
    rows = batch.upserts.get(kind)
    if not rows:
        return
    holders: dict[str, str | None] = {}  # name -> object id, where the batch changed it
    names: dict[str, str | None] = {}  # object id -> name, likewise
    taken = mem.names[kind]

    def name_of(service_id: str) -> str | None:
        if service_id in names:
            return names[service_id]
        held = mem.held[kind].get(service_id)
        return _name(held.key) if held is not None else None

    def holder_of(name: str) -> str | None:
        return holders[name] if name in holders else taken.get(name)

    for service_id in batch.deletes.get(kind, ()):
        if (old := name_of(service_id)) is not None:
            holders[old] = names[service_id] = None
    for service_id in rows:
        held = batch.final[(kind, service_id)]
        assert held is not None  # an upsert's object is the batch's final put of it
        name = _name(held.key)
        holder = holder_of(name)
        if holder is not None and holder != service_id:
            raise ConflictError(f"{kind} name {name!r} already taken by another {kind}")
        old = name_of(service_id)
        if old is not None and old != name:
            holders[old] = None
        holders[name], names[service_id] = service_id, name


def _plan_history(batch: _Batch, mem: _Memory, limit: int) -> None:
    """Works out each touched service's history after the batch, what pruning drops, and the digests released.

    A cleared service (deleted) starts from nothing; new rows never replace kept ones (first write wins);
    pruning keeps the newest limit revisions, always the current one among them.
    """
    for service_id in batch.history_cleared | batch.history.keys():
        kept = mem.history.get(service_id, {})
        if service_id in batch.history_cleared:
            batch.released.update(row.digest for row in kept.values())
            kept = {}
        rows = dict(kept)
        for revision, row in batch.history.get(service_id, {}).items():
            rows.setdefault(revision, row)
        current = batch.current_revision.get(service_id)
        if current is not None and len(rows) > limit:
            newest = sorted(rows, key=lambda revision: (revision == current, revision), reverse=True)
            for revision in newest[limit:]:
                batch.pruned.append((service_id, revision))
                batch.released.add(rows.pop(revision).digest)
        batch.history_after[service_id] = rows


def _named(kind: Kind) -> Kind:
    """Returns kind if it is one of NAMED_KINDS; ValueError otherwise."""
    if kind not in NAMED_KINDS:
        raise ValueError(f"{kind} is not a kind of named object (one of {sorted(NAMED_KINDS)})")
    return kind


def _named_object(kind: Kind, data: bytes) -> NamedObject:
    """Returns a fresh named object of the kind parsed from its row's data."""
    obj = _MESSAGES[kind].FromString(data)
    assert not isinstance(obj, pb.Service | pb.Node | pb.Task)
    return obj


def _hold(kind: Kind, data: bytes, digest: bytes | None, body: bytes | None) -> _Held:
    """Returns a stored row as memory holds it; decoding it first finds a row that does not (DecodeError)."""
    obj = _decode(kind, data, body)
    return _Held(data, obj.version, _key(obj), obj.node_id if isinstance(obj, pb.Task) else "", digest)


class SqliteStore:
    """A Store on one SQLite file (or ":memory:"), in WAL mode, read from memory, with an in-process change feed."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep_events: int = 10000,
        watch_buffer: int = 4096,
        history_limit: int = SERVICE_HISTORY.maximum,
    ) -> None:
        """Prepares a store without touching the disk; watch_buffer bounds each watcher's queue (events).

        A commit larger than watch_buffer still fits a watcher's empty queue (see the module docstring).
        history_limit is how many revisions of each service the history keeps (the current one always).
        """
        if keep_events < 1 or watch_buffer < 1 or history_limit < 1:
            raise ValueError("keep_events, watch_buffer and history_limit must be at least 1")
        self._path = os.fspath(path)
        self._keep = keep_events
        self._history_limit = history_limit
        self._watch_buffer = watch_buffer
        self._db: aiosqlite.Connection | None = None
        self._closed = False
        # Orders commits, and keeps a watcher's replay out of a commit's open transaction: they share the
        # connection and the replay would otherwise see uncommitted rows. Reads need no lock: memory.
        self._lock = asyncio.Lock()
        self._revision = 0
        self._epoch = 0
        self._mem = _Memory()
        self._trimmed_through = 0
        self._event_count = 0
        self._revision_sizes: deque[tuple[int, int]] = deque()
        self._subscribers: set[_Subscriber] = set()
        self._lockfile = None if self._in_memory else _FileLock(self._path)
        self._damage: StoreDamaged | None = None
        self._damage_callbacks: list[Callable[[StoreDamaged], None]] = []

    @property
    def _in_memory(self) -> bool:
        return self._path == ":memory:"

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
        """Opens (creating if needed) and loads every object into memory; RuntimeError if open.

        A file of an older schema is migrated first (see the module docstring). Raises StoreInUse when
        another store holds the file, StoreDamaged when the file is damaged, not a Dockyard store, or holds
        a row that does not decode or a dangling spec reference, and StartupError for anything else that
        keeps it from opening (permissions).
        """
        if self._db is not None:
            raise RuntimeError("store is already open")
        if self._lockfile is not None:
            try:
                self._lockfile.acquire("is another controller running on it? stop it, or use another --state-dir")
            except OSError as exc:
                raise StartupError(f"{self._lockfile.path}: cannot take the store's lock ({exc})") from exc
        try:
            sizes = await self._load()
        except BaseException:
            if self._lockfile is not None:
                self._lockfile.release()
            raise
        self._revision_sizes = deque((rev, count) for rev, count in sizes)
        self._event_count = sum(count for _, count in self._revision_sizes)
        self._trimmed_through = self._revision_sizes[0][0] - 1 if self._revision_sizes else self._revision
        self._closed = False
        self._subscribers = set()
        self._damage = None

    async def _load(self) -> list[tuple[int, int]]:
        """Checks (and migrates) the file, connects, creates the schema if new, loads memory.

        Returns each kept revision's event count.
        """
        fresh = True
        if not self._in_memory:
            # A plain connection in a thread checks the file before the long-lived one trusts it.
            fresh = await asyncio.to_thread(_prepare_file, self._path, self._history_limit)
        try:
            db = await aiosqlite.connect(self._path, isolation_level=None, timeout=_BUSY_TIMEOUT_SECONDS)
        except sqlite3.Error as exc:
            raise _open_error(self._path, exc) from exc
        try:
            await db.execute_fetchall("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            if fresh:
                await db.executescript(_SCHEMA)
            # The epoch is drawn once, when the store is made (or first opened by a controller that knows
            # epochs): a store made afresh where another was has a new one, and agents notice (see epoch).
            await db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (secrets.randbelow(2**62) + 1,)
            )
            rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'revision'")
            (self._revision,) = next(iter(rows))
            rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'epoch'")
            (self._epoch,) = next(iter(rows))
            sizes = await db.execute_fetchall(
                "SELECT revision, COUNT(*) FROM events GROUP BY revision ORDER BY revision"
            )
            self._mem = await self._read_memory(db)
        except sqlite3.Error as exc:
            await db.close()
            raise _open_error(self._path, exc) from exc
        except DecodeError as exc:
            await db.close()
            raise _damaged(self._path, f"damaged (a stored object does not decode: {exc})") from None
        except BaseException:
            await db.close()
            raise
        self._db = db
        return [(int(rev), int(count)) for rev, count in sizes]

    async def _read_memory(self, db: aiosqlite.Connection) -> _Memory:
        """Reads every service, node, task, history row and the spec bodies they refer to into memory.

        DecodeError for a row that does not decode; StoreDamaged for a reference to a missing spec body.
        """
        mem = _Memory()
        history = await db.execute_fetchall(f"SELECT service_id, revision, {_HISTORY_COLUMNS} FROM service_history")
        for service_id, revision, *rest in history:
            mem.history.setdefault(service_id, {})[revision] = _HistoryRow(*rest)
        bodies = await db.execute_fetchall(
            "SELECT digest, data FROM specs WHERE digest IN"
            " (SELECT spec_digest FROM services UNION SELECT digest FROM service_history)"
        )
        mem.specs = {digest: data for digest, data in bodies}
        objects: list[tuple[Kind, _Held]] = []
        referred = {row.digest for rows in mem.history.values() for row in rows.values()}
        for data, digest in await db.execute_fetchall("SELECT data, spec_digest FROM services"):
            if digest is not None:
                referred.add(digest)
            body = mem.specs.get(digest) if digest is not None else None
            objects.append((Kind.SERVICE, _hold(Kind.SERVICE, data, digest, body)))
        missing = referred - mem.specs.keys()
        if missing:
            raise _damaged(self._path, f"damaged (spec {min(missing).hex()[:16]} is referred to but missing)")
        for kind in (Kind.NODE, Kind.TASK):
            for (data,) in await db.execute_fetchall(f"SELECT data FROM {_TABLES[kind]}"):
                objects.append((kind, _hold(kind, data, None, None)))
        for kind_name, data in await db.execute_fetchall("SELECT kind, data FROM objects"):
            try:
                kind = Kind(kind_name)
            except ValueError:
                raise _damaged(self._path, f"damaged (an object of unknown kind {kind_name!r})") from None
            objects.append((kind, _hold(kind, data, None, None)))
        mem.load(objects)
        return mem

    async def close(self) -> None:
        """Ends every watcher, waits for a running commit, and closes; closing twice is harmless."""
        self._closed = True
        for subscriber in self._subscribers:
            subscriber.close()
        async with self._lock:
            db, self._db = self._db, None
            self._mem = _Memory()
            try:
                if db is not None:
                    await db.close()
            finally:
                if db is not None and self._lockfile is not None:
                    self._lockfile.release()

    @property
    def revision(self) -> int:
        """The revision of the last committed batch (0 for an empty store)."""
        return self._revision

    @property
    def epoch(self) -> int:
        """The store's epoch: a random number made with the store, the same for as long as the store lives."""
        return self._epoch

    def _connection(self) -> aiosqlite.Connection:
        """Returns the open connection; RuntimeError when the store is not open."""
        if self._db is None:
            raise RuntimeError("store is closed" if self._closed else "store is not open")
        return self._db

    @property
    def damage(self) -> StoreDamaged | None:
        """The error that first found the open store damaged, or None while it reads and writes cleanly."""
        return self._damage

    def on_damage(self, callback: Callable[[StoreDamaged], None]) -> None:
        """Calls callback(error) once, in the event loop, when a commit or a watcher's replay first finds damage.

        Called at once if the store is damaged already. The callback must not block; it is how the server
        turns health to NOT_SERVING.
        """
        if self._damage is not None:
            callback(self._damage)
        else:
            self._damage_callbacks.append(callback)

    def _mark_damaged(self, what: str) -> StoreDamaged:
        """Returns the error for damage met while open; the first one marks the store and tells the callbacks."""
        error = _damaged(self._path, what)
        if self._damage is None:
            self._damage = error
            log.error("store damaged", path=self._path, error=str(error))
            callbacks, self._damage_callbacks = self._damage_callbacks, []
            for callback in callbacks:
                try:
                    callback(error)
                except Exception:
                    log.exception("store damage callback failed")
        return error

    @contextlib.contextmanager
    def _guarded(self) -> Iterator[None]:
        """Turns damage met by SQLite, or a row that does not decode, into StoreDamaged (and marks the store)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            raise self._mark_damaged(f"damaged ({exc})") from exc
        except DecodeError as exc:
            raise self._mark_damaged(f"damaged (a stored object does not decode: {exc})") from exc

    async def commit(self, ops: Sequence[Op]) -> int:
        """Applies every op in one transaction, or none (ConflictError); returns the new revision.

        Raises StoreDamaged, writing nothing, once the store is damaged (or when this commit finds it so).
        """
        self._connection()
        if self._damage is not None:
            raise StoreDamaged(str(self._damage))
        steps: list[_Step] = []
        for op in ops:
            if isinstance(op, Put):
                oid = object_id(op.obj)
                if not oid:
                    raise ValueError("a stored object needs an id (a registry credential: its server)")
                steps.append(_Step(_kind_of(op.obj), oid, op, _copy(op.obj)))
            else:
                steps.append(_Step(op.kind, op.id, op, None))
        if not steps:
            return self._revision
        return await asyncio.shield(self._commit(steps))

    async def _commit(self, steps: list[_Step]) -> int:
        """Plans the batch against memory, writes it in one transaction under the lock, then publishes; see commit()."""
        async with self._lock:
            db = self._connection()
            if self._damage is not None:  # found by a commit that ran while this one waited for the lock
                raise StoreDamaged(str(self._damage))
            batch = await self._plan(steps)
            if not batch.records:
                return self._revision
            cutoff, remaining = self._trim_point(len(batch.records))
            with self._guarded():
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await self._write(db, batch, cutoff)
                    await db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT may have rolled back already; the original error is the one to report.
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
            self._committed(batch, cutoff, remaining, steps)
            return batch.revision

    async def _plan(self, steps: list[_Step]) -> _Batch:
        """Checks each op against memory and the earlier ops of the batch (ConflictError), without touching either.

        It lets other tasks run every _PLAN_SLICE ops, so a group commit of thousands of puts does not hold the
        event loop for its whole plan: memory changes only when a commit ends, under the lock this one holds.
        """
        batch = _Batch(revision=self._revision + 1)
        mem = self._mem
        for done, step in enumerate(steps, 1):
            if done % _PLAN_SLICE == 0:
                await asyncio.sleep(0)
            place = (step.kind, step.id)
            if place not in batch.final:
                batch.final[place] = mem.held[step.kind].get(step.id)
            if isinstance(step.op, Put):
                assert step.snapshot is not None
                _plan_put(batch, step.kind, step.id, step.snapshot, step.op.expect_version)
            elif isinstance(step.op, Check):
                _check(step.kind, step.id, step.op.version, batch.final[place])
            else:
                _plan_delete(batch, mem, step.op)
        for kind in _UNIQUE_NAMES:
            _check_names(batch, mem, kind)
        _plan_history(batch, mem, self._history_limit)
        for done, ((kind, oid), new) in enumerate(batch.final.items(), 1):
            if done % _PLAN_SLICE == 0:
                await asyncio.sleep(0)
            mem.stage(batch.staged, kind, oid, new)
        return batch

    async def _read_specs(self, db: aiosqlite.Connection, digests: set[bytes]) -> dict[bytes, bytes]:
        """Returns the stored bodies of these digests; StoreDamaged if one is missing (a dangling reference)."""
        found: dict[bytes, bytes] = {}
        for chunk in _chunks(sorted(digests)):
            marks = ", ".join("?" * len(chunk))
            rows = await db.execute_fetchall(f"SELECT digest, data FROM specs WHERE digest IN ({marks})", chunk)
            found.update((digest, data) for digest, data in rows)
        missing = digests - found.keys()
        if missing:
            raise self._mark_damaged(f"damaged (spec {min(missing).hex()[:16]} is referred to but missing)")
        return found

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
        """Writes the planned batch inside the open transaction: one executemany per table and kind of change."""
        # Deletes first, so a batch may free a service name and reuse it.
        for kind, ids in batch.deletes.items():
            if not ids:
                continue
            if kind in NAMED_KINDS:
                await db.executemany("DELETE FROM objects WHERE kind = ? AND id = ?", [(kind.value, i) for i in ids])
            else:
                await db.executemany(f"DELETE FROM {_TABLES[kind]} WHERE id = ?", [(i,) for i in ids])
        for kind, rows in batch.upserts.items():
            try:
                await _write_grouped(db, _UPSERTS[kind], list(rows.values()))
            except sqlite3.IntegrityError as exc:
                # _check_names follows the same order, so this means memory and file disagree on names.
                at = 2 if kind in NAMED_KINDS else 1
                names = sorted(str(row[at]) for row in rows.values())
                raise ConflictError(f"{kind} name already taken by another {kind} (one of {names})") from exc
        for kind, rows in batch.updates.items():
            if rows:
                await _write_grouped(db, _UPDATES[kind], list(rows.values()))
        if batch.new_specs:
            await db.executemany("INSERT OR IGNORE INTO specs (digest, data) VALUES (?, ?)", batch.new_specs.items())
        if batch.history_cleared:
            await db.executemany(
                "DELETE FROM service_history WHERE service_id = ?", [(sid,) for sid in batch.history_cleared]
            )
        history = [(sid, rev, *row) for sid, revs in batch.history.items() for rev, row in revs.items()]
        if history:
            await db.executemany(
                f"INSERT OR IGNORE INTO service_history (service_id, revision, {_HISTORY_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                history,
            )
        if batch.pruned:
            await db.executemany("DELETE FROM service_history WHERE service_id = ? AND revision = ?", batch.pruned)
        await _write_grouped(
            db,
            _INSERT_EVENTS,
            [(r.revision, r.kind.value, r.action.value, r.id, r.data, r.digest) for r in batch.records],
        )
        await db.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (batch.revision,))
        released = set(batch.released)
        if cutoff is not None:
            trimmed = await db.execute_fetchall(
                "SELECT DISTINCT spec_digest FROM events WHERE revision <= ? AND spec_digest IS NOT NULL", (cutoff,)
            )
            released.update(digest for (digest,) in trimmed)
            await db.execute("DELETE FROM events WHERE revision <= ?", (cutoff,))
        # Last, once every row this batch writes or drops is in place: a body goes when nothing refers to it.
        if released:
            await db.executemany(_DROP_UNUSED_SPEC, [(digest,) for digest in released])

    def _committed(
        self,
        batch: _Batch,
        cutoff: int | None,
        remaining: int,
        steps: list[_Step],
    ) -> None:
        """Moves memory and the revision to the committed batch and feeds the watchers, in one step without awaiting."""
        self._mem.apply(batch.staged, batch.new_specs, batch.history_after)
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

    def _open_memory(self) -> _Memory:
        """Returns memory of the open store; RuntimeError when the store is not open."""
        self._connection()
        return self._mem

    def _services(self, found: Iterable[_Held]) -> list[pb.Service]:
        """Returns fresh services parsed from held ones, each spec body merged back into its stub."""
        specs = self._mem.specs
        services: list[pb.Service] = []
        for held in found:
            service = pb.Service.FromString(held.data)
            if held.digest is not None:
                service.spec.MergeFromString(specs[held.digest])
            services.append(service)
        return services

    async def get_service(self, name_or_id: str) -> pb.Service | None:
        """Returns the service with that id or, failing that, that name."""
        found = self._open_memory().service_by_name_or_id(name_or_id)
        return self._services([found])[0] if found is not None else None

    async def list_services(self) -> list[pb.Service]:
        """Returns every service, ordered by name."""
        mem = self._open_memory()
        held = mem.held[Kind.SERVICE]
        return self._services(held[str(key[-1])] for key in mem.order[Kind.SERVICE].ordered())

    async def list_services_page(self, after: str | None, limit: int) -> list[pb.Service]:
        """Returns at most limit services whose name sorts after `after` (None: from the first), by name."""
        mem = self._open_memory()
        keys = mem.order[Kind.SERVICE].ordered()
        # Names are unique, so the first key of a greater name follows every key of `after`.
        start = 0 if after is None else bisect.bisect_right(keys, after, key=_name)
        held = mem.held[Kind.SERVICE]
        return self._services(held[str(key[-1])] for key in keys[start : start + _limit(limit)])

    async def get_service_spec(self, service_id: str, revision: int) -> pb.ServiceSpec | None:
        """Returns the spec a service had at one of its revisions; None once pruned or the service is deleted."""
        mem = self._open_memory()
        row = mem.history.get(service_id, {}).get(revision)
        if row is None:
            return None
        return self._history_spec(row)

    def _history_spec(self, row: _HistoryRow) -> pb.ServiceSpec:
        """Returns the whole spec of a history row: its stored body with its replicas."""
        spec = pb.ServiceSpec.FromString(self._mem.specs[row.digest])
        spec.replicas = row.replicas
        return spec

    async def list_service_history(self, service_id: str, limit: int | None = None) -> list[ServiceRevision]:
        """Returns the kept revisions of a service, newest first, at most limit; empty when unknown or deleted."""
        rows = self._open_memory().history.get(service_id, {})
        newest = sorted(rows, reverse=True)[:limit]
        return [
            ServiceRevision(
                revision=revision,
                spec_revision=row.spec_revision,
                spec=self._history_spec(row),
                created_at=datetime.fromtimestamp(row.created_ns / 1e9, UTC) if row.created_ns else None,
                change_cause=row.change_cause,
                store_revision=row.store_revision,
            )
            for revision in newest
            for row in (rows[revision],)
        ]

    async def get_node(self, node_id: str) -> pb.Node | None:
        """Returns the node with that id."""
        found = self._open_memory().held[Kind.NODE].get(node_id)
        return pb.Node.FromString(found.data) if found is not None else None

    async def list_nodes(self) -> list[pb.Node]:
        """Returns every node, ordered by hostname then id."""
        return self._parsed(Kind.NODE, pb.Node, self._open_memory().order[Kind.NODE].ordered())

    async def list_nodes_page(self, after: NodeKey | None, limit: int) -> list[pb.Node]:
        """Returns at most limit nodes after the (hostname, id) key `after` (None: from the first), in that order."""
        keys = self._open_memory().order[Kind.NODE].ordered()
        start = 0 if after is None else bisect.bisect_right(keys, tuple(after))
        return self._parsed(Kind.NODE, pb.Node, keys[start : start + _limit(limit)])

    async def get_object(self, kind: Kind, name_or_id: str) -> NamedObject | None:
        """Returns the object of a named kind with that id or, failing that, that name; ValueError for another kind."""
        mem = self._open_memory()
        held = mem.held[_named(kind)]
        found = held.get(name_or_id)
        if found is None and (by_name := mem.names[kind].get(name_or_id)) is not None:
            found = held.get(by_name)
        return _named_object(kind, found.data) if found is not None else None

    async def list_objects(self, kind: Kind) -> list[NamedObject]:
        """Returns every object of a named kind, ordered by name (then id); ValueError for another kind."""
        mem = self._open_memory()
        held = mem.held[_named(kind)]
        return [_named_object(kind, held[str(key[-1])].data) for key in mem.order[kind].ordered()]

    async def get_task(self, task_id: str) -> pb.Task | None:
        """Returns the task with that id."""
        found = self._open_memory().held[Kind.TASK].get(task_id)
        return pb.Task.FromString(found.data) if found is not None else None

    async def list_tasks(self, service_id: str | None = None, node_id: str | None = None) -> list[pb.Task]:
        """Returns the tasks, filtered by service id and/or node id, ordered by service, slot, creation."""
        return self._parsed(Kind.TASK, pb.Task, self._open_memory().task_keys(service_id, node_id, None, None))

    async def list_tasks_page(
        self, service_id: str | None, node_id: str | None, after: TaskKey | None, limit: int
    ) -> list[pb.Task]:
        """Returns at most limit tasks after the (service id, slot, created_ns, id) key `after`, filtered, in order."""
        keys = self._open_memory().task_keys(service_id, node_id, after, _limit(limit))
        return self._parsed(Kind.TASK, pb.Task, keys)

    def _parsed(self, kind: Kind, message: type[_M], keys: Sequence[_Key]) -> list[_M]:
        """Returns fresh messages parsed from the held objects with these keys, in that order."""
        held = self._mem.held[kind]
        parse = message.FromString
        return [parse(held[str(key[-1])].data) for key in keys]

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
                        yield self._event(record)
                    cursor = upto
                while True:
                    if subscriber.buffer:
                        record = subscriber.buffer.popleft()
                        # Only a watcher asking from beyond the current revision can see older events here.
                        if record.revision > since:
                            cursor = record.revision
                            yield self._event(record)
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
        """Returns stored events with after < revision <= upto (None once closed); WatchExpired if trimmed.

        Each spec body is read once per call and shared by the records that refer to it.
        """
        async with self._lock:
            if self._db is None:
                return None
            if after < self._trimmed_through:
                kept = self._trimmed_through + 1
                raise WatchExpired(f"events after revision {after} were trimmed; the oldest kept is {kept}")
            with self._guarded():
                rows = await self._db.execute_fetchall(
                    "SELECT revision, kind, action, id, data, spec_digest FROM events"
                    " WHERE revision > ? AND revision <= ? ORDER BY seq",
                    (after, upto),
                )
                specs = await self._read_specs(self._db, {row[5] for row in rows if row[5] is not None})
        return [
            _Record(rev, Kind(kind), Action(action), oid, data, digest, specs[digest] if digest is not None else None)
            for rev, kind, action, oid, data, digest in rows
        ]

    async def deleted_services(self, after: int) -> list[tuple[int, str]]:
        """Returns (store revision, name) of each service deleted after store revision `after`, oldest first.

        WatchExpired when events after `after` were already trimmed. Only service deletes are read (their
        stubs, without spec bodies), so the cost is theirs, not the event log's.
        """
        async with self._lock:
            db = self._connection()
            if after < self._trimmed_through:
                kept = self._trimmed_through + 1
                raise WatchExpired(f"events after revision {after} were trimmed; the oldest kept is {kept}")
            with self._guarded():
                rows = await db.execute_fetchall(
                    "SELECT revision, data FROM events WHERE kind = ? AND action = ? AND revision > ? ORDER BY seq",
                    (Kind.SERVICE.value, Action.DELETE.value, after),
                )
                return [(int(revision), pb.Service.FromString(data).name) for revision, data in rows]

    def _event(self, record: _Record) -> Event:
        """Returns a record as an event with its own decoded object; StoreDamaged if it does not decode."""
        with self._guarded():
            return record.to_event()
