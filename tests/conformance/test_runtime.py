"""One behavioural contract for every ContainerRuntime: the fake must do what real Docker does."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from agent.runtime.base import (
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ContainerState,
    ImageNotFound,
    NameConflict,
    PortBinding,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeUnavailable,
)

# The image conftest.py builds for Docker and gives the fake.
TEST_IMAGE = "dockyard-test:latest"
DEADLINE = 10.0
POLL = 0.05
# Runs until stopped and exits 143 on SIGTERM. A plain `sleep` would not: as PID 1 without a handler
# it ignores SIGTERM, and Docker kills it with SIGKILL (137) after the grace period.
TERM_HONOURING = ("sh", "-c", 'trap "exit 143" TERM; sleep 600 & wait')
SIGTERM_DEAF = ("sleep", "600")
# A registry on a closed loopback port: the pull fails at once without leaving the host.
UNPULLABLE = "127.0.0.1:1/dockyard-nonexistent:latest"


Outage = Callable[[str], Awaitable[None]]


def make_spec(labels: Mapping[str, str], command: tuple[str, ...] = TERM_HONOURING, **fields: Any) -> ContainerSpec:
    """A spec with a unique name, the test image, the test's labels, and any other `fields`."""
    name = f"dy-test-{uuid.uuid4().hex[:12]}"
    spec = ContainerSpec(name=name, image=TEST_IMAGE, command=command, labels=dict(labels))
    return replace(spec, **fields)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    """Polls `check` until it holds, failing the test after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)


async def wait_state(runtime: ContainerRuntime, container_id: str, state: ContainerState) -> None:
    """Waits until the container reaches `state`."""

    async def reached() -> bool:
        return (await runtime.inspect(container_id)).state is state

    await eventually(reached, f"{container_id[:12]} to be {state}")


async def settle() -> None:
    """Gives a just-started shell time to install its SIGTERM trap (it needs about a millisecond)."""
    await asyncio.sleep(0.2)


class EventLog:
    """Collects a runtime's events in the background so a test can wait for them."""

    def __init__(self, runtime: ContainerRuntime, labels: Mapping[str, str]) -> None:
        """Subscribes now and starts collecting."""
        self.events: list[RuntimeEvent] = []
        self._stream = runtime.events(labels)
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        """Appends every event until the stream ends or fails."""
        try:
            async for event in self._stream:
                self.events.append(event)
        finally:
            # The protocol promises only an AsyncIterator; both runtimes hand out async generators.
            if isinstance(self._stream, AsyncGenerator):
                await self._stream.aclose()

    def of(self, container_id: str) -> list[tuple[str, int | None]]:
        """The (action, exit_code) pairs seen for one container, in order."""
        return [(e.action, e.exit_code) for e in self.events if e.container_id == container_id]

    async def wait_for(self, container_id: str, action: str) -> RuntimeEvent:
        """Waits until an event with that action arrives for the container and returns it."""

        async def seen() -> bool:
            if self.task.done():
                self.task.result()
            return any(e.container_id == container_id and e.action == action for e in self.events)

        await eventually(seen, f"{action} event of {container_id[:12]}")
        return next(e for e in self.events if e.container_id == container_id and e.action == action)

    async def stop(self) -> None:
        """Cancels the collector; a failure it already met was the test's business."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeFailure):
            await self.task


@pytest.fixture
async def events(runtime: ContainerRuntime, run_labels: dict[str, str]) -> AsyncIterator[EventLog]:
    """An event log for this test's containers, subscribed before the test acts."""
    log = EventLog(runtime, run_labels)
    yield log
    await log.stop()


async def test_host_facts_are_sane(runtime: ContainerRuntime) -> None:
    facts = await runtime.host_facts()
    assert facts.hostname
    assert facts.cpus > 0
    assert facts.memory_bytes > 0
    assert facts.docker_version
    assert facts.os
    assert facts.arch


async def test_has_image(runtime: ContainerRuntime) -> None:
    assert await runtime.has_image(TEST_IMAGE)
    assert await runtime.has_image("dockyard-test")  # no tag means :latest
    assert not await runtime.has_image("dockyard-nonexistent:latest")


async def test_create_then_start_runs_the_container(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    spec = make_spec(run_labels)
    container_id = await runtime.create(spec)
    assert len(container_id) == 64
    assert all(c in "0123456789abcdef" for c in container_id)
    created = await runtime.inspect(container_id)
    assert created.state is ContainerState.CREATED
    assert created.started_at is None
    assert created.finished_at is None

    await runtime.start(container_id)
    running = await runtime.inspect(container_id)
    assert running.state is ContainerState.RUNNING
    assert running.id == container_id
    assert running.name == spec.name
    assert running.image == TEST_IMAGE
    assert running.exit_code == 0
    assert running.started_at is not None
    assert running.started_at.tzinfo is not None
    assert running.finished_at is None
    assert running.restart_count == 0
    assert (await runtime.inspect(spec.name)).id == container_id


async def test_labels_env_and_ports_round_trip(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    labels = {**run_labels, "dockyard.service": "web", "dockyard.slot": "2"}
    spec = make_spec(
        labels,
        env={"GREETING": "hello world", "EMPTY": ""},
        ports=(PortBinding(host_port=0, container_port=8080), PortBinding(0, 5353, "udp")),
        cpu_limit=0.5,
        memory_limit_bytes=64 * 1024 * 1024,
    )
    container_id = await runtime.create(spec)
    await runtime.start(container_id)
    info = await runtime.inspect(container_id)
    assert info.state is ContainerState.RUNNING
    assert dict(info.labels) == labels


async def test_exit_code_shows_in_inspect_and_die_event(
    runtime: ContainerRuntime, run_labels: dict[str, str], events: EventLog
) -> None:
    container_id = await runtime.create(make_spec(run_labels, ("sh", "-c", "exit 3")))
    await runtime.start(container_id)
    die = await events.wait_for(container_id, "die")
    assert die.exit_code == 3
    assert die.labels[next(iter(run_labels))] == next(iter(run_labels.values()))
    assert events.of(container_id) == [("create", None), ("start", None), ("die", 3)]
    info = await runtime.inspect(container_id)
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 3
    assert info.started_at is not None
    assert info.finished_at is not None
    assert info.restart_count == 0


async def test_exited_container_starts_again_without_restart_count(
    runtime: ContainerRuntime, run_labels: dict[str, str], events: EventLog
) -> None:
    container_id = await runtime.create(make_spec(run_labels, ("sh", "-c", "exit 4")))
    await runtime.start(container_id)
    await wait_state(runtime, container_id, ContainerState.EXITED)
    await runtime.start(container_id)
    await eventually(lambda: _dies(events, container_id, 2), "second die")
    info = await runtime.inspect(container_id)
    assert info.exit_code == 4
    assert info.restart_count == 0


async def _dies(events: EventLog, container_id: str, count: int) -> bool:
    """Whether the container has died `count` times."""
    return sum(1 for action, _ in events.of(container_id) if action == "die") >= count


async def test_stop_honoured_within_grace(
    runtime: ContainerRuntime, run_labels: dict[str, str], events: EventLog
) -> None:
    container_id = await runtime.create(make_spec(run_labels, TERM_HONOURING))
    await runtime.start(container_id)
    await settle()
    began = time.monotonic()
    await runtime.stop(container_id, grace_seconds=5)
    assert time.monotonic() - began < 3, "a process that honours SIGTERM must not wait out the grace"
    info = await runtime.inspect(container_id)
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 143
    await events.wait_for(container_id, "stop")
    assert events.of(container_id)[2:] == [("kill", None), ("die", 143), ("stop", None)]


async def test_stop_kills_a_process_deaf_to_sigterm(
    runtime: ContainerRuntime, run_labels: dict[str, str], events: EventLog
) -> None:
    container_id = await runtime.create(make_spec(run_labels, SIGTERM_DEAF))
    await runtime.start(container_id)
    await runtime.stop(container_id, grace_seconds=0)
    info = await runtime.inspect(container_id)
    assert info.state is ContainerState.EXITED
    assert info.exit_code == 137
    await events.wait_for(container_id, "stop")
    assert events.of(container_id)[2:] == [("kill", None), ("kill", None), ("die", 137), ("stop", None)]


async def test_stop_of_stopped_or_created_container_is_no_error(
    runtime: ContainerRuntime, run_labels: dict[str, str]
) -> None:
    exited = await runtime.create(make_spec(run_labels, ("sh", "-c", "exit 0")))
    await runtime.start(exited)
    await wait_state(runtime, exited, ContainerState.EXITED)
    await runtime.stop(exited, grace_seconds=1)
    assert (await runtime.inspect(exited)).state is ContainerState.EXITED
    created = await runtime.create(make_spec(run_labels))
    await runtime.stop(created, grace_seconds=1)
    assert (await runtime.inspect(created)).state is ContainerState.CREATED


async def test_remove_running_container(
    runtime: ContainerRuntime, run_labels: dict[str, str], events: EventLog
) -> None:
    container_id = await runtime.create(make_spec(run_labels))
    await runtime.start(container_id)
    await runtime.remove(container_id)
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(container_id)
    await events.wait_for(container_id, "destroy")
    assert events.of(container_id)[2:] == [("kill", None), ("die", 137), ("destroy", None)]


async def test_remove_missing_container_is_no_error(runtime: ContainerRuntime) -> None:
    await runtime.remove(uuid.uuid4().hex * 2)
    await runtime.remove(f"dy-test-missing-{uuid.uuid4().hex}")


async def test_missing_container_raises_not_found(runtime: ContainerRuntime) -> None:
    missing = uuid.uuid4().hex * 2
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(missing)
    with pytest.raises(ContainerNotFound):
        await runtime.start(missing)
    with pytest.raises(ContainerNotFound):
        await runtime.stop(missing, grace_seconds=1)


async def test_duplicate_name_conflicts(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    spec = make_spec(run_labels)
    await runtime.create(spec)
    with pytest.raises(NameConflict):
        await runtime.create(spec)


async def test_invalid_name_is_a_plain_failure(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.create(make_spec(run_labels, name="no spaces allowed"))
    assert not isinstance(caught.value, NameConflict | ImageNotFound)


async def test_missing_image_at_create(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    with pytest.raises(ImageNotFound):
        await runtime.create(make_spec(run_labels, image="dockyard-nonexistent:latest"))


async def test_pull_of_unreachable_image_fails_promptly(runtime: ContainerRuntime) -> None:
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(ImageNotFound):
            await runtime.pull(UNPULLABLE)
    assert not await runtime.has_image(UNPULLABLE)


async def test_start_of_missing_program_fails(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    container_id = await runtime.create(make_spec(run_labels, ("/nonexistent/program",)))
    with pytest.raises(RuntimeFailure) as caught:
        await runtime.start(container_id)
    assert not isinstance(caught.value, ContainerNotFound)
    info = await runtime.inspect(container_id)
    assert info.state is ContainerState.CREATED
    assert info.exit_code == 127
    assert "/nonexistent/program" in info.error


async def test_list_filters_by_every_label_and_includes_exited(
    runtime: ContainerRuntime, run_labels: dict[str, str]
) -> None:
    web = await runtime.create(make_spec({**run_labels, "role": "web"}))
    await runtime.start(web)
    db = await runtime.create(make_spec({**run_labels, "role": "db"}))
    done = await runtime.create(make_spec({**run_labels, "role": "web"}, ("sh", "-c", "exit 0")))
    await runtime.start(done)
    await wait_state(runtime, done, ContainerState.EXITED)

    assert {c.id for c in await runtime.list(run_labels)} == {web, db, done}
    webs = await runtime.list({**run_labels, "role": "web"})
    assert {c.id for c in webs} == {web, done}
    assert {c.id: c.state for c in webs} == {web: ContainerState.RUNNING, done: ContainerState.EXITED}
    assert await runtime.list({**run_labels, "role": "cache"}) == []


async def test_events_of_other_labels_are_not_delivered(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    watched = EventLog(runtime, {**run_labels, "role": "watched"})
    try:
        other = await runtime.create(make_spec({**run_labels, "role": "other"}, ("sh", "-c", "exit 0")))
        await runtime.start(other)
        mine = await runtime.create(make_spec({**run_labels, "role": "watched"}, ("sh", "-c", "exit 0")))
        await runtime.start(mine)
        await watched.wait_for(mine, "die")
    finally:
        await watched.stop()
    # Docker delivers in order, so the other container's earlier events would have come first.
    assert {e.container_id for e in watched.events} == {mine}
    assert [e.action for e in watched.events] == ["create", "start", "die"]


async def test_cancelling_the_consumer_cleans_up(runtime: ContainerRuntime, run_labels: dict[str, str]) -> None:
    log = EventLog(runtime, run_labels)
    container_id = await runtime.create(make_spec(run_labels))
    await log.wait_for(container_id, "create")
    await log.stop()
    gc.collect()
    await asyncio.sleep(0)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, f"the subscription left tasks behind: {others}"


@pytest.mark.parametrize("mode", ["closed", "hung"])
async def test_daemon_outage_is_noticed(
    outage_runtime: tuple[ContainerRuntime, Outage], run_labels: dict[str, str], mode: str
) -> None:
    runtime, outage = outage_runtime
    log = EventLog(runtime, run_labels)
    try:
        container_id = await runtime.create(make_spec(run_labels))
        await log.wait_for(container_id, "create")
        await outage(mode)
        async with asyncio.timeout(DEADLINE):
            with pytest.raises(RuntimeUnavailable):
                await log.task
            with pytest.raises(RuntimeUnavailable):
                await runtime.inspect(container_id)
    finally:
        await log.stop()
