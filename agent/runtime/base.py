"""The container runtime protocol that the agent drives, and the values it speaks in."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class PortBinding:
    """A published port; host_port 0 lets the runtime pick a free one."""

    host_port: int
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class HealthConfig:
    """A check Docker runs inside the container, as its API's Healthcheck (durations in nanoseconds).

    `test` is ["CMD", arg...], ["CMD-SHELL", "command"] or ["NONE"] (the image's own check turned off).
    """

    test: tuple[str, ...]
    interval_ns: int = 0  # 0: Docker's default
    timeout_ns: int = 0
    retries: int = 0
    start_period_ns: int = 0
    start_interval_ns: int = 0  # honoured by Docker 25 (API 1.44) and later; older daemons ignore it


class HealthStatus(enum.StrEnum):
    """Docker's health states (State.Health.Status)."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Health:
    """A container's health as last probed: its state, failures in a row, and the last probe's output."""

    status: HealthStatus
    failing_streak: int = 0
    output: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[PortBinding, ...] = ()
    cpu_limit: float = 0.0  # CPUs; 0 means unlimited
    memory_limit_bytes: int = 0  # 0 means unlimited
    # None leaves the image's own HEALTHCHECK (if any) in force; HealthConfig(("NONE",)) turns it off.
    healthcheck: HealthConfig | None = None


class ContainerState(enum.StrEnum):
    """Docker's container states."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


@dataclass(frozen=True)
class ContainerInfo:
    """What the runtime reports of one container."""

    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    state: ContainerState
    exit_code: int = 0
    error: str = ""
    oom_killed: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    restart_count: int = 0
    # None: the container has no health check that Docker runs (neither the spec's nor the image's).
    health: Health | None = None
    ip_address: str = ""  # on its first network, for probes from the host; "" when it has none


# The action of a RuntimeEvent for a change of health ("health_status: healthy" in Docker's stream).
HEALTH_STATUS = "health_status"


@dataclass(frozen=True)
class RuntimeEvent:
    """A container lifecycle event (create, start, die, oom, destroy, health_status, ...)."""

    container_id: str
    action: str
    labels: Mapping[str, str]
    exit_code: int | None = None
    health: HealthStatus | None = None  # the new health, for a health_status event


@dataclass(frozen=True)
class HostFacts:
    """The host's capacity and versions, reported when the agent registers."""

    hostname: str
    cpus: float
    memory_bytes: int
    docker_version: str
    os: str
    arch: str


class RuntimeFailure(Exception):
    """Base of every error a runtime raises."""


class ImageNotFound(RuntimeFailure):
    """The image is not on the host and could not be pulled."""


class ContainerNotFound(RuntimeFailure):
    """No container with that id or name."""


class NameConflict(RuntimeFailure):
    """A container with that name already exists."""


class RuntimeUnavailable(RuntimeFailure):
    """The daemon does not answer."""


class DaemonShuttingDown(RuntimeFailure):
    """The daemon answered but refused because it is shutting down (or lost its containerd): the host's fault."""


class ContainerRuntime(Protocol):
    """The operations the agent needs from a container engine; every call is idempotent where it can be."""

    async def host_facts(self) -> HostFacts:
        """Returns the host's facts; raises RuntimeUnavailable when the daemon does not answer."""
        ...

    async def ping(self) -> None:
        """Checks on a new connection that the daemon takes calls now; raises RuntimeUnavailable if not.

        A dockerd shutting down closes its listener first, then stops its containers, while it still
        answers on connections it already has: a failed ping just after a container died tells that
        Docker's shutdown, not the container, ended it.
        """
        ...

    async def has_image(self, image: str) -> bool:
        """Tells whether the image is present locally."""
        ...

    async def pull(self, image: str) -> None:
        """Pulls the image; raises ImageNotFound when it cannot."""
        ...

    async def create(self, spec: ContainerSpec) -> str:
        """Creates (does not start) a container and returns its id; raises ImageNotFound or NameConflict."""
        ...

    async def start(self, container_id: str) -> None:
        """Starts a created or exited container; raises ContainerNotFound, or RuntimeFailure with the reason."""
        ...

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """Sends SIGTERM, then SIGKILL after the grace period; a stopped container is left as it is."""
        ...

    async def remove(self, container_id: str) -> None:
        """Removes the container, stopping it by force if needed; a missing container is not an error."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Returns the container's current state; raises ContainerNotFound."""
        ...

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Returns every container, running or not, that carries all the given labels."""
        ...

    def events(self, labels: Mapping[str, str]) -> AsyncGenerator[RuntimeEvent, None]:
        """Streams container events for containers with all the given labels, from now on.

        The iterator ends or raises RuntimeUnavailable when the daemon goes away; the caller re-subscribes.
        """
        ...

    async def close(self) -> None:
        """Releases the connection."""
        ...
