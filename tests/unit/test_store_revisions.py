"""The store's service history: when, why and by which store revision each kept revision was made.

Also the migration of a schema-2 file (history rows without those), made here from a current file by
rebuilding its history table in schema 2's shape.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.store.base import Delete, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.timestamps import to_timestamp
from dockyard.v1 import types_pb2 as pb
from tests.store_schema import assert_current_schema

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def written(revision: int, image: str, cause: str, at: datetime, replicas: int = 1) -> pb.Service:
    """A service at a revision as the API writes it: updated_at and change_cause set."""
    s = pb.Service(id="svc-web", name="web", revision=revision, spec_revision=revision, change_cause=cause)
    s.spec.name = "web"
    s.spec.image = image
    s.spec.replicas = replicas
    s.updated_at.CopyFrom(to_timestamp(at))
    return s


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "store.db"
    async with SqliteStore(path, history_limit=3) as s:
        yield s


async def test_history_is_newest_first_with_time_cause_and_store_revision(store: SqliteStore) -> None:
    first = written(1, "app:1", "apply", T0)
    r1 = await store.commit([Put(first)])
    second = written(2, "app:2", "apply", T0.replace(minute=5))
    r2 = await store.commit([Put(second, expect_version=first.version)])
    # A later write at the same revision (rollout status) is not a new revision: the history keeps the first.
    status = pb.Service()
    status.CopyFrom(second)
    status.update_status.state = pb.UpdateStatus.STATE_COMPLETED
    status.change_cause = "not recorded"
    await store.commit([Put(status, expect_version=second.version)])

    history = await store.list_service_history("svc-web")

    assert [(h.revision, h.change_cause, h.store_revision) for h in history] == [(2, "apply", r2), (1, "apply", r1)]
    assert [h.created_at for h in history] == [T0.replace(minute=5), T0]
    assert [h.spec.image for h in history] == ["app:2", "app:1"]
    assert history[0].spec == second.spec


async def test_history_is_pruned_to_the_limit_and_gone_with_the_service(store: SqliteStore) -> None:
    service = written(1, "app:1", "apply", T0)
    await store.commit([Put(service)])
    for revision in range(2, 6):
        service = written(revision, f"app:{revision}", f"scale to {revision}", T0, replicas=revision)
        await store.commit([Put(service)])
    assert [h.revision for h in await store.list_service_history("svc-web")] == [5, 4, 3]
    await store.commit([Delete(Kind.SERVICE, "svc-web")])
    assert await store.list_service_history("svc-web") == []
    assert await store.list_service_history("no-such-id") == []


async def test_history_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        await store.commit([Put(written(1, "app:1", "apply", T0))])
        before = await store.list_service_history("svc-web")
    async with SqliteStore(path) as store:
        assert await store.list_service_history("svc-web") == before


def to_schema_2(path: Path) -> None:
    """Rebuilds the history table in schema 2's shape (no created_ns, change_cause, store_revision), no objects."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.executescript(
            """
            BEGIN;
            CREATE TABLE h2 (service_id TEXT NOT NULL, revision INTEGER NOT NULL, replicas INTEGER NOT NULL,
                spec_revision INTEGER NOT NULL, digest BLOB NOT NULL, PRIMARY KEY (service_id, revision))
                WITHOUT ROWID;
            INSERT INTO h2 SELECT service_id, revision, replicas, spec_revision, digest FROM service_history;
            DROP TABLE service_history;
            ALTER TABLE h2 RENAME TO service_history;
            CREATE INDEX history_by_spec ON service_history (digest);
            DROP TABLE objects;
            PRAGMA user_version = 2;
            COMMIT;
            """
        )
    conn.close()


async def test_a_schema_2_file_is_migrated_with_what_it_knows(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        await store.commit([Put(written(1, "app:1", "", T0))])
        current = written(2, "app:2", "", T0.replace(minute=7))
        await store.commit([Put(current)])
        await store.commit([Put(current)])  # the service's version moves past its revision's write
    to_schema_2(path)

    async with SqliteStore(path) as store:
        history = await store.list_service_history("svc-web")
        # The current revision takes the service's updated_at and, as its store revision, the service's
        # version (its last write: an upper bound); the older one's are unknown.
        assert [(h.revision, h.created_at, h.store_revision) for h in history] == [
            (2, T0.replace(minute=7), current.version),
            (1, None, 0),
        ]
        assert [h.spec.image for h in history] == ["app:2", "app:1"]
        third = written(3, "app:3", "apply", T0)
        revision = await store.commit([Put(third)])
        assert (await store.list_service_history("svc-web"))[0].store_revision == revision
    assert_current_schema(path)
