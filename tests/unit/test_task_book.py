"""The agent's persisted task book: persistence, merging controller copies, full sets and drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.task_book import TaskBook
from dockyard.clock import FakeClock
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
    stored = book.get("a")
    assert stored is not None
    assert book.with_spec(stored) == make_task("a")
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


# --- specs, once per revision ---------------------------------------------------------------------------


def revision_spec(service_id: str = "svc", revision: int = 1, image: str = "app:1") -> apb.ServiceRevisionSpec:
    return apb.ServiceRevisionSpec(service_id=service_id, revision=revision, spec=pb.ServiceSpec(image=image))


def bare_task(task_id: str, revision: int = 1, **kwargs: Any) -> pb.Task:
    """A task as the controller now sends it: naming its revision, without a spec."""
    task = make_task(task_id, **kwargs)
    task.revision = revision
    task.ClearField("spec")
    return task


def incremental(*tasks: pb.Task, specs: tuple[apb.ServiceRevisionSpec, ...] = ()) -> apb.Assignments:
    return apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=tasks, specs=specs)


def full_set(*tasks: pb.Task, specs: tuple[apb.ServiceRevisionSpec, ...] = ()) -> apb.Assignments:
    return apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=tasks, specs=specs)


def image_of(book: TaskBook, task_id: str) -> str | None:
    task = book.get(task_id)
    assert task is not None, task_id
    spec = book.spec_of(task)
    return None if spec is None else spec.image


def test_tasks_take_their_spec_from_the_message_and_are_kept_without_it(path: Path) -> None:
    book = TaskBook(path)
    changed = book.apply(incremental(bare_task("a"), bare_task("b"), specs=(revision_spec(image="app:1"),)))
    assert changed == {"a", "b"}
    assert image_of(book, "a") == image_of(book, "b") == "app:1"
    assert not any(t.HasField("spec") for t in book)
    a = book.get("a")
    assert a is not None
    full = book.with_spec(a)
    assert full is not None
    assert (full.id, full.spec.image) == ("a", "app:1")
    assert not a.HasField("spec"), "with_spec returns a copy"


def test_a_task_with_its_spec_inside_still_works(path: Path) -> None:
    # Controllers that predate Assignments.specs put the spec in every task.
    book = TaskBook(path)
    old_style = make_task("a")
    assert book.apply(incremental(old_style)) == {"a"}
    assert image_of(book, "a") == "dockyard-test:latest"
    stored = book.get("a")
    assert stored is not None
    assert not stored.HasField("spec")
    # The same copy again is no change, whether it carries the spec or not.
    assert not book.upsert(make_task("a"))
    assert not book.upsert(bare_task("a"))


def test_a_spec_sent_per_revision_wins_over_one_inside_the_task(path: Path) -> None:
    book = TaskBook(path)
    book.apply(incremental(make_task("a"), specs=(revision_spec(image="sent:1"),)))
    assert image_of(book, "a") == "sent:1"


def test_a_task_whose_spec_never_came_has_none(path: Path) -> None:
    book = TaskBook(path)
    book.apply(incremental(bare_task("a", revision=7)))
    a = book.get("a")
    assert a is not None
    assert book.spec_of(a) is None
    assert book.with_spec(a) is None


def test_a_spec_stays_for_the_session_after_its_last_task_is_forgotten(path: Path) -> None:
    # The controller leaves out specs it sent earlier in the session, e.g. for a replacement of a finished task.
    book = TaskBook(path)
    book.apply(incremental(bare_task("a"), specs=(revision_spec(),)))
    book.forget("a")
    book.apply(incremental(bare_task("b")))
    assert image_of(book, "b") == "app:1"


def test_a_full_set_keeps_the_specs_its_tasks_and_the_books_tasks_run_and_no_others(path: Path) -> None:
    book = TaskBook(path)
    book.apply(incremental(bare_task("old", revision=1), specs=(revision_spec(revision=1, image="app:1"),)))
    book.apply(incremental(bare_task("gone", revision=2), specs=(revision_spec(revision=2, image="app:2"),)))
    book.forget("gone")

    changed = book.apply(full_set(bare_task("new", revision=3), specs=(revision_spec(revision=3, image="app:3"),)))

    assert changed == {"new", "old"}
    assert image_of(book, "new") == "app:3"
    assert image_of(book, "old") == "app:1", "a task being shut down keeps its spec (its stop grace)"
    # Revision 2: no task runs it, and the controller starts over counting what it sent.
    book.apply(incremental(bare_task("again", revision=2)))
    assert image_of(book, "again") is None


def test_the_file_holds_each_revisions_spec_once_and_round_trips(path: Path) -> None:
    big = revision_spec(image="app:1")
    big.spec.env["BLOB"] = "x" * 100_000
    book = TaskBook(path)
    book.apply(incremental(*(bare_task(f"t{i}") for i in range(20)), specs=(big,)))
    book.apply(incremental(specs=(revision_spec(revision=9),)))  # no task runs it: not persisted
    book.save()
    assert path.stat().st_size < 2 * 100_000, "one copy of the spec, not one per task"

    again = TaskBook(path)
    again.load()
    assert len(again) == 20
    assert image_of(again, "t7") == "app:1"
    t7 = again.get("t7")
    assert t7 is not None
    spec = again.spec_of(t7)
    assert spec is not None
    assert spec.env["BLOB"] == "x" * 100_000
    again.apply(incremental(bare_task("late", revision=9)))
    assert image_of(again, "late") is None


def test_a_file_written_with_specs_inside_tasks_loads(path: Path) -> None:
    old_file = apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=[make_task("a"), make_task("b")])
    path.parent.mkdir(parents=True)
    path.write_bytes(old_file.SerializeToString())
    book = TaskBook(path)
    book.load()
    assert image_of(book, "a") == image_of(book, "b") == "dockyard-test:latest"
    assert not any(t.HasField("spec") for t in book)
    book.save()
    saved = apb.Assignments.FromString(path.read_bytes())
    assert len(saved.specs) == 1
    assert not any(t.HasField("spec") for t in saved.tasks)


def test_an_incremental_removal_drops_the_task(path: Path) -> None:
    book = TaskBook(path)
    book.apply(incremental(bare_task("a"), specs=(revision_spec(),)))
    assert book.apply(apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, removed_task_ids=["a"])) == {"a"}
    a = book.get("a")
    assert a is not None
    assert a.desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert image_of(book, "a") == "app:1"


# --- coalesced writes, in virtual time ------------------------------------------------------------------


def on_disk(path: Path) -> set[str]:
    """The ids of the tasks in the file (none when there is no file)."""
    saved = TaskBook(path)
    saved.load()
    return set(by_id(saved))


async def test_save_soon_writes_once_after_the_delay(path: Path) -> None:
    clock = FakeClock()
    book = TaskBook(path, clock=clock)
    book.upsert(make_task("a"))
    book.save_soon()
    book.upsert(make_task("b"))
    book.save_soon()
    await clock.advance(0.04)
    assert on_disk(path) == set()
    await clock.advance(0.01)
    assert on_disk(path) == {"a", "b"}


async def test_close_writes_a_pending_save_at_once(path: Path) -> None:
    clock = FakeClock()
    book = TaskBook(path, clock=clock)
    book.upsert(make_task("a"))
    book.save_soon()
    book.close()
    assert on_disk(path) == {"a"}
    await clock.advance(1)
    assert clock.sleepers == 0
