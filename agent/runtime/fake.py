"""An in-memory ContainerRuntime for agent unit tests, faithful to Docker where the conformance suite pins it.

Processes are modelled by their command, so a test chooses the behaviour by choosing the command:

* ``("sh", "-c", "exit N")`` exits by itself with code N as soon as it starts (events: start, die).
* a command whose program is ``sleep`` behaves like busybox ``sleep`` as PID 1: it ignores SIGTERM, so
  stop kills it (events: kill, kill, die 137, stop), as real Docker does after the grace period.
* a command whose program starts with ``/nonexistent/`` cannot be executed: start raises RuntimeFailure,
  the container stays created with exit code 127 and the error set, and no event is emitted.
* anything else runs until stopped and honours SIGTERM (events: kill, die 143, stop). That includes an
  empty command, though on real Docker the test image's default /bin/sh exits at once without stdin.

Health checks are modelled the same way. A container whose spec has a healthcheck (or, with none, whose
image has one, see `image_healthchecks`; ``["NONE"]`` turns the image's off) starts with health
"starting". A check ``["CMD-SHELL", "exit N"]`` or ``["CMD-SHELL", "echo WORDS; exit N"]`` is run once at
start: exit 0 makes it healthy at once, any other code unhealthy at once with a failing streak of `retries`
(Docker's default 3 when unset) and WORDS as the output, each with a ``health_status`` event, as Docker
does after the first interval. Any other check stays "starting" until the test calls `set_health`.

Other events, as Docker 20.10 emits them: create; start; remove of a running container gives
kill, die 137, destroy, of a stopped one destroy. Stopping or starting a container that is already in
that state is a no-op without events, as in Docker. Nothing here waits in real time: a grace period is
recorded but never slept through.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import re
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from agent.runtime.base import (
    HEALTH_STATUS,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    Health,
    HealthConfig,
    HealthStatus,
    HostFacts,
    ImageNotFound,
    NameConflict,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeUnavailable,
)

DEFAULT_FACTS = HostFacts(
    hostname="fake-host",
    cpus=4.0,
    memory_bytes=8 * 1024**3,
    docker_version="20.10.24-fake",
    os="FakeOS",
    arch="x86_64",
)

# Docker's rule for container names.
_VALID_NAME = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_EXIT_COMMAND = re.compile(r"^exit (\d+)$")
_SIGTERM_EXIT = 128 + 15
_SIGKILL_EXIT = 128 + 9
_NOT_EXECUTABLE_EXIT = 127
_MISSING_PROGRAM_PREFIX = "/nonexistent/"
_SCRIPTED_CHECK = re.compile(r"^(?:echo ([^;]*); )?exit (\d+)$")
_DOCKER_DEFAULT_RETRIES = 3


def normalize_image(image: str) -> str:
    """Spells an image reference the way Docker resolves it: an untagged name means ':latest'."""
    if "@" in image:
        return image
    last_component = image.rsplit("/", 1)[-1]
    return image if ":" in last_component else f"{image}:latest"


def _exit_code_of(command: tuple[str, ...]) -> int | None:
    """The code a `sh -c "exit N"` command exits with by itself; None for a long-running command."""
    if len(command) == 3 and command[:2] == ("sh", "-c"):
        match = _EXIT_COMMAND.match(command[2])
        if match:
            return int(match.group(1)) % 256
    return None


def _ignores_sigterm(command: tuple[str, ...]) -> bool:
    """Whether the process, as PID 1 without a handler, ignores SIGTERM like busybox sleep does."""
    return bool(command) and command[0].rsplit("/", 1)[-1] == "sleep"


def _scripted_result(check: HealthConfig) -> Health | None:
    """The health a scripted check (see the module docstring) settles on; None for any other check."""
    if len(check.test) != 2 or check.test[0] != "CMD-SHELL":
        return None
    match = _SCRIPTED_CHECK.match(check.test[1])
    if match is None:
        return None
    output = f"{match.group(1)}\n" if match.group(1) is not None else ""
    if int(match.group(2)) == 0:
        return Health(HealthStatus.HEALTHY, 0, output)
    return Health(HealthStatus.UNHEALTHY, check.retries or _DOCKER_DEFAULT_RETRIES, output)


@dataclass
class _Container:
    """The fake's record of one container."""

    id: str
    name: str
    spec: ContainerSpec
    state: ContainerState = ContainerState.CREATED
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    check: HealthConfig | None = None  # the check in force: the spec's or the image's
    health: Health | None = None
    ip_address: str = ""

    def info(self) -> ContainerInfo:
        """A snapshot of the record as the protocol reports it."""
        return ContainerInfo(
            id=self.id,
            name=self.name,
            image=self.spec.image,
            labels=dict(self.spec.labels),
            state=self.state,
            exit_code=self.exit_code,
            error=self.error,
            oom_killed=self.oom_killed,
            started_at=self.started_at,
            finished_at=self.finished_at,
            # Restart policy is always "no", so Docker never restarts anything.
            restart_count=0,
            health=self.health,
            ip_address=self.ip_address if self.state is ContainerState.RUNNING else "",
        )


@dataclass
class _Subscriber:
    """One open events() iterator: its filter and its mailbox; None in the mailbox means 'daemon gone'."""

    labels: dict[str, str]
    queue: asyncio.Queue[RuntimeEvent | None] = field(default_factory=asyncio.Queue)


class FakeRuntime:
    """A deterministic in-memory ContainerRuntime with controls for what a real host does behind our back."""

    def __init__(
        self,
        images: Iterable[str] = (),
        facts: HostFacts | None = None,
        *,
        pullable: Iterable[str] = (),
        clock: Callable[[], datetime] | None = None,
        image_healthchecks: Mapping[str, HealthConfig] | None = None,
        address: str | None = None,
    ) -> None:
        """Starts with `images` present; pull() succeeds only for `pullable` ones; `clock` stamps times.

        `image_healthchecks` gives images their own HEALTHCHECK, as a Dockerfile would. `address` is every
        running container's IP address (say 127.0.0.1, so a test can probe a server of its own); by
        default each gets a made-up one on Docker's default bridge.
        """
        self._address = address
        self._images = {normalize_image(image) for image in images}
        self._image_checks = {normalize_image(i): c for i, c in (image_healthchecks or {}).items()}
        self._pullable = {normalize_image(image) for image in pullable}
        self._facts = facts or DEFAULT_FACTS
        self._clock = clock or (lambda: datetime.now(UTC))
        self._containers: dict[str, _Container] = {}
        self._subscribers: list[_Subscriber] = []
        self._available = True
        self._shutting_down = False
        self._serial = 0
        self.calls: list[tuple[str, ...]] = []
        """Every protocol call the fake daemon served, e.g. ("create", name) or ("stop", id, "10")."""

    # --- the protocol -------------------------------------------------------------------------

    async def host_facts(self) -> HostFacts:
        """Returns the configured host facts."""
        await self._serve("host_facts")
        return self._facts

    async def ping(self) -> None:
        """Raises RuntimeUnavailable when the fake daemon is down or shutting down."""
        await self._serve("ping")
        if self._shutting_down:
            raise RuntimeUnavailable("the fake daemon is shutting down")

    async def has_image(self, image: str) -> bool:
        """Tells whether the image is present locally."""
        await self._serve("has_image", image)
        return normalize_image(image) in self._images

    async def pull(self, image: str) -> None:
        """Makes a pullable image present; raises ImageNotFound for any other that is not already here."""
        await self._serve("pull", image)
        reference = normalize_image(image)
        if reference not in self._images and reference not in self._pullable:
            raise ImageNotFound(f"pull access denied for {image}, repository does not exist")
        self._images.add(reference)

    async def create(self, spec: ContainerSpec) -> str:
        """Creates (does not start) a container and returns its id; raises ImageNotFound or NameConflict."""
        await self._serve("create", spec.name)
        if normalize_image(spec.image) not in self._images:
            raise ImageNotFound(f"No such image: {spec.image}")
        if spec.name and not _VALID_NAME.match(spec.name):
            raise RuntimeFailure(f"Invalid container name ({spec.name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if spec.name and any(c.name == spec.name.lstrip("/") for c in self._containers.values()):
            raise NameConflict(f'Conflict. The container name "/{spec.name.lstrip("/")}" is already in use')
        self._serial += 1
        container_id = hashlib.sha256(f"fake-container-{self._serial}".encode()).hexdigest()
        # Docker makes up a name when none is given.
        name = spec.name.lstrip("/") or f"fake_{container_id[:12]}"
        check = spec.healthcheck
        image_check = self._image_checks.get(normalize_image(spec.image))
        if check is None:
            check = image_check
        elif not check.test:
            # Docker's rule: a check without a test keeps the image's test, with the spec's timing.
            check = replace(check, test=image_check.test) if image_check is not None else None
        if check is not None and check.test[:1] == ("NONE",):
            check = None
        # Docker's default bridge hands out addresses from 172.17.0.2 on.
        address = self._address or f"172.17.{self._serial // 250}.{self._serial % 250 + 2}"
        container = _Container(id=container_id, name=name, spec=spec, check=check, ip_address=address)
        self._containers[container_id] = container
        self._emit(container, "create")
        return container_id

    async def start(self, container_id: str) -> None:
        """Starts a created or exited container; raises ContainerNotFound, or RuntimeFailure with why."""
        await self._serve("start", container_id)
        container = self._find(container_id)
        if container.state is ContainerState.RUNNING:
            return
        command = container.spec.command
        if command and command[0].startswith(_MISSING_PROGRAM_PREFIX):
            container.exit_code = _NOT_EXECUTABLE_EXIT
            container.error = f'exec: "{command[0]}": stat {command[0]}: no such file or directory'
            raise RuntimeFailure(container.error)
        container.state = ContainerState.RUNNING
        container.exit_code = 0
        container.error = ""
        container.oom_killed = False
        container.started_at = self._clock()
        container.health = Health(HealthStatus.STARTING) if container.check is not None else None
        self._emit(container, "start")
        exit_code = _exit_code_of(command)
        if exit_code is not None:
            self._exit(container, exit_code)
            return
        if container.check is not None:
            result = _scripted_result(container.check)
            if result is not None:
                self._set_health(container, result)

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """Stops a running container (exit 143; 137 for SIGTERM-deaf sleep); others are left as they are."""
        await self._serve("stop", container_id, f"{grace_seconds:g}")
        container = self._find(container_id)
        if container.state is not ContainerState.RUNNING:
            return
        self._emit(container, "kill")
        if _ignores_sigterm(container.spec.command):
            self._emit(container, "kill")
            self._exit(container, _SIGKILL_EXIT)
        else:
            self._exit(container, _SIGTERM_EXIT)
        self._emit(container, "stop")

    async def remove(self, container_id: str) -> None:
        """Removes the container, killing it if it runs; a missing container is not an error."""
        await self._serve("remove", container_id)
        try:
            container = self._find(container_id)
        except ContainerNotFound:
            return
        self._destroy(container)

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Returns the container's current state; raises ContainerNotFound."""
        await self._serve("inspect", container_id)
        return self._find(container_id).info()

    async def list(self, labels: Mapping[str, str]) -> builtins.list[ContainerInfo]:
        """Returns every container, running or not, that carries all the given labels, newest first."""
        await self._serve("list", *(f"{k}={v}" for k, v in sorted(labels.items())))
        matching = [c.info() for c in self._containers.values() if _matches(c.spec.labels, labels)]
        return matching[::-1]

    def events(self, labels: Mapping[str, str]) -> AsyncGenerator[RuntimeEvent, None]:
        """Streams events of containers with all the given labels, from this call on."""
        # Subscribing now, not at the first iteration, matches DockerRuntime's "since this call".
        subscriber = _Subscriber(dict(labels))
        if self._available:
            self._subscribers.append(subscriber)
        else:
            subscriber.queue.put_nowait(None)
        return self._event_stream(subscriber)

    async def _event_stream(self, subscriber: _Subscriber) -> AsyncGenerator[RuntimeEvent, None]:
        """The generator behind events()."""
        try:
            while True:
                event = await subscriber.queue.get()
                if event is None:
                    raise RuntimeUnavailable("the fake daemon went away")
                yield event
        finally:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

    async def close(self) -> None:
        """Releases nothing: the fake holds no connection."""

    # --- test controls ------------------------------------------------------------------------

    def set_available(self, available: bool) -> None:
        """Takes the fake daemon down (every call and open event stream raises RuntimeUnavailable) or up."""
        self._available = available
        if available:
            self._shutting_down = False
        if not available:
            for subscriber in self._subscribers:
                subscriber.queue.put_nowait(None)
            self._subscribers.clear()

    def shut_down(self) -> None:
        """Begins dockerd's shutdown as the agent sees it: new connections are refused (ping raises) while the
        calls and event streams already connected go on, and every running container is stopped (events:
        kill, die, stop; 143, or 137 for one deaf to SIGTERM). set_available(False) then ends the rest;
        set_available(True) is the daemon back."""
        self._shutting_down = True
        for container in list(self._containers.values()):
            if container.state is ContainerState.RUNNING:
                self._emit(container, "kill")
                deaf = _ignores_sigterm(container.spec.command)
                self._exit(container, _SIGKILL_EXIT if deaf else _SIGTERM_EXIT)
                self._emit(container, "stop")

    def add_image(self, image: str) -> None:
        """Makes an image present locally, as if someone loaded it on the host."""
        self._images.add(normalize_image(image))

    def crash(self, container_id: str, exit_code: int) -> None:
        """Makes a running container exit by itself with exit_code (event: die)."""
        container = self._running(container_id)
        self._exit(container, exit_code)

    def kill_behind_back(self, container_id: str) -> None:
        """Kills a running container as `docker kill` from someone else would (events: kill, die 137)."""
        container = self._running(container_id)
        self._emit(container, "kill")
        self._exit(container, _SIGKILL_EXIT)

    def oom_kill(self, container_id: str) -> None:
        """Kills a running container for exceeding its memory (events: oom, die 137; oom_killed set)."""
        container = self._running(container_id)
        container.oom_killed = True
        self._emit(container, "oom")
        self._exit(container, _SIGKILL_EXIT)

    def set_health(
        self, container_id: str, status: HealthStatus, output: str = "", failing_streak: int | None = None
    ) -> None:
        """Sets a running container's health as a probe would (event health_status when the state changes).

        The failing streak defaults to 0 when healthy and one more than before otherwise, as Docker counts.
        """
        container = self._running(container_id)
        if failing_streak is None:
            previous = container.health.failing_streak if container.health is not None else 0
            failing_streak = 0 if status is HealthStatus.HEALTHY else previous + 1
        self._set_health(container, Health(status, failing_streak, output))

    def remove_behind_back(self, container_id: str) -> None:
        """Removes a container as `docker rm -f` from someone else would (events as for remove())."""
        self._destroy(self._find(container_id))

    def count(self, operation: str) -> int:
        """How many times the protocol call named `operation` (e.g. "create") was served."""
        return sum(1 for call in self.calls if call[0] == operation)

    # --- internals ----------------------------------------------------------------------------

    async def _serve(self, operation: str, *args: str) -> None:
        """Yields to the loop like a real round trip, then fails if down, else logs the call."""
        await asyncio.sleep(0)
        if not self._available:
            raise RuntimeUnavailable("the fake daemon is down")
        self.calls.append((operation, *args))

    def _find(self, reference: str) -> _Container:
        """Looks a container up as Docker does: full id, name, or unique id prefix."""
        if reference in self._containers:
            return self._containers[reference]
        name = reference.lstrip("/")
        for container in self._containers.values():
            if container.name == name:
                return container
        prefixed = [c for c in self._containers.values() if reference and c.id.startswith(reference)]
        if len(prefixed) == 1:
            return prefixed[0]
        raise ContainerNotFound(f"No such container: {reference}")

    def _running(self, container_id: str) -> _Container:
        """The running container with that id; a test control on anything else is a test bug."""
        container = self._find(container_id)
        if container.state is not ContainerState.RUNNING:
            raise RuntimeFailure(f"container {container_id} is {container.state}, not running")
        return container

    def _exit(self, container: _Container, exit_code: int) -> None:
        """Records the process's end and emits die."""
        container.state = ContainerState.EXITED
        container.exit_code = exit_code
        container.finished_at = self._clock()
        self._emit(container, "die", exit_code)

    def _set_health(self, container: _Container, health: Health) -> None:
        """Records a health result and emits health_status if the state changed."""
        changed = container.health is None or container.health.status is not health.status
        container.health = health
        if changed:
            self._emit(container, HEALTH_STATUS, health=health.status)

    def _destroy(self, container: _Container) -> None:
        """Kills the container if needed and deletes it, with Docker's events for `rm -f`."""
        if container.state is ContainerState.RUNNING:
            self._emit(container, "kill")
            self._exit(container, _SIGKILL_EXIT)
        del self._containers[container.id]
        self._emit(container, "destroy")

    def _emit(
        self, container: _Container, action: str, exit_code: int | None = None, health: HealthStatus | None = None
    ) -> None:
        """Delivers an event to every subscriber whose labels the container carries."""
        for subscriber in self._subscribers:
            if _matches(container.spec.labels, subscriber.labels):
                event = RuntimeEvent(container.id, action, dict(container.spec.labels), exit_code, health)
                subscriber.queue.put_nowait(event)


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether `labels` carries every key=value of `wanted`."""
    return all(labels.get(key) == value for key, value in wanted.items())
