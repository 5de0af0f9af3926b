"""The agent's task loops against the in-memory FakeRuntime: convergence, failures, shutdown and adoption.

Everything runs in virtual time (FakeClock): retries, backoff and the book's coalesced writes happen when
the test moves the clock, so no test waits for a real delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog.testing

from agent.container_spec import container_spec
from agent.observer import Observer
from agent.reporter import Reporter
from agent.runtime.base import ContainerSpec, ContainerState, DaemonShuttingDown, HealthConfig, HealthStatus
from agent.runtime.fake import FakeRuntime
from agent.task_book import TaskBook
from agent.worker import Worker
from dockyard import labels
from dockyard.clock import FakeClock
from dockyard.timestamps import duration, to_timestamp
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

NODE = "n1"
IMAGE = "dockyard-test:latest"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
WITHIN = 60.0  # virtual seconds: longer than any backoff the worker or the observer uses
STEP = 0.05  # virtual seconds the clock moves between two looks


class RecordingReporter(Reporter):
    """A Reporter that also keeps every status it was given, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[str, pb.TaskStatus]] = []

    def report(self, task_id: str, status: pb.TaskStatus) -> None:
        copy = pb.TaskStatus()
        copy.CopyFrom(status)
        self.history.append((task_id, copy))
        super().report(task_id, status)

    def states(self, task_id: str) -> list[int]:
        return [s.state for t, s in self.history if t == task_id]


@dataclass
class Rig:
    fake: FakeRuntime
    book: TaskBook
    reporter: RecordingReporter
    worker: Worker
    path: Path
    clock: FakeClock

    def assign(self, task: pb.Task, specs: Iterable[apb.ServiceRevisionSpec] = ()) -> None:
        """Does what the controller link does with an incremental assignment."""
        assignments = apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=[task], specs=specs)
        if self.book.apply(assignments):
            self.book.save()
            self.worker.wake([task.id])

    def state(self, task_id: str) -> int | None:
        task = self.book.get(task_id)
        return None if task is None else task.status.state

    def status(self, task_id: str) -> pb.TaskStatus:
        task = self.book.get(task_id)
        assert task is not None, f"{task_id} is not in the book"
        return task.status

    async def eventually(self, condition: Callable[[], bool], what: str, within: float = WITHIN) -> None:
        """Lets the loops run, moving virtual time on only when they are stuck, until the condition holds."""
        deadline = self.clock.monotonic() + within
        while True:
            await self.clock.advance(0)  # whatever needs no time happens at the current instant
            if condition():
                return
            if self.clock.monotonic() >= deadline:
                raise AssertionError(f"timed out after {within} virtual seconds waiting for {what}")
            await self.clock.advance(STEP)

    async def quiet(self, period: float = 1.0) -> None:
        """Moves virtual time on until no runtime call has been made for `period` virtual seconds."""
        deadline = self.clock.monotonic() + WITHIN
        seen, since = len(self.fake.calls), self.clock.monotonic()
        while self.clock.monotonic() - since < period:
            if self.clock.monotonic() > deadline:
                raise AssertionError("the worker never went quiet")
            await self.clock.advance(STEP)
            if len(self.fake.calls) != seen:
                seen, since = len(self.fake.calls), self.clock.monotonic()


def make_task(
    task_id: str = "t1",
    image: str = IMAGE,
    command: tuple[str, ...] = (),
    desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING,
    version: int = 1,
    slot: int = 1,
) -> pb.Task:
    """A task as an older controller sent it: with its spec inside."""
    task = pb.Task(
        id=task_id,
        service_id="svc1",
        service_name="web",
        slot=slot,
        revision=1,
        node_id=NODE,
        desired_state=desired,
        generation=1,
        version=version,
    )
    task.spec.name = "web"
    task.spec.image = image
    task.spec.command.extend(command)
    task.status.state = pb.TASK_STATE_ASSIGNED
    return task


def bare(task: pb.Task) -> tuple[pb.Task, apb.ServiceRevisionSpec]:
    """Splits a task as the controller now sends it: the task without its spec, and the revision's spec."""
    spec = apb.ServiceRevisionSpec(service_id=task.service_id, revision=task.revision, spec=task.spec)
    without = pb.Task()
    without.CopyFrom(task)
    without.ClearField("spec")
    return without, spec


def shutdown_of(task: pb.Task) -> pb.Task:
    """The controller's next copy of a task, told to shut down."""
    changed = pb.Task()
    changed.CopyFrom(task)
    changed.desired_state = pb.DESIRED_STATE_SHUTDOWN
    changed.version = task.version + 1
    return changed


def make_rig(
    tmp_path: Path, fake: FakeRuntime | None = None, book: TaskBook | None = None, clock: FakeClock | None = None
) -> Rig:
    clock = clock or FakeClock(NOW)
    fake = fake or FakeRuntime(images=[IMAGE], clock=clock.now)
    path = tmp_path / "tasks.pb"
    book = book or TaskBook(path, clock=clock)
    reporter = RecordingReporter()
    return Rig(fake, book, reporter, Worker(fake, book, reporter, NODE, clock=clock), path, clock)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = make_rig(tmp_path)
    try:
        yield made
    finally:
        await made.worker.close()


async def run_to_running(rig: Rig, task: pb.Task) -> str:
    """Assigns the task, waits until it runs and returns its container id."""
    rig.assign(task)
    await rig.eventually(lambda: rig.state(task.id) == pb.TASK_STATE_RUNNING, f"{task.id} running")
    return rig.status(task.id).container_id


# --- convergence ----------------------------------------------------------------------------------------


async def test_a_task_goes_preparing_starting_running_with_one_create_and_one_start(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    await rig.quiet()

    assert rig.reporter.states("t1") == [pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING]
    assert [s.message for _, s in rig.reporter.history] == ["image ready", "container created", "started"]
    assert rig.fake.count("create") == 1
    assert rig.fake.count("start") == 1
    assert rig.fake.count("pull") == 0
    [info] = await rig.fake.list({})
    assert info.id == container_id
    assert info.state is ContainerState.RUNNING
    assert info.name == "web.1.t1"
    assert info.labels[labels.TASK_ID] == "t1"
    assert info.labels[labels.NODE_ID] == NODE
    status = rig.status("t1")
    assert status.timestamp == to_timestamp(NOW)
    assert not status.error
    assert rig.worker.known_containers["t1"] == info


async def test_the_reporter_hands_over_the_latest_status_only(rig: Rig) -> None:
    await run_to_running(rig, make_task())
    update = await asyncio.wait_for(rig.reporter.take(), 1)
    assert [(u.task_id, u.status.state) for u in update.updates] == [("t1", pb.TASK_STATE_RUNNING)]


async def test_the_book_is_persisted_shortly_after_every_transition(rig: Rig) -> None:
    await run_to_running(rig, make_task())

    def saved_state() -> int:
        saved = TaskBook(rig.path)
        saved.load()
        task = saved.get("t1")
        return task.status.state if task is not None and task.status.container_id else 0

    # Writes are coalesced for 50 ms, so a burst of transitions costs one write.
    await rig.eventually(lambda: saved_state() == pb.TASK_STATE_RUNNING, "the running state on disk")


async def test_waking_a_converged_task_does_nothing_more(rig: Rig) -> None:
    await run_to_running(rig, make_task())
    await rig.quiet()
    reports = len(rig.reporter.history)
    rig.worker.wake(["t1"], stale=True)
    rig.worker.wake(["t1"])
    await rig.quiet()
    assert len(rig.reporter.history) == reports
    assert (rig.fake.count("create"), rig.fake.count("start")) == (1, 1)


async def test_several_tasks_converge_side_by_side(rig: Rig) -> None:
    tasks = [make_task(f"t{i}", slot=i) for i in range(1, 5)]
    for task in tasks:
        rig.assign(task)
    await rig.eventually(
        lambda: all(rig.state(t.id) == pb.TASK_STATE_RUNNING for t in tasks),
        "every task running",
    )
    await rig.quiet()
    assert rig.fake.count("create") == 4
    assert rig.fake.count("start") == 4
    assert len({rig.status(t.id).container_id for t in tasks}) == 4


async def test_an_image_that_is_not_here_is_pulled(tmp_path: Path) -> None:
    fake = FakeRuntime(images=[IMAGE], pullable=["registry.example.com/app:2"])
    rig = make_rig(tmp_path, fake)
    try:
        await run_to_running(rig, make_task(image="registry.example.com/app:2"))
        assert fake.count("pull") == 1
    finally:
        await rig.worker.close()


# --- failures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill", "exit_code", "error"),
    [
        pytest.param(lambda f, c: f.crash(c, 3), 3, "exited with code 3", id="crash"),
        pytest.param(lambda f, c: f.kill_behind_back(c), 137, "exited with code 137", id="killed"),
        pytest.param(
            lambda f, c: f.oom_kill(c), 137, "killed for running out of memory (exit code 137)", id="out-of-memory"
        ),
    ],
)
async def test_a_container_that_dies_reports_failed_with_its_exit_code(
    rig: Rig, kill: Callable[[FakeRuntime, str], None], exit_code: int, error: str
) -> None:
    container_id = await run_to_running(rig, make_task())
    kill(rig.fake, container_id)
    rig.worker.wake(["t1"], stale=True)  # as the observer does on the container's events

    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    await rig.quiet()
    status = rig.status("t1")
    assert (status.exit_code, status.error, status.container_id) == (exit_code, error, container_id)
    assert rig.reporter.states("t1")[-1] == pb.TASK_STATE_FAILED
    # A stopped task is never revived: the controller replaces it.
    assert (rig.fake.count("create"), rig.fake.count("start")) == (1, 1)


async def test_an_exit_with_code_zero_reports_complete(rig: Rig) -> None:
    rig.assign(make_task(command=("sh", "-c", "exit 0")))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_COMPLETE, "t1 complete")
    status = rig.status("t1")
    assert (status.exit_code, status.message, status.error) == (0, "exited with code 0", "")


async def test_a_container_removed_behind_the_agents_back_reports_failed(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    rig.fake.remove_behind_back(container_id)
    rig.worker.wake(["t1"], stale=True)

    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    await rig.quiet()
    status = rig.status("t1")
    assert "removed outside" in status.error
    assert status.container_id == container_id
    assert rig.fake.count("create") == 1
    assert await rig.fake.list({}) == []


async def test_a_missing_image_reports_rejected_with_a_reason(rig: Rig) -> None:
    rig.assign(make_task(image="nowhere.example.com/missing:1"))

    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    await rig.quiet()
    status = rig.status("t1")
    assert "nowhere.example.com/missing:1" in status.error
    assert "could not be pulled" in status.error
    assert rig.reporter.states("t1") == [pb.TASK_STATE_REJECTED]
    assert rig.fake.count("pull") == 1
    assert rig.fake.count("create") == 0


async def test_a_program_that_cannot_start_reports_failed(rig: Rig) -> None:
    rig.assign(make_task(command=("/nonexistent/app",)))

    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    await rig.quiet()
    status = rig.status("t1")
    assert status.error.startswith("start failed: ")
    assert "/nonexistent/app" in status.error
    assert rig.fake.count("start") == 1


async def test_a_name_taken_by_a_stranger_reports_rejected(rig: Rig) -> None:
    task = make_task()
    await rig.fake.create(ContainerSpec(name="web.1.t1", image=IMAGE))  # no Dockyard labels

    rig.assign(task)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    assert "'web.1.t1' is taken by another container" in rig.status("t1").error
    assert len(await rig.fake.list({})) == 1


class RacingRuntime(FakeRuntime):
    """Creates the task's container itself just before the worker does, as a racing agent process would."""

    def __init__(self, sneak: ContainerSpec) -> None:
        super().__init__(images=[IMAGE])
        self.sneak: ContainerSpec | None = sneak

    async def has_image(self, image: str) -> bool:
        if self.sneak is not None:
            spec, self.sneak = self.sneak, None
            await self.create(spec)
        return await super().has_image(image)


async def test_a_name_conflict_with_our_own_container_adopts_it(tmp_path: Path) -> None:
    task = make_task()
    rig = make_rig(tmp_path, RacingRuntime(container_spec(task, NODE)))
    try:
        container_id = await run_to_running(rig, task)
        await rig.quiet()
        [info] = await rig.fake.list({})
        assert info.id == container_id
        assert rig.fake.count("start") == 1
    finally:
        await rig.worker.close()


# --- specs sent once per revision -----------------------------------------------------------------------


class CreateRecorder(FakeRuntime):
    """Keeps the spec of every container created."""

    def __init__(self) -> None:
        super().__init__(images=[IMAGE])
        self.created: list[ContainerSpec] = []

    async def create(self, spec: ContainerSpec) -> str:
        self.created.append(spec)
        return await super().create(spec)


async def test_a_task_sent_without_its_spec_runs_the_spec_sent_for_its_revision(tmp_path: Path) -> None:
    fake = CreateRecorder()
    rig = make_rig(tmp_path, fake)
    full = make_task(command=("sleep", "60"))
    full.spec.env["MODE"] = "bare"
    task, spec = bare(full)
    try:
        rig.assign(task, [spec])
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    finally:
        await rig.worker.close()

    [created] = fake.created
    assert (created.image, created.command, created.env) == (IMAGE, ("sleep", "60"), {"MODE": "bare"})
    stored = rig.book.get("t1")
    assert stored is not None
    assert not stored.HasField("spec"), "the book keeps one spec per revision, none inside tasks"


async def test_a_later_task_of_a_revision_already_sent_needs_no_spec(rig: Rig) -> None:
    first, spec = bare(make_task("t1", slot=1))
    second, _ = bare(make_task("t2", slot=2))
    rig.assign(first, [spec])
    rig.assign(second)  # the controller leaves out a spec it sent earlier in the session
    await rig.eventually(lambda: rig.state("t1") == rig.state("t2") == pb.TASK_STATE_RUNNING, "both tasks running")
    assert rig.fake.count("create") == 2


async def test_a_task_whose_spec_never_came_is_rejected_and_not_started(rig: Rig) -> None:
    task, _ = bare(make_task())
    rig.assign(task)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    await rig.quiet()

    error = rig.status("t1").error
    assert "no spec" in error
    assert "'web' revision 1" in error
    assert rig.reporter.states("t1") == [pb.TASK_STATE_REJECTED]
    assert rig.fake.calls == [], "nothing pulled, created or started"


async def test_a_running_task_whose_spec_is_unknown_still_shuts_down(rig: Rig) -> None:
    # A container the agent adopted for a task it knows only by its id and revision, e.g. after its spec
    # was lost: it stops with the default grace rather than staying.
    full = make_task()
    container_id = await rig.fake.create(container_spec(full, NODE))
    await rig.fake.start(container_id)
    task, _ = bare(full)
    task.status.state = pb.TASK_STATE_RUNNING
    task.status.container_id = container_id
    rig.assign(shutdown_of(task))
    await rig.eventually(lambda: rig.book.get("t1") is None, "t1 forgotten")
    assert ("stop", container_id, "10") in rig.fake.calls
    assert await rig.fake.list({}) == []


# --- shutdown -------------------------------------------------------------------------------------------


async def test_desired_shutdown_stops_removes_reports_shutdown_and_forgets(rig: Rig) -> None:
    task = make_task()
    task.spec.stop_grace_period.CopyFrom(duration(3))
    container_id = await run_to_running(rig, task)

    rig.assign(shutdown_of(task))
    await rig.eventually(lambda: rig.book.get("t1") is None, "t1 forgotten")
    await rig.quiet()

    final_id, final = rig.reporter.history[-1]
    assert final_id == "t1"
    assert (final.state, final.message, final.container_id) == (
        pb.TASK_STATE_SHUTDOWN,
        "stopped and removed",
        container_id,
    )
    assert ("stop", container_id, "3") in rig.fake.calls
    assert rig.fake.count("stop") == 1
    assert rig.fake.count("remove") == 1
    assert await rig.fake.list({}) == []
    assert "t1" not in rig.worker.known_containers
    saved = TaskBook(rig.path)
    saved.load()
    assert saved.get("t1") is None


async def test_a_dropped_task_is_shut_down_like_one_told_to(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    assert rig.book.drop("t1")
    rig.worker.wake(["t1"])
    await rig.eventually(lambda: rig.book.get("t1") is None, "t1 forgotten")
    assert rig.reporter.history[-1][1].state == pb.TASK_STATE_SHUTDOWN
    assert rig.fake.count("remove") == 1
    assert ("stop", container_id, "10") in rig.fake.calls


async def test_shutdown_before_any_container_reports_shutdown_without_creating(rig: Rig) -> None:
    rig.assign(make_task(desired=pb.DESIRED_STATE_SHUTDOWN))
    await rig.eventually(lambda: rig.book.get("t1") is None, "t1 forgotten")
    assert rig.reporter.states("t1") == [pb.TASK_STATE_SHUTDOWN]
    assert rig.fake.count("create") == 0


async def test_shutdown_of_a_failed_task_removes_its_container_and_keeps_failed(rig: Rig) -> None:
    task = make_task()
    container_id = await run_to_running(rig, task)
    rig.fake.crash(container_id, 1)
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")

    rig.assign(shutdown_of(task))
    await rig.eventually(lambda: rig.book.get("t1") is None, "t1 forgotten")
    assert rig.reporter.states("t1")[-1] == pb.TASK_STATE_FAILED
    assert rig.fake.count("stop") == 0
    assert rig.fake.count("remove") == 1


async def test_close_leaves_containers_running(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    await rig.worker.close()
    info = await rig.fake.inspect(container_id)
    assert info.state is ContainerState.RUNNING


# --- an unavailable runtime -----------------------------------------------------------------------------


async def test_an_unavailable_runtime_is_retried_and_the_task_converges_without_duplicates(rig: Rig) -> None:
    rig.fake.set_available(False)
    rig.assign(make_task())
    await rig.clock.advance(10)  # several retries against the dead daemon, backing off
    assert rig.reporter.history == []
    assert rig.fake.calls == []
    assert rig.clock.sleepers == 1, "the task loop waits to retry"

    rig.fake.set_available(True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    await rig.quiet()
    assert rig.reporter.states("t1") == [pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING]
    assert (rig.fake.count("create"), rig.fake.count("start")) == (1, 1)


async def test_a_running_task_survives_an_outage_untouched(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    reports = len(rig.reporter.history)
    looks = rig.fake.count("inspect")
    rig.fake.set_available(False)
    rig.worker.wake(["t1"], stale=True)
    await rig.clock.advance(2)
    rig.fake.set_available(True)
    await rig.eventually(lambda: rig.fake.count("inspect") > looks, "a successful look after the outage")
    await rig.quiet()
    assert len(rig.reporter.history) == reports
    assert rig.state("t1") == pb.TASK_STATE_RUNNING
    assert (await rig.fake.inspect(container_id)).state is ContainerState.RUNNING


class DownAfterCreate(FakeRuntime):
    """Goes down right after serving the first create, before the worker can look at the container."""

    def __init__(self) -> None:
        super().__init__(images=[IMAGE])
        self.went_down = asyncio.Event()

    async def create(self, spec: ContainerSpec) -> str:
        container_id = await super().create(spec)
        if not self.went_down.is_set():
            self.set_available(False)
            self.went_down.set()
        return container_id


async def test_an_outage_right_after_create_does_not_create_twice(tmp_path: Path) -> None:
    fake = DownAfterCreate()
    rig = make_rig(tmp_path, fake)
    try:
        rig.assign(make_task())
        await rig.eventually(fake.went_down.is_set, "the daemon going down after the create")
        await rig.clock.advance(1)
        fake.set_available(True)
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
        await rig.quiet()
        assert (fake.count("create"), fake.count("start")) == (1, 1)
        assert len(await fake.list({})) == 1
    finally:
        await rig.worker.close()


# --- adoption -------------------------------------------------------------------------------------------


async def test_a_second_worker_adopts_the_running_container(rig: Rig) -> None:
    container_id = await run_to_running(rig, make_task())
    await rig.worker.close()

    reporter = RecordingReporter()
    second = Worker(rig.fake, rig.book, reporter, NODE, clock=rig.clock)
    try:
        second.wake([t.id for t in rig.book], stale=True)
        await rig.eventually(lambda: "t1" in second.known_containers, "the second worker looked")
        await rig.quiet()
        info = second.known_containers["t1"]
        assert info is not None
        assert info.id == container_id
        assert reporter.history == []  # nothing new to say
        assert (rig.fake.count("create"), rig.fake.count("start")) == (1, 1)
    finally:
        await second.close()


async def test_a_restarted_agent_with_a_reloaded_book_adopts_and_reports_what_it_finds(rig: Rig) -> None:
    task = make_task()
    container_id = await run_to_running(rig, task)
    await rig.worker.close()
    # The agent died before it could record the last transitions.
    reloaded = TaskBook(rig.path, clock=rig.clock)
    reloaded.load()
    reloaded.set_status("t1", pb.TaskStatus(state=pb.TASK_STATE_PREPARING))

    reporter = RecordingReporter()
    second = Worker(rig.fake, reloaded, reporter, NODE, clock=rig.clock)
    try:
        second.wake(["t1"], stale=True)
        await rig.eventually(lambda: reporter.states("t1") == [pb.TASK_STATE_RUNNING], "t1 reported running")
        await rig.quiet()
        assert reporter.history[0][1].container_id == container_id
        assert (rig.fake.count("create"), rig.fake.count("start")) == (1, 1)
    finally:
        await second.close()


async def test_a_created_but_never_started_container_is_adopted_and_started(rig: Rig) -> None:
    task = make_task()
    task.status.state = pb.TASK_STATE_PREPARING
    # Left by an agent that crashed between create and start.
    container_id = await rig.fake.create(container_spec(task, NODE))

    rig.assign(task)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    await rig.quiet()
    assert rig.status("t1").container_id == container_id
    # The agent does not look before creating a task it was never told it created: the create meets
    # the name conflict and adopts the container instead of making a second one.
    assert rig.reporter.states("t1") == [pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING]
    assert [c.id for c in await rig.fake.list({})] == [container_id]
    assert rig.fake.count("start") == 1


# --- with the observer that wakes it --------------------------------------------------------------------


def observer_of(rig: Rig, stranger_grace: float = 60.0) -> Observer:
    return Observer(
        rig.fake, rig.book, rig.worker, NODE, relist_period=30.0, stranger_grace=stranger_grace, clock=rig.clock
    )


async def test_the_observer_wakes_the_worker_when_a_container_dies(rig: Rig) -> None:
    observer = observer_of(rig)
    watching = asyncio.create_task(observer.run())
    try:
        container_id = await run_to_running(rig, make_task())
        rig.fake.crash(container_id, 2)  # no explicit wake: the die event must do it
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
        assert rig.status("t1").exit_code == 2
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_the_observer_survives_a_docker_outage(rig: Rig) -> None:
    # Regression: the re-list after a broken event stream once ran outside the try, so an outage ended
    # Observer.run() and with it Agent.run().
    observer = observer_of(rig)
    watching = asyncio.create_task(observer.run())
    try:
        container_id = await run_to_running(rig, make_task())
        rig.fake.set_available(False)
        await rig.clock.advance(10)  # the event stream fails and is retried with backoff, and so does the re-list
        rig.fake.set_available(True)
        await rig.clock.advance(6)  # longer than the observer's backoff cap
        assert not watching.done(), f"the observer ended: {watching.exception()!r}"
        # And it still delivers events once Docker is back.
        rig.fake.crash(container_id, 2)
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_a_stranger_is_reaped_once_it_outlived_the_grace_after_a_full_set(rig: Rig) -> None:
    observer = observer_of(rig, stranger_grace=30.0)
    stranger = await rig.fake.create(
        ContainerSpec(
            name="leftover",
            image=IMAGE,
            labels={labels.MANAGED: "true", labels.NODE_ID: NODE, labels.TASK_ID: "no-such-task"},
        )
    )
    await observer.relist()  # first seen now
    await rig.clock.advance(40)
    await observer.relist()
    assert [c.id for c in await rig.fake.list({})] == [stranger], "kept until the controller's full set came"

    rig.book.apply_full([])
    await observer.relist()  # the grace counts from when it was first seen, 40 s ago
    assert await rig.fake.list({}) == []


async def test_a_stranger_seen_for_less_than_the_grace_stays(rig: Rig) -> None:
    observer = observer_of(rig, stranger_grace=30.0)
    rig.book.apply_full([])
    labels_ = {labels.MANAGED: "true", labels.NODE_ID: NODE, labels.TASK_ID: "no-such-task"}
    stranger = await rig.fake.create(ContainerSpec(name="leftover", image=IMAGE, labels=labels_))
    await observer.relist()
    await rig.clock.advance(29)
    await observer.relist()
    assert [c.id for c in await rig.fake.list({})] == [stranger]
    await rig.clock.advance(1)
    await observer.relist()
    assert await rig.fake.list({}) == []


# --- health ---------------------------------------------------------------------------------------------

WAITING = "waiting to be healthy"


def checked_task(check: pb.HealthCheck, task_id: str = "t1") -> pb.Task:
    """A long-running task with a health check."""
    task = make_task(task_id, command=("sh", "-c", "serve"))
    task.spec.healthcheck.CopyFrom(check)
    return task


def health_of(rig: Rig, task_id: str = "t1") -> tuple[int, int, str]:
    health = rig.status(task_id).health
    return health.state, health.failing_streak, health.output


async def test_a_passing_docker_check_makes_the_task_running_with_its_health(rig: Rig) -> None:
    await run_to_running(rig, checked_task(pb.HealthCheck(test=["CMD-SHELL", "echo fine; exit 0"])))
    assert rig.reporter.states("t1") == [pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING]
    assert health_of(rig) == (pb.TaskHealth.STATE_HEALTHY, 0, "fine\n")
    spec = (await rig.fake.inspect(rig.status("t1").container_id)).labels  # the container exists
    assert spec


async def test_a_failing_docker_check_stops_the_container_and_fails_the_task_as_unhealthy(rig: Rig) -> None:
    rig.assign(checked_task(pb.HealthCheck(test=["CMD-SHELL", "echo sick; exit 1"], retries=2)))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    status = rig.status("t1")
    assert pb.TASK_STATE_RUNNING not in rig.reporter.states("t1"), "never healthy, so never running"
    assert status.cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert status.error == "health check failed: sick"
    assert health_of(rig) == (pb.TaskHealth.STATE_UNHEALTHY, 2, "sick\n")
    info = await rig.fake.inspect(status.container_id)
    assert info.state is ContainerState.EXITED
    assert status.exit_code == info.exit_code == 143


async def test_a_task_waits_to_be_healthy_and_reports_streaks_and_changes(rig: Rig) -> None:
    rig.assign(checked_task(pb.HealthCheck(test=["CMD", "/bin/check"])))
    await rig.eventually(lambda: rig.status("t1").message == WAITING, "t1 waiting")
    assert rig.state("t1") == pb.TASK_STATE_STARTING
    assert health_of(rig) == (pb.TaskHealth.STATE_STARTING, 0, "")
    container_id = rig.status("t1").container_id

    rig.fake.set_health(container_id, HealthStatus.STARTING, "not yet")
    rig.worker.wake(["t1"], stale=True)  # the observer does this on Docker's event or re-list
    await rig.eventually(lambda: rig.status("t1").health.failing_streak == 1, "the streak reported")
    assert rig.state("t1") == pb.TASK_STATE_STARTING

    rig.fake.set_health(container_id, HealthStatus.HEALTHY, "ok")
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    assert health_of(rig) == (pb.TaskHealth.STATE_HEALTHY, 0, "ok")

    rig.fake.set_health(container_id, HealthStatus.HEALTHY, "slow", failing_streak=1)
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.status("t1").health.failing_streak == 1, "a failure of a running task")
    assert rig.state("t1") == pb.TASK_STATE_RUNNING
    reports = len(rig.reporter.history)
    rig.worker.wake(["t1"], stale=True)
    await rig.quiet()
    assert len(rig.reporter.history) == reports, "no change, no report"

    rig.fake.set_health(container_id, HealthStatus.UNHEALTHY, "dead")
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    assert rig.status("t1").cause == pb.TaskStatus.CAUSE_UNHEALTHY
    assert rig.status("t1").error == "health check failed: dead"
    expected = [pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_STARTING, pb.TASK_STATE_STARTING]
    expected += [pb.TASK_STATE_RUNNING, pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED]
    assert rig.reporter.states("t1") == expected


async def test_the_observer_brings_docker_health_events_to_the_task(rig: Rig) -> None:
    observer = observer_of(rig)
    watching = asyncio.create_task(observer.run())
    try:
        rig.assign(checked_task(pb.HealthCheck(test=["CMD", "/bin/check"])))
        await rig.eventually(lambda: rig.status("t1").message == WAITING, "t1 waiting")
        rig.fake.set_health(rig.status("t1").container_id, HealthStatus.HEALTHY, "ok")  # no explicit wake
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_the_images_own_check_counts_unless_turned_off(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    fake = FakeRuntime(images=[IMAGE], clock=clock.now, image_healthchecks={IMAGE: HealthConfig(("CMD", "/bin/check"))})
    rig = make_rig(tmp_path, fake, clock=clock)
    try:
        rig.assign(make_task("t1", command=("sh", "-c", "serve")))
        await rig.eventually(lambda: rig.status("t1").message == WAITING, "t1 waiting on the image's check")
        off = checked_task(pb.HealthCheck(test=["NONE"]), "t2")
        off.revision = 2  # the book keeps one spec per revision
        await run_to_running(rig, off)
        assert not rig.status("t2").HasField("health")
    finally:
        await rig.worker.close()


async def test_a_task_without_a_check_runs_as_before_without_health(rig: Rig) -> None:
    await run_to_running(rig, make_task())
    assert [s.message for _, s in rig.reporter.history] == ["image ready", "container created", "started"]
    assert not rig.status("t1").HasField("health")


async def test_an_http_check_is_probed_by_the_agent(tmp_path: Path) -> None:
    answer = ["503 Service Unavailable"]

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {answer[0]}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    listening = await asyncio.start_server(server, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    clock = FakeClock(NOW)
    rig = make_rig(tmp_path, FakeRuntime(images=[IMAGE], clock=clock.now, address="127.0.0.1"), clock=clock)
    try:
        check = pb.HealthCheck(
            http=pb.HttpProbe(port=port, path="/up"),
            interval=duration(1),
            timeout=duration(1),
            retries=2,
            start_period=duration(3),
            start_interval=duration(0.5),
        )
        rig.assign(checked_task(check))
        await rig.eventually(lambda: rig.status("t1").message == WAITING, "t1 waiting")
        info = await rig.fake.inspect(rig.status("t1").container_id)
        assert info.health is None, "Docker runs no check of its own for an http probe"
        # Failures inside the start period do not count.
        await rig.clock.advance(2.5, step=0.5)
        assert rig.state("t1") == pb.TASK_STATE_STARTING
        assert rig.status("t1").health.failing_streak == 0
        answer[0] = "200 OK"
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 healthy")
        assert health_of(rig) == (pb.TaskHealth.STATE_HEALTHY, 0, f"GET http://127.0.0.1:{port}/up: 200")
        answer[0] = "500 Internal Server Error"
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 unhealthy")
        assert rig.status("t1").cause == pb.TaskStatus.CAUSE_UNHEALTHY
        assert rig.status("t1").error == f"health check failed: GET http://127.0.0.1:{port}/up: 500"
        assert (await rig.fake.inspect(info.id)).state is ContainerState.EXITED
    finally:
        await rig.worker.close()
        listening.close()
        await listening.wait_closed()


# --- failure causes -------------------------------------------------------------------------------------


async def test_an_exit_is_the_tasks_fault(rig: Rig) -> None:
    rig.assign(make_task(command=("sh", "-c", "exit 3")))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
    assert rig.status("t1").cause == pb.TaskStatus.CAUSE_TASK


async def test_an_image_this_node_cannot_pull_is_the_hosts_fault(rig: Rig) -> None:
    rig.assign(make_task(image="registry.example.com/nowhere:1"))
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_REJECTED, "t1 rejected")
    assert rig.status("t1").cause == pb.TaskStatus.CAUSE_HOST


class ShuttingDownAtStart(FakeRuntime):
    """A daemon that refuses starts because it is shutting down."""

    async def start(self, container_id: str) -> None:
        await super().inspect(container_id)
        raise DaemonShuttingDown("Error response from daemon: daemon is shutting down")


async def test_a_start_refused_by_a_daemon_shutting_down_is_the_hosts_fault(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    rig = make_rig(tmp_path, ShuttingDownAtStart(images=[IMAGE], clock=clock.now), clock=clock)
    try:
        rig.assign(make_task())
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
        assert rig.status("t1").cause == pb.TaskStatus.CAUSE_HOST
        assert "shutting down" in rig.status("t1").error
    finally:
        await rig.worker.close()


async def test_a_container_that_ended_while_docker_was_away_failed_by_the_hosts_fault(rig: Rig) -> None:
    observer = observer_of(rig)
    watching = asyncio.create_task(observer.run())
    try:
        container_id = await run_to_running(rig, make_task())
        rig.fake.set_available(False)  # the event stream breaks: Docker is going away
        await rig.clock.advance(1)
        rig.fake.crash(container_id, 143)  # Docker stops its containers as it shuts down
        await rig.clock.advance(1)
        rig.fake.set_available(True)
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
        assert rig.status("t1").cause == pb.TaskStatus.CAUSE_HOST
        assert rig.status("t1").exit_code == 143

        # A crash long after Docker came back is the task's own.
        second = await run_to_running(rig, make_task("t2", slot=2))
        await rig.clock.advance(30)
        rig.fake.crash(second, 1)
        await rig.eventually(lambda: rig.state("t2") == pb.TASK_STATE_FAILED, "t2 failed")
        assert rig.status("t2").cause == pb.TaskStatus.CAUSE_TASK
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_a_container_that_dockers_shutdown_stopped_failed_by_the_hosts_fault(rig: Rig) -> None:
    # Docker stops taking new connections, then stops its containers while the event stream and the
    # connections it has still work: the die event arrives and the look at the container succeeds.
    observer = observer_of(rig)
    watching = asyncio.create_task(observer.run())
    try:
        await run_to_running(rig, make_task())
        rig.fake.shut_down()
        await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_FAILED, "t1 failed")
        assert rig.status("t1").cause == pb.TaskStatus.CAUSE_HOST
        assert rig.status("t1").exit_code == 143
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


async def test_a_flapping_check_is_reported_every_time_but_logged_a_few_times(rig: Rig) -> None:
    rig.assign(checked_task(pb.HealthCheck(test=["CMD", "/bin/check"])))
    await rig.eventually(lambda: rig.status("t1").message == WAITING, "t1 waiting")
    container_id = rig.status("t1").container_id
    rig.fake.set_health(container_id, HealthStatus.HEALTHY, "ok")
    rig.worker.wake(["t1"], stale=True)
    await rig.eventually(lambda: rig.state("t1") == pb.TASK_STATE_RUNNING, "t1 running")
    reports = len(rig.reporter.history)
    with structlog.testing.capture_logs() as logs:
        for flap in range(10):
            streak = 1 - flap % 2
            rig.fake.set_health(container_id, HealthStatus.HEALTHY, "flap", failing_streak=streak)
            rig.worker.wake(["t1"], stale=True)
            await rig.eventually(lambda s=streak: rig.status("t1").health.failing_streak == s, "the flap reported")
    assert len(rig.reporter.history) == reports + 10
    # Three same-state lines a minute per task, the "waiting to be healthy" one among them.
    assert len([entry for entry in logs if entry["event"] == "task state"]) == 2
