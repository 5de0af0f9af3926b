"""Online backup and checked restore of the SQLite store, on real files, with a writer running."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller.store.base import Delete, Kind, Put
from controller.store.sqlite import BackupError, SqliteStore, backup_file, restore_file
from dockyard.v1 import types_pb2 as pb
from tests.unit.test_store_damage import overwrite

ROOT = Path(__file__).parents[2]


def names(directory: Path) -> list[str]:
    """Returns the names in a directory, sorted."""
    return sorted(p.name for p in directory.iterdir())


def scratch_files(directory: Path) -> list[str]:
    """Returns the names of a backup's scratch files left in a directory."""
    return [name for name in names(directory) if name.endswith(".partial")]


def service(sid: str, name: str, replicas: int = 2) -> pb.Service:
    """Returns a service with a small spec."""
    spec = pb.ServiceSpec(name=name, image="nginx:1", replicas=replicas)
    return pb.Service(id=sid, name=name, revision=1, spec=spec)


async def contents(path: Path) -> tuple[int, list[pb.Service], list[pb.Task], list[pb.Node]]:
    """Opens a store file and returns its revision and every object."""
    async with SqliteStore(path) as store:
        return store.revision, await store.list_services(), await store.list_tasks(), await store.list_nodes()


async def populated(path: Path) -> None:
    """Creates a closed store with two services, their tasks and a node."""
    async with SqliteStore(path) as store:
        await store.commit([Put(service("s1", "web")), Put(service("s2", "db", 1))])
        await store.commit([Put(pb.Node(id="n1", description=pb.NodeDescription(hostname="h1")))])
        await store.commit(
            [
                Put(pb.Task(id="t1", service_id="s1", slot=1, node_id="n1")),
                Put(pb.Task(id="t2", service_id="s1", slot=2)),
                Put(pb.Task(id="t3", service_id="s2", slot=1)),
            ]
        )


async def test_backups_taken_during_writes_are_each_one_whole_revision(tmp_path: Path) -> None:
    """Every commit adds task i at revision i, so a consistent copy at revision r holds exactly tasks 1..r."""
    db = tmp_path / "controller.db"
    done = asyncio.Event()
    async with SqliteStore(db) as store:
        await store.commit([Put(pb.Task(id="t00001", service_id="s1", slot=1))])

        async def writer() -> int:
            i = 1
            while not done.is_set() or i < 50:
                i += 1
                await store.commit([Put(pb.Task(id=f"t{i:05}", service_id="s1", slot=i))])
            return i

        writing = asyncio.create_task(writer())
        revisions = []
        try:
            for n in range(5):
                copy = tmp_path / f"backup-{n}.db"
                summary = await asyncio.to_thread(backup_file, db, copy)
                revisions.append(summary.revision)
                revision, _, tasks, _ = await contents(copy)
                assert revision == summary.revision
                assert [t.id for t in tasks] == [f"t{i:05}" for i in range(1, revision + 1)]
                assert all(t.version <= revision for t in tasks)
        finally:
            done.set()
            last = await writing
    assert revisions == sorted(revisions)
    assert any(0 < r < last for r in revisions), "at least one backup was taken while the writer ran"
    assert not scratch_files(tmp_path), "no scratch files are left"


async def test_a_backup_is_one_self_contained_file(tmp_path: Path) -> None:
    db = tmp_path / "state" / "controller.db"
    db.parent.mkdir()
    await populated(db)
    async with SqliteStore(db):
        backup_file(db, tmp_path / "b.db")
    assert not (tmp_path / "b.db-wal").exists()
    moved = tmp_path / "elsewhere" / "b.db"
    moved.parent.mkdir()
    shutil.copyfile(tmp_path / "b.db", moved)
    assert await contents(moved) == await contents(db)


async def test_restore_round_trip_keeps_the_replaced_store_aside(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    await populated(db)
    before = await contents(db)
    summary = backup_file(db, tmp_path / "backup.db")
    assert (summary.revision, summary.services, summary.nodes, summary.tasks) == (3, 2, 1, 3)
    async with SqliteStore(db) as store:
        await store.commit([Delete(Kind.SERVICE, "s2"), Delete(Kind.TASK, "t3")])
        await store.commit([Put(pb.Task(id="t4", service_id="s1", slot=3))])
    after_changes = await contents(db)

    restored, aside = restore_file(tmp_path / "backup.db", db)

    assert restored == summary
    assert await contents(db) == before
    assert aside is not None
    assert aside.parent == tmp_path
    assert aside.name.startswith("controller.db.") and aside.name.endswith(".bak")
    assert await contents(aside) == after_changes
    async with SqliteStore(db) as store:
        await store.commit([Put(pb.Task(id="t5", service_id="s1", slot=4))])
        assert store.revision == 4, "the restored store goes on from the backup's revision"


def test_restore_keeps_the_commits_in_a_killed_controllers_wal(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    asyncio.run(populated(db))
    backup_file(db, tmp_path / "backup.db")
    holder = "\n".join(
        [
            "import asyncio, os, sys",
            "from controller.store.base import Put",
            "from controller.store.sqlite import SqliteStore",
            "from dockyard.v1 import types_pb2 as pb",
            "async def main():",
            "    store = SqliteStore(sys.argv[1])",
            "    await store.open()",
            "    await store.commit([Put(pb.Task(id='late', service_id='s1'))])",
            "    os._exit(9)",
            "asyncio.run(main())",
        ]
    )
    subprocess.run([sys.executable, "-c", holder, str(db)], cwd=ROOT, check=False)
    assert (tmp_path / "controller.db-wal").stat().st_size > 0

    _, aside = restore_file(tmp_path / "backup.db", db)

    assert aside is not None
    assert not (tmp_path / "controller.db-wal").exists()
    assert not (tmp_path / "controller.db-shm").exists()
    _, _, tasks, _ = asyncio.run(contents(aside))
    assert "late" in {t.id for t in tasks}, "the replaced store keeps its WAL under its new name"
    _, _, tasks, _ = asyncio.run(contents(db))
    assert "late" not in {t.id for t in tasks}


async def test_restore_is_refused_while_the_store_is_open(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    await populated(db)
    backup_file(db, tmp_path / "backup.db")
    async with SqliteStore(db):
        with pytest.raises(BackupError, match=f"in use by pid {os.getpid()}") as caught:
            restore_file(tmp_path / "backup.db", db)
    assert "stop the controller" in str(caught.value)
    assert [name for name in names(tmp_path) if ".bak" in name] == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "empty"])
async def test_restore_refuses_an_unsound_backup_and_changes_nothing(tmp_path: Path, damage: str) -> None:
    db = tmp_path / "controller.db"
    await populated(db)
    before = await contents(db)
    bad = tmp_path / "bad.db"
    if damage == "garbage":
        bad.write_bytes(os.urandom(10000))
    elif damage == "truncated":
        backup_file(db, bad)
        os.truncate(bad, bad.stat().st_size // 2)
    elif damage == "foreign":
        with sqlite3.connect(bad) as conn:
            conn.execute("CREATE TABLE t (x)")
    else:
        bad.write_bytes(b"")
    with pytest.raises(BackupError) as caught:
        restore_file(bad, db)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot restore: ")
    assert str(bad) in message
    assert await contents(db) == before
    assert names(tmp_path) == ["bad.db", "controller.db", "controller.db.lock"]


async def test_restore_into_an_empty_state_dir(tmp_path: Path) -> None:
    db = tmp_path / "old" / "controller.db"
    db.parent.mkdir()
    await populated(db)
    backup_file(db, tmp_path / "backup.db")
    fresh = tmp_path / "new" / "controller.db"
    summary, aside = restore_file(tmp_path / "backup.db", fresh)
    assert aside is None
    assert summary.tasks == 3
    assert await contents(fresh) == await contents(db)


async def test_backup_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    await populated(db)
    target = tmp_path / "backup.db"
    target.write_text("precious")
    with pytest.raises(BackupError, match="exists; use --force"):
        backup_file(db, target)
    assert target.read_text() == "precious"
    backup_file(db, target, force=True)
    assert (await contents(target))[0] == 3


async def test_backup_of_a_damaged_store_fails_and_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "controller.db"
    async with SqliteStore(db) as store:
        for i in range(30):
            task = pb.Task(id=f"t{i}", service_id="s1", slot=i)
            task.status.message = "x" * 100_000
            await store.commit([Put(task)])
    overwrite(db, db.stat().st_size // 2, 65536)
    with pytest.raises(BackupError, match="damaged") as caught:
        backup_file(db, tmp_path / "backup.db")
    assert str(db) in str(caught.value)
    assert "restore a backup" not in str(caught.value)
    assert not (tmp_path / "backup.db").exists()
    assert not scratch_files(tmp_path)


def test_backup_needs_a_store(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no store at"):
        backup_file(tmp_path / "controller.db", tmp_path / "backup.db")
    with pytest.raises(BackupError, match="no file at"):
        restore_file(tmp_path / "backup.db", tmp_path / "controller.db")
