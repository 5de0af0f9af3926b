"""The runtime conformance suite: one behavioural contract that every ContainerRuntime must pass.

The fake runtime and the aiodocker adapter both run it, which is what lets agent tests trust the fake.
`RuntimeConformance` holds every check as an async ``test_*`` method; an adapter's test module subclasses
it and says how to connect (see `agent.testing` for a complete example). Each check opens its own runtime,
marks everything it creates with a label unique to the check, and removes all of it afterwards, so checks
are independent and can run against a shared daemon.

The checks run real commands in `RuntimeConformance.image`: it must have a POSIX ``sh`` (with ``trap``,
``exit N``, ``&`` and ``wait``) and ``sleep`` on its PATH, and no HEALTHCHECK of its own;
scripts/build-test-image.sh builds such an image (`dockyard-test:latest`, busybox only) into any dockerd.
The checks of an image's own HEALTHCHECK run when `RuntimeConformance.healthcheck_image` names an image
whose HEALTHCHECK prints ``image-check`` and passes (`HEALTHCHECK_IMAGE`, built by
``scripts/build-test-image.sh --healthcheck``; a FakeRuntime gets it through `image_healthchecks`, see
`IMAGE_CHECK`). They wait in real time, but never for more than
a fraction of a second unless the runtime is slow (each wait gives up after `DEADLINE` seconds).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import gc
import io
import ipaddress
import json
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, Literal, TypeVar

from agent.runtime.base import (
    HEALTH_STATUS,
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ContainerState,
    Health,
    HealthConfig,
    HealthStatus,
    ImageNotFound,
    MountSpec,
    NameConflict,
    NetworkAttachment,
    NetworkInUse,
    NotDockyards,
    PortBinding,
    RegistryAuth,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeUnavailable,
    VolumeInUse,
)
from dockyard import labels as dockyard_labels

__all__ = [
    "DEADLINE",
    "HEALTHCHECK_IMAGE",
    "IMAGE_CHECK",
    "RUN_LABEL",
    "TEST_IMAGE",
    "EventLog",
    "Outage",
    "OutageMode",
    "RuntimeConformance",
]

TEST_IMAGE = "dockyard-test:latest"
# Every container a check creates carries this label with a value unique to the check.
RUN_LABEL = "dockyard.test-run"
DEADLINE = 10.0
POLL = 0.05
# Runs until stopped and exits 143 on SIGTERM. A plain `sleep` would not: as PID 1 without a handler
# it ignores SIGTERM, and Docker kills it with SIGKILL (137) after the grace period.
TERM_HONOURING = ("sh", "-c", 'trap "exit 143" TERM; sleep 600 & wait')
SIGTERM_DEAF = ("sleep", "600")
# A registry on a closed loopback port: the pull fails at once without leaving the host.
UNPULLABLE = "127.0.0.1:1/dockyard-nonexistent:latest"
MISSING_IMAGE = "dockyard-nonexistent:latest"
HEALTHCHECK_IMAGE = "dockyard-test-healthcheck:latest"
# The HEALTHCHECK of HEALTHCHECK_IMAGE, as scripts/build-test-image.sh --healthcheck writes it.
IMAGE_CHECK = HealthConfig(
    ("CMD-SHELL", "echo image-check; exit 0"), interval_ns=100_000_000, timeout_ns=2_000_000_000, retries=2
)
# Docker's embedded DNS, the nameserver of every container on a user-defined network.
EMBEDDED_DNS = "127.0.0.11"
# Checks probe every 100 ms (the spec's minimum), so Docker settles within a fraction of a second.
_FAST = {"interval_ns": 100_000_000, "timeout_ns": 2_000_000_000}

OutageMode = Literal["closed", "hung"]
"""How the daemon goes away: "closed" means it dies (connections close), "hung" that it stops answering."""

Outage = Callable[[OutageMode], Awaitable[None]]
"""Takes the daemon behind a runtime away, in the given mode."""

E = TypeVar("E", bound=BaseException)


class _Raised(Generic[E]):
    """What `_raises` caught."""

    value: E


@contextlib.contextmanager
def _raises(kind: type[E]) -> Iterator[_Raised[E]]:
    """Fails the check unless the body raises `kind`; a framework-neutral pytest.raises."""
    raised = _Raised[E]()
    try:
        yield raised
    except kind as exc:
        raised.value = exc
        return
    raise AssertionError(f"expected {kind.__name__} to be raised")


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, deadline: float = DEADLINE) -> None:
    """Polls `check` until it holds, failing the check after `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL)


async def _wait_state(runtime: ContainerRuntime, container_id: str, state: ContainerState) -> None:
    """Waits until the container reaches `state`."""

    async def reached() -> bool:
        return (await runtime.inspect(container_id)).state is state

    await _eventually(reached, f"{container_id[:12]} to be {state}")


async def _settle() -> None:
    """Gives a just-started shell time to install its SIGTERM trap (it needs about a millisecond)."""
    await asyncio.sleep(0.2)


class EventLog:
    """Collects a runtime's events in the background so a check can wait for them."""

    def __init__(self, runtime: ContainerRuntime, labels: Mapping[str, str]) -> None:
        """Subscribes now and starts collecting."""
        self.events: list[RuntimeEvent] = []
        self._stream = runtime.events(labels)
        self.task = asyncio.create_task(self._collect())

    async def __aenter__(self) -> EventLog:
        """Returns the log, already collecting."""
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Stops collecting."""
        await self.stop()

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
        """Returns the (action, exit_code) pairs seen for one container, in order."""
        return [(e.action, e.exit_code) for e in self.events if e.container_id == container_id]

    def count(self, container_id: str, action: str) -> int:
        """Returns how many events with that action the container has had."""
        return sum(1 for seen, _ in self.of(container_id) if seen == action)

    async def wait_for(self, container_id: str, action: str) -> RuntimeEvent:
        """Waits until an event with that action arrives for the container and returns it."""

        async def seen() -> bool:
            if self.task.done():
                self.task.result()
            return any(e.container_id == container_id and e.action == action for e in self.events)

        await _eventually(seen, f"{action} event of {container_id[:12]}")
        return next(e for e in self.events if e.container_id == container_id and e.action == action)

    async def stop(self) -> None:
        """Cancels the collector; a failure it already met was the check's business."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, RuntimeFailure):
            await self.task


@dataclass(frozen=True)
class _Trial:
    """One check's runtime, the labels that mark what the check creates, and the image it runs."""

    runtime: ContainerRuntime
    labels: dict[str, str]
    image: str

    def spec(
        self, command: tuple[str, ...] = TERM_HONOURING, *, extra_labels: Mapping[str, str] | None = None, **fields: Any
    ) -> ContainerSpec:
        """A spec with a unique name, the image, the trial's labels plus `extra_labels`, and any other `fields`."""
        name = f"dy-test-{uuid.uuid4().hex[:12]}"
        labels = {**self.labels, **(extra_labels or {})}
        spec = ContainerSpec(name=name, image=self.image, command=command, labels=labels)
        return replace(spec, **fields)

    async def started(self, command: tuple[str, ...] = TERM_HONOURING, **extra_labels: str) -> str:
        """Creates and starts a container running `command`; returns its id."""
        container_id = await self.runtime.create(self.spec(command, extra_labels=extra_labels))
        await self.runtime.start(container_id)
        return container_id


class RuntimeConformance(abc.ABC):
    """Every check a ContainerRuntime must pass; subclass it in a test module and implement the two openers.

    The ``test_*`` methods are coroutines: run them with pytest-asyncio (auto mode, or mark the subclass
    with ``pytest.mark.asyncio``) or any runner that awaits async test methods.
    """

    image: ClassVar[str] = TEST_IMAGE
    """An image the daemon already has, with ``sh`` and ``sleep`` (see the module docstring)."""

    healthcheck_image: ClassVar[str | None] = None
    """An image whose own HEALTHCHECK is IMAGE_CHECK; None skips the checks that need one."""

    @abc.abstractmethod
    def open_runtime(self) -> contextlib.AbstractAsyncContextManager[ContainerRuntime]:
        """Returns a context that connects a runtime to a working daemon that has `image`, and closes it on exit."""

    async def remove_image(self, runtime: ContainerRuntime, image: str) -> bool:
        """Removes an image a check loaded (the protocol has no call for it); False when the subclass cannot.

        The save-and-load check runs only when the loaded copy can be removed again.
        """
        return False

    @abc.abstractmethod
    def open_outage(
        self, runtime: ContainerRuntime
    ) -> contextlib.AbstractAsyncContextManager[tuple[ContainerRuntime, Outage]]:
        """Returns a context with a runtime on `runtime`'s daemon and an Outage that takes that daemon away.

        The runtime it yields may be `runtime` itself or a second one (say, behind a `UnixSocketProxy`);
        when the context exits, `runtime` must work again, because it then removes what the check made.
        """

    @contextlib.asynccontextmanager
    async def _trial(self) -> AsyncIterator[_Trial]:
        """Opens a runtime for one check and removes every container the check made.

        The labels mark what the check makes as Dockyard's (dockyard.labels.MANAGED), as the agent marks its own:
        a runtime reuses only such volumes and networks.
        """
        labels = {RUN_LABEL: uuid.uuid4().hex, dockyard_labels.MANAGED: "true"}
        async with self.open_runtime() as runtime:
            try:
                yield _Trial(runtime, labels, self.image)
            finally:
                for info in await runtime.list(labels):
                    await runtime.remove(info.id)
                # Volumes and networks go after the containers that used them.
                for volume in await runtime.list_volumes(labels):
                    await runtime.remove_volume(volume.name)
                for network in await runtime.list_networks(labels):
                    await runtime.remove_network(network.name)

    @contextlib.asynccontextmanager
    async def _trial_with_events(self) -> AsyncIterator[tuple[_Trial, EventLog]]:
        """A trial with an event log of its containers, subscribed before the check acts."""
        async with self._trial() as trial, EventLog(trial.runtime, trial.labels) as events:
            yield trial, events

    # --- host and images --------------------------------------------------------------------------

    async def test_ping_answers_on_a_live_daemon(self) -> None:
        """ping() returns on a daemon that takes calls (an outage makes it raise, see the outage checks)."""
        async with self._trial() as trial:
            await trial.runtime.ping()

    async def test_host_facts_are_sane(self) -> None:
        """host_facts() names the host, its capacity and its versions."""
        async with self._trial() as trial:
            facts = await trial.runtime.host_facts()
        assert facts.hostname
        assert facts.cpus > 0
        assert facts.memory_bytes > 0
        assert facts.docker_version
        assert facts.os
        assert facts.arch

    async def test_has_image(self) -> None:
        """has_image() finds the image, also without its ':latest' tag, and not a missing one."""
        async with self._trial() as trial:
            runtime = trial.runtime
            assert await runtime.has_image(self.image)
            untagged = self.image.removesuffix(":latest")
            if untagged != self.image:
                assert await runtime.has_image(untagged), "no tag means :latest"
            assert not await runtime.has_image(MISSING_IMAGE)

    # --- create, start, inspect -------------------------------------------------------------------

    async def test_create_then_start_runs_the_container(self) -> None:
        """create() gives a 64-hex id and a created container; start() runs it; inspect() by id or name."""
        async with self._trial() as trial:
            runtime = trial.runtime
            spec = trial.spec()
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
            assert running.image == self.image
            assert running.exit_code == 0
            assert running.started_at is not None
            assert running.started_at.tzinfo is not None
            assert running.finished_at is None
            assert running.restart_count == 0
            assert (await runtime.inspect(spec.name)).id == container_id

    async def test_labels_env_and_ports_round_trip(self) -> None:
        """A container with env, published ports and limits runs and keeps exactly its labels."""
        async with self._trial() as trial:
            extra = {"dockyard.service": "web", "dockyard.slot": "2"}
            spec = trial.spec(
                extra_labels=extra,
                env={"GREETING": "hello world", "EMPTY": ""},
                ports=(PortBinding(host_port=0, container_port=8080), PortBinding(0, 5353, "udp")),
                cpu_limit=0.5,
                memory_limit_bytes=64 * 1024 * 1024,
            )
            container_id = await trial.runtime.create(spec)
            await trial.runtime.start(container_id)
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.RUNNING
            assert dict(info.labels) == {**trial.labels, **extra}

    # --- exits and stops --------------------------------------------------------------------------

    async def test_exit_code_shows_in_inspect_and_die_event(self) -> None:
        """A process's own exit code shows in its die event and in inspect()."""
        async with self._trial_with_events() as (trial, events):
            container_id = await trial.started(("sh", "-c", "exit 3"))
            die = await events.wait_for(container_id, "die")
            assert die.exit_code == 3
            assert die.labels[RUN_LABEL] == trial.labels[RUN_LABEL]
            assert events.of(container_id) == [("create", None), ("start", None), ("die", 3)]
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.EXITED
            assert info.exit_code == 3
            assert info.started_at is not None
            assert info.finished_at is not None
            assert info.restart_count == 0

    async def test_exited_container_starts_again_without_restart_count(self) -> None:
        """start() of an exited container runs it again, and that is not counted as a restart."""
        async with self._trial_with_events() as (trial, events):
            container_id = await trial.started(("sh", "-c", "exit 4"))
            await _wait_state(trial.runtime, container_id, ContainerState.EXITED)
            await trial.runtime.start(container_id)

            async def died_twice() -> bool:
                return events.count(container_id, "die") >= 2

            await _eventually(died_twice, "second die")
            info = await trial.runtime.inspect(container_id)
            assert info.exit_code == 4
            assert info.restart_count == 0

    async def test_stop_honoured_within_grace(self) -> None:
        """stop() of a process that honours SIGTERM returns when it exits (143), not after the grace."""
        async with self._trial_with_events() as (trial, events):
            container_id = await trial.started(TERM_HONOURING)
            await _settle()
            began = time.monotonic()
            await trial.runtime.stop(container_id, grace_seconds=5)
            assert time.monotonic() - began < 3, "a process that honours SIGTERM must not wait out the grace"
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.EXITED
            assert info.exit_code == 143
            await events.wait_for(container_id, "stop")
            assert events.of(container_id)[2:] == [("kill", None), ("die", 143), ("stop", None)]

    async def test_stop_kills_a_process_deaf_to_sigterm(self) -> None:
        """stop() kills a process that ignores SIGTERM once the grace is over (137)."""
        async with self._trial_with_events() as (trial, events):
            container_id = await trial.started(SIGTERM_DEAF)
            await trial.runtime.stop(container_id, grace_seconds=0)
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.EXITED
            assert info.exit_code == 137
            await events.wait_for(container_id, "stop")
            assert events.of(container_id)[2:] == [("kill", None), ("kill", None), ("die", 137), ("stop", None)]

    async def test_stop_of_stopped_or_created_container_is_no_error(self) -> None:
        """stop() leaves an exited or a never-started container as it is."""
        async with self._trial() as trial:
            runtime = trial.runtime
            exited = await trial.started(("sh", "-c", "exit 0"))
            await _wait_state(runtime, exited, ContainerState.EXITED)
            await runtime.stop(exited, grace_seconds=1)
            assert (await runtime.inspect(exited)).state is ContainerState.EXITED
            created = await runtime.create(trial.spec())
            await runtime.stop(created, grace_seconds=1)
            assert (await runtime.inspect(created)).state is ContainerState.CREATED

    # --- remove -----------------------------------------------------------------------------------

    async def test_remove_running_container(self) -> None:
        """remove() kills a running container (137) and deletes it."""
        async with self._trial_with_events() as (trial, events):
            container_id = await trial.started()
            await trial.runtime.remove(container_id)
            with _raises(ContainerNotFound):
                await trial.runtime.inspect(container_id)
            await events.wait_for(container_id, "destroy")
            assert events.of(container_id)[2:] == [("kill", None), ("die", 137), ("destroy", None)]

    async def test_remove_missing_container_is_no_error(self) -> None:
        """remove() of an unknown id or name succeeds."""
        async with self._trial() as trial:
            await trial.runtime.remove(uuid.uuid4().hex * 2)
            await trial.runtime.remove(f"dy-test-missing-{uuid.uuid4().hex}")

    # --- errors -----------------------------------------------------------------------------------

    async def test_missing_container_raises_not_found(self) -> None:
        """inspect(), start() and stop() of an unknown container raise ContainerNotFound."""
        async with self._trial() as trial:
            missing = uuid.uuid4().hex * 2
            with _raises(ContainerNotFound):
                await trial.runtime.inspect(missing)
            with _raises(ContainerNotFound):
                await trial.runtime.start(missing)
            with _raises(ContainerNotFound):
                await trial.runtime.stop(missing, grace_seconds=1)

    async def test_duplicate_name_conflicts(self) -> None:
        """A second create() with a name in use raises NameConflict."""
        async with self._trial() as trial:
            spec = trial.spec()
            await trial.runtime.create(spec)
            with _raises(NameConflict):
                await trial.runtime.create(spec)

    async def test_invalid_name_is_a_plain_failure(self) -> None:
        """A name the daemon refuses raises RuntimeFailure, neither NameConflict nor ImageNotFound."""
        async with self._trial() as trial:
            with _raises(RuntimeFailure) as caught:
                await trial.runtime.create(trial.spec(name="no spaces allowed"))
            assert not isinstance(caught.value, NameConflict | ImageNotFound)

    async def test_missing_image_at_create(self) -> None:
        """create() with an image the host lacks raises ImageNotFound (it does not pull)."""
        async with self._trial() as trial:
            with _raises(ImageNotFound):
                await trial.runtime.create(trial.spec(image=MISSING_IMAGE))

    async def test_pull_of_unreachable_image_fails_promptly(self) -> None:
        """pull() from an unreachable registry raises ImageNotFound within the deadline."""
        async with self._trial() as trial:
            async with asyncio.timeout(DEADLINE):
                with _raises(ImageNotFound):
                    await trial.runtime.pull(UNPULLABLE)
            assert not await trial.runtime.has_image(UNPULLABLE)

    async def test_start_of_missing_program_fails(self) -> None:
        """start() of a command that cannot run raises RuntimeFailure; the container stays created, 127."""
        async with self._trial() as trial:
            container_id = await trial.runtime.create(trial.spec(("/nonexistent/program",)))
            with _raises(RuntimeFailure) as caught:
                await trial.runtime.start(container_id)
            assert not isinstance(caught.value, ContainerNotFound)
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.CREATED
            assert info.exit_code == 127
            assert "/nonexistent/program" in info.error

    # --- list and events --------------------------------------------------------------------------

    async def test_list_filters_by_every_label_and_includes_exited(self) -> None:
        """list() returns the containers carrying all the given labels, running or exited."""
        async with self._trial() as trial:
            runtime = trial.runtime
            web = await trial.started(role="web")
            db = await runtime.create(trial.spec(extra_labels={"role": "db"}))
            done = await trial.started(("sh", "-c", "exit 0"), role="web")
            await _wait_state(runtime, done, ContainerState.EXITED)

            assert {c.id for c in await runtime.list(trial.labels)} == {web, db, done}
            webs = await runtime.list({**trial.labels, "role": "web"})
            assert {c.id for c in webs} == {web, done}
            assert {c.id: c.state for c in webs} == {web: ContainerState.RUNNING, done: ContainerState.EXITED}
            assert await runtime.list({**trial.labels, "role": "cache"}) == []

    async def test_events_of_other_labels_are_not_delivered(self) -> None:
        """events() delivers only the events of containers carrying all the given labels."""
        async with self._trial() as trial:
            async with EventLog(trial.runtime, {**trial.labels, "role": "watched"}) as watched:
                await trial.started(("sh", "-c", "exit 0"), role="other")
                mine = await trial.started(("sh", "-c", "exit 0"), role="watched")
                await watched.wait_for(mine, "die")
            # Docker delivers in order, so the other container's earlier events would have come first.
            assert {e.container_id for e in watched.events} == {mine}
            assert [e.action for e in watched.events] == ["create", "start", "die"]

    async def test_cancelling_the_consumer_cleans_up(self) -> None:
        """Cancelling the task that consumes events() leaves no task of the runtime's behind."""
        async with self._trial() as trial:
            async with EventLog(trial.runtime, trial.labels) as log:
                container_id = await trial.runtime.create(trial.spec())
                await log.wait_for(container_id, "create")
                await log.stop()
            gc.collect()
            await asyncio.sleep(0)
            others = asyncio.all_tasks() - {asyncio.current_task()}
            assert not others, f"the subscription left tasks behind: {others}"

    # --- images ----------------------------------------------------------------------------------

    async def test_image_id_and_list_images(self) -> None:
        """image_id() gives a present image's id (also untagged), None for a missing one; list_images names it."""
        async with self._trial() as trial:
            runtime = trial.runtime
            image_id = await runtime.image_id(self.image)
            assert image_id is not None and image_id.startswith("sha256:")
            assert await runtime.image_id(self.image.removesuffix(":latest")) == image_id
            assert await runtime.image_id(MISSING_IMAGE) is None
            assert self.image in await runtime.list_images()

    async def test_pull_with_credentials_of_an_unreachable_registry_fails_promptly(self) -> None:
        """pull() with credentials raises ImageNotFound as without them, and never hangs."""
        async with self._trial() as trial:
            auth = RegistryAuth("127.0.0.1:1", "someone", "secret")
            assert "secret" not in repr(auth)
            async with asyncio.timeout(DEADLINE):
                with _raises(ImageNotFound):
                    await trial.runtime.pull(UNPULLABLE, auth)

    async def test_saved_image_loads_back_under_another_name(self) -> None:
        """save_image() streams a `docker save` archive that load_image() loads: same id, the archive's name.

        The archive is renamed to a test-only reference before loading, and that copy is removed afterwards.
        """
        async with self._trial() as trial:
            runtime = trial.runtime
            copy = f"dockyard-test-roundtrip-{trial.labels[RUN_LABEL][:12]}:latest"
            original = await runtime.image_id(self.image)
            archive = bytearray()
            async for chunk in runtime.save_image(self.image):
                archive.extend(chunk)
            with _raises(ImageNotFound):
                async for _ in runtime.save_image(MISSING_IMAGE):
                    pass
            with _raises(RuntimeFailure):
                await runtime.load_image(_chunks(b"not an image archive" * 100))
            renamed = _renamed_archive(bytes(archive), self.image, copy)
            if not await self.remove_image(runtime, copy):
                return  # the subclass cannot clean a loaded copy up
            try:
                assert await runtime.load_image(_chunks(renamed)) == [copy]
                assert await runtime.image_id(copy) == original
                assert copy in await runtime.list_images()
            finally:
                await self.remove_image(runtime, copy)
            assert await runtime.image_id(copy) is None

    # --- volumes and mounts -------------------------------------------------------------------------

    async def test_volumes_are_ensured_once_listed_by_label_and_removed(self) -> None:
        """ensure_volume() creates once (a second call keeps the first labels); list by labels; remove is idempotent."""
        async with self._trial() as trial:
            runtime = trial.runtime
            name = _unique("dy-test-vol")
            made = await runtime.ensure_volume(name, {**trial.labels, "role": "data"})
            assert (made.name, dict(made.labels)) == (name, {**trial.labels, "role": "data"})
            again = await runtime.ensure_volume(name, {**trial.labels, "role": "other"})
            assert again == made
            assert await runtime.list_volumes({**trial.labels, "role": "data"}) == [made]
            assert await runtime.list_volumes({**trial.labels, "role": "other"}) == []
            await runtime.remove_volume(name)
            await runtime.remove_volume(name)
            assert await runtime.list_volumes(trial.labels) == []
            with _raises(RuntimeFailure):
                await runtime.ensure_volume("no spaces/allowed", trial.labels)

    async def test_another_tools_volume_is_never_reused(self) -> None:
        """ensure_volume() of a name another tool's volume has (no MANAGED label) raises NotDockyards, naming it."""
        async with self._trial() as trial:
            runtime = trial.runtime
            name = _unique("dy-test-vol")
            theirs = {RUN_LABEL: trial.labels[RUN_LABEL], "com.docker.compose.project": "shop"}
            made = await runtime.ensure_volume(name, theirs)  # a new volume takes whatever labels it is given
            try:
                with _raises(NotDockyards) as caught:
                    await runtime.ensure_volume(name, trial.labels)
                assert str(caught.value).startswith(f"volume {name} exists on this host and is not Dockyard's")
                assert await runtime.list_volumes({RUN_LABEL: trial.labels[RUN_LABEL]}) == [made], "left as it was"
            finally:
                await runtime.remove_volume(name)

    async def test_volume_data_outlives_its_container_and_removal_waits_for_the_last_user(self) -> None:
        """What a container writes to a volume, the next container sees; remove_volume refuses while any mounts it."""
        async with self._trial() as trial:
            runtime = trial.runtime
            name = _unique("dy-test-vol")
            await runtime.ensure_volume(name, trial.labels)
            mount = (MountSpec("volume", name, "/data"),)
            writer = await runtime.create(trial.spec(("sh", "-c", "echo kept > /data/f && exit 0"), mounts=mount))
            await runtime.start(writer)
            await _wait_state(runtime, writer, ContainerState.EXITED)
            assert (await runtime.inspect(writer)).exit_code == 0
            with _raises(VolumeInUse):
                await runtime.remove_volume(name)  # even by an exited container
            await runtime.remove(writer)
            reader = await runtime.create(trial.spec(("sh", "-c", "grep -qxF kept /data/f"), mounts=mount))
            await runtime.start(reader)
            await _wait_state(runtime, reader, ContainerState.EXITED)
            assert (await runtime.inspect(reader)).exit_code == 0, "the replacement container found the data"
            await runtime.remove(reader)
            await runtime.remove_volume(name)
            assert await runtime.list_volumes(trial.labels) == []

    async def test_bind_tmpfs_and_read_only_mounts(self) -> None:
        """A bind shows and takes host files, a tmpfs has its size, a read-only mount refuses writes (exit 1)."""
        async with self._trial() as trial:
            runtime = trial.runtime
            volume = _unique("dy-test-vol")
            await runtime.ensure_volume(volume, trial.labels)
            host = Path(tempfile.mkdtemp(prefix="dockyard-bind-"))
            try:
                (host / "greeting").write_text("hello\n")
                mounts = (
                    MountSpec("bind", str(host), "/host"),
                    MountSpec("tmpfs", "", "/scratch", tmpfs_size_bytes=1024 * 1024),
                    MountSpec("volume", volume, "/ro", read_only=True),
                    MountSpec("bind", str(host), "/host-ro", read_only=True),
                )
                script = (
                    "grep -qxF hello /host/greeting && echo written > /host/out && touch /scratch/x"
                    " && grep -qF ' /scratch tmpfs ' /proc/mounts && grep -qF size=1024k /proc/mounts"
                    " && grep -qxF hello /host-ro/greeting"
                )
                fine = await runtime.create(trial.spec(("sh", "-c", script), mounts=mounts))
                refused = [
                    await runtime.create(trial.spec(("sh", "-c", f"touch {path}"), mounts=mounts))
                    for path in ("/ro/x", "/host-ro/x")
                ]
                for container_id in (fine, *refused):
                    await runtime.start(container_id)
                    await _wait_state(runtime, container_id, ContainerState.EXITED)
                assert (await runtime.inspect(fine)).exit_code == 0
                assert (host / "out").read_text() == "written\n"
                for container_id in refused:
                    assert (await runtime.inspect(container_id)).exit_code == 1, "a read-only mount took a write"
                assert not (host / "x").exists()
                with _raises(RuntimeFailure):
                    missing = (MountSpec("bind", str(host / "missing"), "/m"),)
                    await runtime.create(trial.spec(mounts=missing))
            finally:
                for info in await runtime.list(trial.labels):
                    await runtime.remove(info.id)
                shutil.rmtree(host, ignore_errors=True)

    # --- entrypoint, hostname, DNS -----------------------------------------------------------------

    async def test_entrypoint_hostname_and_dns_on_the_default_bridge(self) -> None:
        """The entrypoint runs with the command as arguments (an empty one: the command alone); hostname and
        dns/dns_search land in /etc."""
        async with self._trial() as trial:
            script = (
                "grep -qxF named-host /etc/hostname && grep -qxF 'nameserver 10.0.0.53' /etc/resolv.conf"
                " && grep -qxF 'search a.dockyard dockyard' /etc/resolv.conf && exit 7"
            )
            spec = trial.spec(
                (script,),
                entrypoint=("sh", "-c"),
                hostname="named-host",
                dns=("10.0.0.53",),
                dns_search=("a.dockyard", "dockyard"),
            )
            cleared = trial.spec(("sh", "-c", "exit 6"), entrypoint=())
            container_ids = [await trial.runtime.create(spec), await trial.runtime.create(cleared)]
            for container_id in container_ids:
                await trial.runtime.start(container_id)
                await _wait_state(trial.runtime, container_id, ContainerState.EXITED)
            codes = [(await trial.runtime.inspect(c)).exit_code for c in container_ids]
            assert codes == [7, 6], "an empty entrypoint runs the command itself"

    # --- networks ----------------------------------------------------------------------------------

    async def test_networks_attach_address_alias_dns_and_removal(self) -> None:
        """A bridge network: ensured once on its subnet and bridge; a container on it gets an address in the
        subnet, answers to its aliases in Docker's embedded DNS (which a user-defined network's resolv.conf
        names, with the search domains; the spec's dns are its upstreams); in-use networks are neither
        removed nor recreated."""
        async with self._trial() as trial:
            runtime = trial.runtime
            name, bridge = _unique("dy-test-net"), f"dky-t{trial.labels[RUN_LABEL][:8]}"
            subnet, gateway = _test_subnet(trial.labels[RUN_LABEL])
            made = await runtime.ensure_network(name, subnet, gateway, bridge, trial.labels, False)
            assert (made.name, made.subnet, made.gateway, made.bridge) == (name, subnet, gateway, bridge)
            assert dict(made.labels) == trial.labels
            assert await runtime.ensure_network(name, subnet, gateway, bridge, trial.labels, False) == made
            assert await runtime.list_networks(trial.labels) == [made]
            with _raises(RuntimeFailure):
                # Docker refuses a second network on a subnet that overlaps one it has.
                await runtime.ensure_network(f"{name}-2", subnet, gateway, f"{bridge}x", trial.labels, False)

            # A second network, which the server joins too (connected between create and start).
            second, (second_subnet, second_gateway) = f"{name}-b", _test_subnet(trial.labels[RUN_LABEL], 2)
            await runtime.ensure_network(second, second_subnet, second_gateway, f"{bridge}b", trial.labels, True)
            attachments = (NetworkAttachment(name, ("db", "primary")), NetworkAttachment(second))
            server = await runtime.create(trial.spec(networks=attachments))
            await runtime.start(server)
            info = await runtime.inspect(server)
            assert set(info.addresses) == {name, second}
            assert ipaddress.IPv4Address(info.addresses[name]) in ipaddress.IPv4Network(subnet)
            assert ipaddress.IPv4Address(info.addresses[second]) in ipaddress.IPv4Network(second_subnet)
            assert info.addresses[name] != gateway
            assert info.ip_address in info.addresses.values()

            # Two clients: busybox's nslookup tries only the search domains' names when there are any. Only A
            # records are asked for: the embedded DNS forwards a container name's AAAA query to the spec's dns
            # (here a gateway with no server behind it), and busybox would wait for that answer.
            lookup = (
                "nslookup -type=a db && nslookup -type=a primary"
                f" && grep -qxF 'nameserver {EMBEDDED_DNS}' /etc/resolv.conf"
            )
            searching = (
                f"grep -qxF 'nameserver {EMBEDDED_DNS}' /etc/resolv.conf"
                " && grep -qxF 'search a.dockyard dockyard' /etc/resolv.conf"
            )
            clients = [
                await runtime.create(trial.spec(("sh", "-c", lookup), networks=(NetworkAttachment(name),))),
                await runtime.create(
                    trial.spec(
                        ("sh", "-c", searching),
                        networks=(NetworkAttachment(name),),
                        dns=(gateway,),
                        dns_search=("a.dockyard", "dockyard"),
                    )
                ),
            ]
            for client in clients:
                await runtime.start(client)
            for client, what in zip(clients, ("aliases resolved", "resolv.conf as Docker writes it"), strict=True):
                await _wait_state(runtime, client, ContainerState.EXITED)
                assert (await runtime.inspect(client)).exit_code == 0, what
                assert (await runtime.inspect(client)).addresses == {}, "an exited container has no address"

            with _raises(NetworkInUse):
                await runtime.remove_network(name)
            other_subnet, other_gateway = _test_subnet(trial.labels[RUN_LABEL], 1)
            with _raises(NetworkInUse):
                await runtime.ensure_network(name, other_subnet, other_gateway, bridge, trial.labels, False)
            await runtime.remove(server)
            await runtime.remove_network(second)
            moved = await runtime.ensure_network(name, other_subnet, other_gateway, bridge, trial.labels, False)
            assert (moved.subnet, moved.gateway) == (other_subnet, other_gateway)
            assert moved.id != made.id, "recreated on the new subnet"
            await runtime.remove_network(name)
            await runtime.remove_network(name)
            assert await runtime.list_networks(trial.labels) == []
            # Docker looks the network up at start: the container is created, and its start fails.
            orphan = await runtime.create(trial.spec(networks=(NetworkAttachment(name),)))
            with _raises(RuntimeFailure) as caught:
                await runtime.start(orphan)
            assert not isinstance(caught.value, ContainerNotFound)
            assert f"network {name} not found" in str(caught.value)
            assert (await runtime.inspect(orphan)).state is ContainerState.CREATED

    async def test_another_tools_network_is_neither_reused_nor_removed(self) -> None:
        """ensure_network() of a name another tool's network has (`docker compose` names them `<project>_default`)
        raises NotDockyards, whether its settings match or differ, and the network stays as it was."""
        async with self._trial() as trial:
            runtime = trial.runtime
            name, bridge = _unique("dy-test-net"), f"dky-f{trial.labels[RUN_LABEL][:8]}"
            subnet, gateway = _test_subnet(trial.labels[RUN_LABEL], 7)
            other_subnet, other_gateway = _test_subnet(trial.labels[RUN_LABEL], 8)
            theirs = {RUN_LABEL: trial.labels[RUN_LABEL], "com.docker.compose.network": "default"}
            made = await runtime.ensure_network(name, subnet, gateway, bridge, theirs, False)
            try:
                for asked_subnet, asked_gateway in ((subnet, gateway), (other_subnet, other_gateway)):
                    with _raises(NotDockyards) as caught:
                        await runtime.ensure_network(name, asked_subnet, asked_gateway, bridge, trial.labels, False)
                    assert str(caught.value) == (
                        f"network {name} exists on this host and is not Dockyard's "
                        f"(no {dockyard_labels.MANAGED} label); remove or rename it"
                    )
                assert await runtime.list_networks({RUN_LABEL: trial.labels[RUN_LABEL]}) == [made], "not recreated"
            finally:
                await runtime.remove_network(name)

    # --- daemon outages ---------------------------------------------------------------------------

    async def test_daemon_death_is_noticed(self) -> None:
        """When the daemon dies, the event stream and calls raise RuntimeUnavailable within the deadline."""
        await self._check_outage_is_noticed("closed")

    async def test_daemon_hang_is_noticed(self) -> None:
        """When the daemon hangs, the event stream and calls raise RuntimeUnavailable within the deadline."""
        await self._check_outage_is_noticed("hung")

    async def _check_outage_is_noticed(self, mode: OutageMode) -> None:
        """Takes the daemon away in `mode` while a stream is open and a container exists."""
        async with (
            self._trial() as trial,
            self.open_outage(trial.runtime) as (runtime, outage),
            EventLog(runtime, trial.labels) as log,
        ):
            container_id = await runtime.create(trial.spec())
            await log.wait_for(container_id, "create")
            await outage(mode)
            async with asyncio.timeout(DEADLINE):
                with _raises(RuntimeUnavailable):
                    await log.task
                with _raises(RuntimeUnavailable):
                    await runtime.inspect(container_id)
                with _raises(RuntimeUnavailable):
                    await runtime.ping()

    # --- health -----------------------------------------------------------------------------------

    async def _settled_health(self, runtime: ContainerRuntime, container_id: str, status: HealthStatus) -> Health:
        """Waits until the container's health reaches `status` and returns it."""

        async def reached() -> bool:
            health = (await runtime.inspect(container_id)).health
            return health is not None and health.status is status

        await _eventually(reached, f"{container_id[:12]} to be {status}")
        health = (await runtime.inspect(container_id)).health
        assert health is not None
        return health

    async def test_a_passing_check_makes_the_container_healthy(self) -> None:
        """A spec's passing check: health "healthy", streak 0, the check's output, and a health_status event."""
        async with self._trial_with_events() as (trial, events):
            check = HealthConfig(("CMD-SHELL", "echo fine; exit 0"), retries=2, **_FAST)
            container_id = await trial.runtime.create(trial.spec(healthcheck=check))
            await trial.runtime.start(container_id)
            health = await self._settled_health(trial.runtime, container_id, HealthStatus.HEALTHY)
            assert (health.failing_streak, health.output) == (0, "fine\n")
            event = await events.wait_for(container_id, HEALTH_STATUS)
            assert event.health is HealthStatus.HEALTHY
            assert event.labels[RUN_LABEL] == trial.labels[RUN_LABEL]

    async def test_a_failing_check_makes_the_container_unhealthy_after_retries(self) -> None:
        """A failing check: "unhealthy" after `retries` failures in a row, with the output; the container runs on."""
        async with self._trial_with_events() as (trial, events):
            check = HealthConfig(("CMD-SHELL", "echo sick; exit 1"), retries=2, **_FAST)
            container_id = await trial.runtime.create(trial.spec(healthcheck=check))
            await trial.runtime.start(container_id)
            health = await self._settled_health(trial.runtime, container_id, HealthStatus.UNHEALTHY)
            # Docker goes on probing, so the streak may have grown past retries by the time it is read.
            assert health.failing_streak >= 2
            assert health.output == "sick\n"
            event = await events.wait_for(container_id, HEALTH_STATUS)
            assert event.health is HealthStatus.UNHEALTHY
            info = await trial.runtime.inspect(container_id)
            assert info.state is ContainerState.RUNNING, "Docker only reports; stopping is the agent's business"

    async def test_no_check_means_no_health_and_a_running_container_has_an_address(self) -> None:
        """Without any check a container has no health; ["NONE"] is no check either; a running one has an IP."""
        async with self._trial() as trial:
            plain = await trial.started()
            info = await trial.runtime.inspect(plain)
            assert info.health is None
            assert info.ip_address.count(".") == 3, "an IPv4 address on Docker's default bridge"
            disabled = await trial.runtime.create(trial.spec(healthcheck=HealthConfig(("NONE",))))
            await trial.runtime.start(disabled)
            assert (await trial.runtime.inspect(disabled)).health is None

    async def test_the_images_own_check_applies_unless_turned_off(self) -> None:
        """An image's HEALTHCHECK runs without a spec check; ["NONE"] turns it off."""
        if self.healthcheck_image is None:
            return  # the subclass provides no such image
        async with self._trial() as trial:
            own = await trial.runtime.create(trial.spec(image=self.healthcheck_image))
            await trial.runtime.start(own)
            health = await self._settled_health(trial.runtime, own, HealthStatus.HEALTHY)
            assert health.output == "image-check\n"
            spec = trial.spec(image=self.healthcheck_image, healthcheck=HealthConfig(("NONE",)))
            off = await trial.runtime.create(spec)
            await trial.runtime.start(off)
            assert (await trial.runtime.inspect(off)).health is None


def _unique(prefix: str) -> str:
    """A Docker object name no other check or run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _test_subnet(seed: str, offset: int = 0) -> tuple[str, str]:
    """A /24 for a check's network and its gateway: in 10.99.0.0/16, picked by the run's unique label.

    Outside Docker's default pools (172.17-31, 192.168) and Dockyard's default --network-pool (10.128.0.0/9),
    so a check does not collide with real work on the same daemon.
    """
    third = (int(seed[:4], 16) + offset) % 256
    return f"10.99.{third}.0/24", f"10.99.{third}.1"


async def _chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """Streams bytes in pieces, as an image push arrives."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def _renamed_archive(archive: bytes, old: str, new: str) -> bytes:
    """A `docker save` archive with its image tagged `new` instead of `old` (manifest.json and repositories)."""
    new_repo, _, new_tag = new.rpartition(":")
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as source, tarfile.open(fileobj=out, mode="w:") as target:
        for member in source.getmembers():
            extracted = source.extractfile(member) if member.isfile() else None
            data = extracted.read() if extracted is not None else b""
            if member.name == "manifest.json":
                manifest = json.loads(data)
                for entry in manifest:
                    entry["RepoTags"] = [new if tag == old else tag for tag in entry.get("RepoTags") or []]
                data = json.dumps(manifest).encode()
            elif member.name == "repositories":
                # {"repo": {"tag": "<top layer id>"}}: the same layer under the new name.
                tags = next(iter(json.loads(data).values()))
                data = json.dumps({new_repo: {new_tag: next(iter(tags.values()))}}).encode()
            if member.isfile():
                member.size = len(data)
                target.addfile(member, io.BytesIO(data))
            else:
                target.addfile(member)
    return out.getvalue()
