"""The agent's persisted task book: persistence, merging controller copies, full sets and drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.task_book import TaskBook
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb


def make_task(
    task_id: str,
    state: pb.TaskState.ValueType = pb.TASK_STATE_ASSIGNED,
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    version: int = 1,
    generation: int = 1,
    message: str = "",
) -> pb.Task:
    task = pb.Task(
        id=task_id,
        service_id="svc",
        service_name="web",
        slot=1,
        revision=1,
        node_id="n1",
        desired_state=desired,
        generation=generation,
        version=version,
    )
    task.spec.image = "dockyard-test:latest"
    task.status.state = state
    task.status.message = message
    return task


def status(state: pb.TaskState.ValueType, message: str = "", container_id: str = "") -> pb.TaskStatus:
    return pb.TaskStatus(state=state, message=message, container_id=container_id)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tasks.pb"


def by_id(book: TaskBook) -> dict[str, pb.Task]:
    return {t.id: t for t in book}


# --- persistence ----------------------------------------------------------------------------------------


def test_load_without_a_file_leaves_the_book_empty(path: Path) -> None:
    book = TaskBook(path)
    book.load()
    assert len(book) == 0
    assert not book.full_sync_seen


def test_save_then_load_round_trips_every_task_and_status(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.upsert(make_task("b", generation=4))
    book.set_status("a", status(pb.TASK_STATE_RUNNING, "started", "c" * 64))
    book.drop("b")
    book.save()

    again = TaskBook(path)
    again.load()
    assert by_id(again) == by_id(book)
    a = again.get("a")
    assert a is not None
    assert a.status.state == pb.TASK_STATE_RUNNING
    assert a.status.container_id == "c" * 64
    b = again.get("b")
    assert b is not None
    assert b.desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert b.generation == 4
    # Whether a full set arrived is about this process's life, not persisted.
    assert not again.full_sync_seen


def test_save_creates_the_directory_and_leaves_no_temporary_file(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.save()
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_replaces_the_previous_file(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.save()
    book.forget("a")
    book.upsert(make_task("b"))
    book.save()
    again = TaskBook(path)
    again.load()
    assert set(by_id(again)) == {"b"}


@pytest.mark.parametrize(
    "tear",
    [
        pytest.param(lambda data: data[:-3], id="truncated-inside-the-last-task"),
        pytest.param(lambda data: data[: len(data) // 2 + 1] + b"\xff\xff\xff", id="garbage-tail"),
        pytest.param(lambda data: b"\x12\xff\xff\xff\xff\x0f", id="impossible-length"),
    ],
)
def test_a_torn_file_is_ignored(path: Path, tear: Callable[[bytes], bytes]) -> None:
    book = TaskBook(path)
    for task_id in ("a", "b"):
        book.upsert(make_task(task_id, message="x" * 40))
    book.save()
    path.write_bytes(tear(path.read_bytes()))

    again = TaskBook(path)
    again.load()
    assert len(again) == 0
    # And the agent goes on: the next save writes a good file.
    again.upsert(make_task("c"))
    again.save()
    third = TaskBook(path)
    third.load()
    assert set(by_id(third)) == {"c"}


# --- upsert ---------------------------------------------------------------------------------------------


def test_upsert_adds_a_new_task_and_reports_the_change(path: Path) -> None:
    book = TaskBook(path)
    assert book.upsert(make_task("a"))
    assert book.get("a") == make_task("a")
    assert book.get("missing") is None


def test_upsert_of_an_identical_copy_is_no_change(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    assert not book.upsert(make_task("a"))


def test_upsert_stores_a_copy(path: Path) -> None:
    book = TaskBook(path)
    task = make_task("a")
    book.upsert(task)
    task.desired_state = pb.DESIRED_STATE_SHUTDOWN
    stored = book.get("a")
    assert stored is not None
    assert stored.desired_state == pb.DESIRED_STATE_RUNNING


def test_upsert_ignores_a_stale_version(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", version=5))
    stale = make_task("a", version=4, desired=pb.DESIRED_STATE_SHUTDOWN)
    assert not book.upsert(stale)
    stored = book.get("a")
    assert stored is not None
    assert stored.version == 5
    assert stored.desired_state == pb.DESIRED_STATE_RUNNING


def test_upsert_takes_a_newer_version(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", version=5))
    assert book.upsert(make_task("a", version=6, desired=pb.DESIRED_STATE_SHUTDOWN))
    stored = book.get("a")
    assert stored is not None
    assert (stored.version, stored.desired_state) == (6, pb.DESIRED_STATE_SHUTDOWN)


def test_upsert_keeps_the_agents_further_along_status(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", version=1))
    book.set_status("a", status(pb.TASK_STATE_RUNNING, "started", "cid"))
    # The controller's copy lags behind what the agent saw, but its desired state is news.
    incoming = make_task("a", state=pb.TASK_STATE_ASSIGNED, version=2, desired=pb.DESIRED_STATE_SHUTDOWN)
    assert book.upsert(incoming)
    stored = book.get("a")
    assert stored is not None
    assert stored.desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert stored.version == 2
    assert stored.status == status(pb.TASK_STATE_RUNNING, "started", "cid")


def test_upsert_of_a_lagging_copy_that_adds_nothing_is_no_change(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.set_status("a", status(pb.TASK_STATE_RUNNING, "started"))
    assert not book.upsert(make_task("a", state=pb.TASK_STATE_ASSIGNED))
    stored = book.get("a")
    assert stored is not None
    assert stored.status.state == pb.TASK_STATE_RUNNING


def test_upsert_takes_a_further_along_status_from_the_controller(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", state=pb.TASK_STATE_ASSIGNED))
    assert book.upsert(make_task("a", state=pb.TASK_STATE_RUNNING, version=2))
    stored = book.get("a")
    assert stored is not None
    assert stored.status.state == pb.TASK_STATE_RUNNING


def test_an_unversioned_copy_is_not_treated_as_stale(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", version=5))
    assert book.upsert(make_task("a", version=0, desired=pb.DESIRED_STATE_SHUTDOWN))
    stored = book.get("a")
    assert stored is not None
    assert stored.desired_state == pb.DESIRED_STATE_SHUTDOWN


# --- full sets and drops --------------------------------------------------------------------------------


def test_apply_full_upserts_drops_the_missing_and_reports_changed_ids(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("kept"))
    book.upsert(make_task("changed"))
    book.upsert(make_task("gone"))

    changed = book.apply_full(
        [make_task("kept"), make_task("changed", version=2, generation=2), make_task("new")],
    )

    assert changed == {"changed", "new", "gone"}
    assert book.full_sync_seen
    assert set(by_id(book)) == {"kept", "changed", "new", "gone"}
    gone = book.get("gone")
    assert gone is not None
    # Not forgotten: its container must be stopped first.
    assert gone.desired_state == pb.DESIRED_STATE_SHUTDOWN
    for task_id in ("kept", "changed", "new"):
        task = book.get(task_id)
        assert task is not None
        assert task.desired_state == pb.DESIRED_STATE_RUNNING


def test_apply_full_of_the_same_set_again_changes_nothing(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.upsert(make_task("gone"))
    assert book.apply_full([make_task("a")]) == {"gone"}
    assert book.apply_full([make_task("a")]) == set()


def test_an_empty_full_set_drops_everything(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.upsert(make_task("b", desired=pb.DESIRED_STATE_SHUTDOWN))
    assert book.apply_full([]) == {"a"}
    assert book.full_sync_seen
    assert all(t.desired_state == pb.DESIRED_STATE_SHUTDOWN for t in book)


def test_full_sync_seen_only_after_a_full_set(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.drop("a")
    assert not book.full_sync_seen
    book.apply_full([])
    assert book.full_sync_seen


def test_drop_marks_for_shutdown_once(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    assert book.drop("a")
    task = book.get("a")
    assert task is not None
    assert task.desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert not book.drop("a")
    assert not book.drop("unknown")
    assert book.get("unknown") is None


def test_drop_of_a_task_already_told_to_shut_down_is_no_change(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", desired=pb.DESIRED_STATE_SHUTDOWN))
    assert not book.drop("a")


# --- status, forget, inventory --------------------------------------------------------------------------


def test_set_status_records_the_agents_view_and_ignores_unknown_tasks(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.set_status("a", status(pb.TASK_STATE_PREPARING, "image ready"))
    book.set_status("unknown", status(pb.TASK_STATE_RUNNING))
    task = book.get("a")
    assert task is not None
    assert task.status == status(pb.TASK_STATE_PREPARING, "image ready")
    assert book.get("unknown") is None
    assert len(book) == 1


def test_forget_removes_the_task_and_tolerates_unknown_ids(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a"))
    book.forget("a")
    book.forget("a")
    assert book.get("a") is None
    assert len(book) == 0


def test_iteration_is_over_a_snapshot(path: Path) -> None:
    book = TaskBook(path)
    for task_id in ("a", "b", "c"):
        book.upsert(make_task(task_id))
    for task in book:
        book.forget(task.id)
    assert len(book) == 0


def test_inventory_lists_every_task_with_its_status_and_generation(path: Path) -> None:
    book = TaskBook(path)
    book.upsert(make_task("a", generation=3))
    book.upsert(make_task("b", generation=7))
    book.set_status("a", status(pb.TASK_STATE_RUNNING, "started", "cid-a"))
    book.drop("b")

    items = sorted(book.inventory(), key=lambda item: item.task_id)

    assert items == [
        apb.InventoryItem(task_id="a", status=status(pb.TASK_STATE_RUNNING, "started", "cid-a"), generation=3),
        apb.InventoryItem(task_id="b", status=status(pb.TASK_STATE_ASSIGNED), generation=7),
    ]


def test_inventory_of_an_empty_book_is_empty(path: Path) -> None:
    assert TaskBook(path).inventory() == []
