"""A damaged store file, found at open or while open, on real SQLite files; and one store per file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller.errors import StartupError, StoreDamaged
from controller.store.base import Put
from controller.store.sqlite import SqliteStore, StoreInUse
from dockyard.v1 import types_pb2 as pb

# Big enough that the tasks fill far more pages than SQLite's default page cache (about 2 MB) holds, so
# reads after an open must come from the file.
BULKY_TASKS = 40
BULKY_BYTES = 200_000


def bulky_task(i: int) -> pb.Task:
    """Returns a task whose status message fills many overflow pages."""
    t = pb.Task(id=f"t{i:03}", service_id="s1", slot=i)
    t.status.message = f"{i}".ljust(BULKY_BYTES, "x")
    return t


async def make_store(path: Path, tasks: int = BULKY_TASKS) -> None:
    """Creates a closed store file holding a service and `tasks` bulky tasks."""
    async with SqliteStore(path) as store:
        await store.commit([Put(pb.Service(id="s1", name="web", revision=1, spec=pb.ServiceSpec(name="web")))])
        for i in range(tasks):
            await store.commit([Put(bulky_task(i))])


def overwrite(path: Path, offset: int, length: int) -> None:
    """Writes `length` random bytes into the file at offset, as a failing disk or a stray write would."""
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(length))


async def open_error(path: Path) -> StartupError:
    """Opens the store expecting it to refuse; returns the error."""
    store = SqliteStore(path)
    with pytest.raises(StartupError) as caught:
        await store.open()
    return caught.value


def assert_one_line_naming(error: BaseException, path: Path, *words: str) -> str:
    """Checks the message is one line that names the file, the restore command and the words; returns it."""
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    assert f"dockyard-controller restore BACKUP --state-dir {path.parent}" in message
    assert "start a new cluster" in message
    for word in words:
        assert word in message
    return message


async def test_a_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    path.write_bytes(os.urandom(8192))
    error = await open_error(path)
    assert isinstance(error, StoreDamaged)
    assert_one_line_naming(error, path, "not a SQLite database")


async def test_a_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    path.write_text("services: {}\n")
    assert_one_line_naming(await open_error(path), path, "not a SQLite database")


@pytest.mark.parametrize("keep", ["half", "a page", "50 bytes"])
async def test_a_truncated_file_is_refused(tmp_path: Path, keep: str) -> None:
    path = tmp_path / "controller.db"
    await make_store(path, tasks=3)
    size = path.stat().st_size
    os.truncate(path, {"half": size // 2, "a page": 4096, "50 bytes": 50}[keep])
    error = await open_error(path)
    assert isinstance(error, StoreDamaged)
    assert_one_line_naming(error, path, "truncated")


async def test_damaged_pages_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    await make_store(path)
    size = path.stat().st_size
    overwrite(path, size // 2, 16384)
    error = await open_error(path)
    assert isinstance(error, StoreDamaged)
    assert_one_line_naming(error, path, "damaged")


async def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB)")
    error = await open_error(path)
    assert isinstance(error, StoreDamaged)
    assert_one_line_naming(error, path, "not a Dockyard store", "photos")
    with sqlite3.connect(path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")]
    assert tables == ["photos"], "a refused file is left as it was"


async def test_a_newer_schema_is_a_startup_error_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    await make_store(path, tasks=1)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    error = await open_error(path)
    assert not isinstance(error, StoreDamaged)
    assert "newer controller" in str(error)
    assert str(path) in str(error)


async def test_an_empty_file_becomes_a_new_store(tmp_path: Path) -> None:
    """SQLite makes a database of an empty file (a crash right after creating it leaves one)."""
    path = tmp_path / "controller.db"
    path.touch()
    async with SqliteStore(path) as store:
        assert store.revision == 0
        await store.commit([Put(pb.Task(id="t1"))])
    async with SqliteStore(path) as store:
        assert store.revision == 1


# Opens the store, commits, says so, then waits to be killed: a controller that dies without closing.
_HOLDER = """
import asyncio, sys
from controller.store.base import Put
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    await store.commit([Put(pb.Task(id="late", service_id="s1"))])
    print("committed", flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


def test_a_killed_holder_leaves_neither_damage_nor_a_lock(tmp_path: Path) -> None:
    """A WAL and a lock file left behind by a killed controller are no obstacle, and its commits are kept."""
    path = tmp_path / "controller.db"
    asyncio.run(make_store(path, tasks=2))
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == b"committed\n"
            error = asyncio.run(open_error(path))
            assert isinstance(error, StoreInUse)
            assert f"pid {holder.pid}" in str(error)
        finally:
            holder.kill()
    assert (tmp_path / "controller.db-wal").stat().st_size > 0

    async def reopen() -> None:
        async with SqliteStore(path) as store:
            assert await store.get_task("late") is not None
            assert len(await store.list_tasks()) == 3

    asyncio.run(reopen())


async def test_damage_while_open_raises_store_damaged_and_marks_the_store(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    await make_store(path)
    seen: list[StoreDamaged] = []
    async with SqliteStore(path) as store:
        store.on_damage(seen.append)
        assert store.damage is None
        size = path.stat().st_size
        overwrite(path, size // 4, size // 2)
        before = await store.list_tasks()
        # Reads come from memory; a commit that rewrites the tasks frees their damaged overflow pages.
        with pytest.raises(StoreDamaged) as caught:
            await store.commit([Put(bulky_task(i)) for i in range(BULKY_TASKS)])
        assert_one_line_naming(caught.value, path, "malformed")
        assert store.damage is not None
        assert seen == [store.damage], "the callback runs once, with the first error"
        with pytest.raises(StoreDamaged):
            await store.commit([Put(pb.Task(id="new"))])
        assert await store.list_tasks() == before, "reads go on answering what was committed"
        late: list[StoreDamaged] = []
        store.on_damage(late.append)
        assert late == [store.damage], "a callback registered after the damage is called at once"
        assert len(seen) == 1


async def test_a_row_that_does_not_decode_is_damage(tmp_path: Path) -> None:
    """SQLite cannot see damage inside a blob; decoding the object can, when open() loads every row."""
    path = tmp_path / "controller.db"
    await make_store(path, tasks=2)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tasks SET data = ? WHERE id = 't001'", (b"\x0a\xff\xff\xff\xff",))
    error = await open_error(path)
    assert isinstance(error, StoreDamaged)
    assert_one_line_naming(error, path, "does not decode")


async def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    async with SqliteStore(path):
        second = SqliteStore(path)
        with pytest.raises(StoreInUse) as caught:
            await second.open()
        message = str(caught.value)
        assert "\n" not in message
        assert str(path) in message
        assert f"pid {os.getpid()}" in message
        assert caught.value.holder == str(os.getpid())
    async with SqliteStore(path) as reopened:
        assert reopened.revision == 0


async def test_a_refused_open_lets_go_of_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "controller.db"
    path.write_bytes(os.urandom(4096))
    await open_error(path)
    path.unlink()
    async with SqliteStore(path) as store:
        assert store.revision == 0
