"""The store's named objects (networks, volumes, secrets, configs, registry credentials): puts, names unique
per kind, reads by id or name, events, persistence, the migration of a schema-3 file, and the consumers of
store events that must skip these kinds."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.api.watch import WatchFilter
from controller.orchestrator.dirty import dirty_from
from controller.scheduler.role import needs_pass
from controller.store.base import (
    NAMED_KINDS,
    Action,
    Check,
    ConflictError,
    Delete,
    Event,
    Kind,
    NamedObject,
    Put,
)
from controller.store.follow import follow_nodes
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb
from tests.store_schema import assert_current_schema

DEADLINE = 5.0


def network(oid: str, name: str, stack: str = "") -> pb.Network:
    """Returns a network record."""
    return pb.Network(id=oid, name=name, stack=stack)


def volume(oid: str, name: str, node_id: str = "") -> pb.Volume:
    """Returns a volume record, on node_id when given."""
    return pb.Volume(id=oid, name=name, node_id=node_id)


def one_of_each(suffix: str = "") -> dict[Kind, NamedObject]:
    """Returns one object of each named kind, all with the same name (names are unique per kind only)."""
    name = f"shop_x{suffix}"
    return {
        Kind.NETWORK: network(f"n{suffix}", name),
        Kind.VOLUME: volume(f"v{suffix}", name),
        Kind.SECRET: pb.Secret(id=f"s{suffix}", name=name, sealed=b"\x01sealed"),
        Kind.CONFIG: pb.Config(id=f"c{suffix}", name=name, data=b"port: 80"),
        Kind.REGISTRY: pb.RegistryCredential(server=name, username="me", sealed_password=b"\x02pw"),
    }


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    async with SqliteStore(":memory:") as s:
        yield s


async def test_every_named_kind_is_put_read_by_id_and_name_and_deleted(store: SqliteStore) -> None:
    objects = one_of_each()
    assert set(objects) == NAMED_KINDS
    revision = await store.commit([Put(obj) for obj in objects.values()])
    for kind, obj in objects.items():
        assert obj.version == revision, "the caller's object learns its version"
        oid = obj.server if isinstance(obj, pb.RegistryCredential) else obj.id
        by_id = await store.get_object(kind, oid)
        by_name = await store.get_object(kind, "shop_x")
        assert by_id == obj and by_name == obj and type(by_id) is type(obj)
        assert await store.list_objects(kind) == [obj]
    # Deleting one kind's object leaves the same name in the other kinds.
    await store.commit([Delete(Kind.VOLUME, "v", expect_version=revision)])
    assert await store.get_object(Kind.VOLUME, "shop_x") is None
    assert await store.list_objects(Kind.VOLUME) == []
    assert await store.get_object(Kind.NETWORK, "shop_x") == objects[Kind.NETWORK]


async def test_a_registry_credential_is_keyed_by_its_server(store: SqliteStore) -> None:
    first = pb.RegistryCredential(server="registry.example.com:5000", username="a")
    await store.commit([Put(first)])
    # A second put for the same server replaces it (same id), with the version check applying.
    again = pb.RegistryCredential(server="registry.example.com:5000", username="b")
    with pytest.raises(ConflictError):
        await store.commit([Put(again, expect_version=0)])
    await store.commit([Put(again, expect_version=first.version)])
    assert [c.username for c in await store.list_objects(Kind.REGISTRY)] == ["b"]  # type: ignore[union-attr]
    await store.commit([Delete(Kind.REGISTRY, "registry.example.com:5000")])
    assert await store.list_objects(Kind.REGISTRY) == []
    with pytest.raises(ValueError, match="needs an id"):
        await store.commit([Put(pb.RegistryCredential(username="nobody"))])


async def test_lists_are_ordered_by_name(store: SqliteStore) -> None:
    await store.commit([Put(volume("id-1", "zeta")), Put(volume("id-2", "alpha")), Put(volume("id-3", "mid"))])
    assert [v.name for v in await store.list_objects(Kind.VOLUME)] == ["alpha", "mid", "zeta"]  # type: ignore[union-attr]
    # A rename moves it in the order.
    await store.commit([Put(volume("id-1", "aaa"))])
    assert [v.name for v in await store.list_objects(Kind.VOLUME)] == ["aaa", "alpha", "mid"]  # type: ignore[union-attr]


async def test_a_taken_name_is_a_conflict_and_nothing_is_written(store: SqliteStore) -> None:
    await store.commit([Put(network("n1", "shop_default"))])
    before = store.revision
    with pytest.raises(ConflictError, match="network name 'shop_default' already taken"):
        await store.commit([Put(volume("v1", "data")), Put(network("n2", "shop_default"))])
    assert store.revision == before
    assert await store.list_objects(Kind.VOLUME) == []
    assert [n.id for n in await store.list_objects(Kind.NETWORK)] == ["n1"]  # type: ignore[union-attr]
    # Two new objects of one kind taking one name in a batch conflict as well.
    with pytest.raises(ConflictError):
        await store.commit([Put(volume("v1", "data")), Put(volume("v2", "data"))])
    # A batch that frees the name first may hand it to another object; so may a rename.
    await store.commit([Delete(Kind.NETWORK, "n1"), Put(network("n2", "shop_default"))])
    holder = await store.get_object(Kind.NETWORK, "shop_default")
    assert isinstance(holder, pb.Network) and holder.id == "n2"
    await store.commit([Put(network("n2", "renamed")), Put(network("n3", "shop_default"))])
    assert [n.id for n in await store.list_objects(Kind.NETWORK)] == ["n2", "n3"]  # type: ignore[union-attr]


async def test_check_and_versions_work_for_named_kinds(store: SqliteStore) -> None:
    record = volume("v1", "shop_db-data")
    await store.commit([Put(record)])
    stale = record.version
    record.node_id = "node-a"
    await store.commit([Check(Kind.VOLUME, "v1", stale), Put(record, expect_version=stale)])
    with pytest.raises(ConflictError):
        await store.commit([Check(Kind.VOLUME, "v1", stale), Put(volume("v2", "other"))])
    assert await store.get_object(Kind.VOLUME, "other") is None
    with pytest.raises(ConflictError):
        await store.commit([Delete(Kind.VOLUME, "v1", expect_version=stale)])
    found = await store.get_object(Kind.VOLUME, "v1")
    assert isinstance(found, pb.Volume) and found.node_id == "node-a"


async def test_reads_hand_out_fresh_messages(store: SqliteStore) -> None:
    await store.commit([Put(volume("v1", "data"))])
    got = await store.get_object(Kind.VOLUME, "data")
    assert isinstance(got, pb.Volume)
    got.node_id = "changed by the caller"
    again = await store.get_object(Kind.VOLUME, "data")
    assert isinstance(again, pb.Volume) and again.node_id == ""


async def test_only_named_kinds_are_read_as_objects(store: SqliteStore) -> None:
    for kind in (Kind.SERVICE, Kind.NODE, Kind.TASK):
        with pytest.raises(ValueError, match="not a kind of named object"):
            await store.get_object(kind, "x")
        with pytest.raises(ValueError, match="not a kind of named object"):
            await store.list_objects(kind)


async def test_events_of_named_kinds_are_watched(store: SqliteStore) -> None:
    events = store.watch(0)
    first = await store.commit([Put(volume("v1", "data")), Put(pb.Secret(id="s1", name="pw", sealed=b"x"))])
    second = await store.commit([Delete(Kind.VOLUME, "v1")])
    seen: list[Event] = []
    async with asyncio.timeout(DEADLINE):
        async for event in events:
            seen.append(event)
            if len(seen) == 3:
                break
    await events.aclose()
    assert [(e.revision, e.kind, e.action, e.id) for e in seen] == [
        (first, Kind.VOLUME, Action.PUT, "v1"),
        (first, Kind.SECRET, Action.PUT, "s1"),
        (second, Kind.VOLUME, Action.DELETE, "v1"),
    ]
    assert isinstance(seen[1].obj, pb.Secret) and seen[1].obj.sealed == b"x"
    assert isinstance(seen[2].obj, pb.Volume) and seen[2].obj.name == "data", "a delete carries the last value"


async def test_named_objects_survive_a_reopen_and_replay_from_the_table(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    objects = one_of_each()
    async with SqliteStore(path) as store:
        first = await store.commit([Put(obj) for obj in objects.values()])
    async with SqliteStore(path) as store:
        for kind, obj in objects.items():
            assert await store.get_object(kind, "shop_x") == obj
        # Names are held again after the load: a new id cannot take one.
        with pytest.raises(ConflictError):
            await store.commit([Put(volume("other", "shop_x"))])
        replayed = []
        async for event in store.watch(0):
            replayed.append((event.revision, event.kind))
            if len(replayed) == len(objects):
                break
        assert replayed == [(first, kind) for kind in objects]


def to_schema_3(path: Path) -> None:
    """Takes a current file back to schema 3: no objects table."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.executescript("BEGIN; DROP TABLE objects; PRAGMA user_version = 3; COMMIT;")
    conn.close()


async def test_a_schema_3_file_is_migrated_and_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    service = pb.Service(id="svc-1", name="web", revision=1, spec=pb.ServiceSpec(name="web", image="nginx:1"))
    node = pb.Node(id="node-a", description=pb.NodeDescription(hostname="h1"))
    task = pb.Task(id="t1", service_id="svc-1", node_id="node-a", slot=1)
    async with SqliteStore(path) as store:
        await store.commit([Put(service), Put(node)])
        revision = await store.commit([Put(task)])
        epoch = store.epoch
    to_schema_3(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)
    conn.close()

    async with SqliteStore(path) as store:
        assert (store.revision, store.epoch) == (revision, epoch)
        assert await store.get_service("web") == service
        assert await store.get_node("node-a") == node
        assert await store.get_task("t1") == task
        assert [h.revision for h in await store.list_service_history("svc-1")] == [1]
        assert await store.list_objects(Kind.VOLUME) == []
        record = volume("v1", "data", "node-a")
        await store.commit([Put(record)])
    async with SqliteStore(path) as store:
        assert await store.get_object(Kind.VOLUME, "data") == record
    assert_current_schema(path)


async def test_consumers_of_store_events_skip_named_kinds(store: SqliteStore) -> None:
    await store.commit([Put(pb.Secret(id="s1", name="pw")), Put(network("n1", "dockyard"))])
    events = []
    async for event in store.watch(0):
        events.append(event)
        if len(events) == 2:
            break
    # The public Watch serves services, nodes and tasks only, with or without a kind filter.
    assert not any(WatchFilter().matches(e) for e in events)
    assert not any(WatchFilter(service_ids=frozenset({"s1"})).matches(e) for e in events)
    # The orchestrator, the scheduler and the node map followers see nothing to do.
    dirty = dirty_from(events, {}, (), ())
    assert not dirty.services and not dirty.nodes
    assert not needs_pass(events, {}, {}, {"pending-task"})
    nodes: dict[str, pb.Node] = {}
    assert not any(follow_nodes(nodes, e) for e in events) and nodes == {}
