"""The container runtime protocol that the agent drives, and the values it speaks in."""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from dockyard.labels import MANAGED


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


class MountKind(enum.StrEnum):
    """What a mount's source is (Docker's Mount.Type)."""

    VOLUME = "volume"  # a named local volume; Docker creates it (unlabelled) if it does not exist
    BIND = "bind"  # a host path, which must exist
    TMPFS = "tmpfs"  # memory-backed, gone with the container; the source is empty


@dataclass(frozen=True)
class MountSpec:
    """A filesystem mounted into a container at `target` (an absolute path)."""

    kind: str  # a MountKind value: "volume", "bind" or "tmpfs"
    source: str  # the volume's name, the host path, or "" for tmpfs
    target: str
    read_only: bool = False
    tmpfs_size_bytes: int = 0  # tmpfs only; 0 is Docker's default (half the host's memory)


@dataclass(frozen=True)
class NetworkAttachment:
    """A Docker network the container joins, with the extra names it answers to on that network."""

    network: str  # the Docker network's name
    aliases: tuple[str, ...] = ()


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
    # None keeps the image's ENTRYPOINT; () clears it (Docker's Entrypoint [""]).
    entrypoint: tuple[str, ...] | None = None
    mounts: tuple[MountSpec, ...] = ()
    # The first network is the one the container is created on, the rest are connected before it starts;
    # none leaves it on Docker's default bridge.
    networks: tuple[NetworkAttachment, ...] = ()
    # Nameservers and search domains for /etc/resolv.conf. On a user-defined network Docker writes its
    # embedded DNS (127.0.0.11) as the nameserver and forwards to these; on the default bridge it writes them.
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    hostname: str = ""  # "" is Docker's default: the container id's first 12 characters


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
    # Docker network name -> the container's IPv4 address on it, while it runs; empty otherwise.
    addresses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeInfo:
    """A local volume on the host."""

    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class NetworkInfo:
    """A Docker bridge network on the host: its IPv4 subnet (CIDR), gateway, and bridge interface name."""

    name: str
    id: str
    subnet: str
    gateway: str
    bridge: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry, passed to pull (server as in the image reference's host part)."""

    server: str
    username: str
    password: str = field(repr=False)


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


class VolumeInUse(RuntimeFailure):
    """The volume cannot be removed: a container (running or not) still mounts it."""


class NetworkInUse(RuntimeFailure):
    """The network cannot be removed or recreated: a container is still attached to it."""


class NotDockyards(RuntimeFailure):
    """A volume or network of the name asked for exists on the host but is not Dockyard's (labels.is_dockyards).

    ensure_volume and ensure_network raise it rather than mount someone else's data or remove their network.
    """


# What the operator can do about another tool's object of a name Dockyard needs: the runtimes' one wording.
_FOREIGN_FIXES = {
    "network": "remove or rename it",
    "volume": "remove or rename it on this host, or keep the service off this host with a placement constraint",
}


def not_dockyards(kind: str, name: str) -> NotDockyards:
    """The refusal of another tool's "volume" or "network", naming it and what the host's operator can do."""
    return NotDockyards(
        f"{kind} {name} exists on this host and is not Dockyard's (no {MANAGED} label); {_FOREIGN_FIXES[kind]}"
    )


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

    async def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        """Pulls the image, with the registry's credentials if given; raises ImageNotFound when it cannot."""
        ...

    async def list_images(self) -> list[str]:
        """Returns the repo:tag references of every local image (untagged images have none)."""
        ...

    async def image_id(self, image: str) -> str | None:
        """Returns the local image's id ("sha256:..."), or None when the host lacks it."""
        ...

    async def load_image(self, chunks: AsyncIterator[bytes]) -> list[str]:
        """Loads a `docker save` archive streamed in chunks (`docker load`); returns the references loaded.

        Raises RuntimeFailure when the archive is not a valid image archive.
        """
        ...

    def save_image(self, image: str) -> AsyncIterator[bytes]:
        """Streams the image as a `docker save` archive; iterating raises ImageNotFound when it is missing."""
        ...

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """Creates the local volume unless it exists (an existing one keeps its labels and data).

        An existing one that is not Dockyard's (dockyard.labels.is_dockyards) raises NotDockyards: never mounted.
        """
        ...

    async def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeInfo]:
        """Returns the volumes carrying all the given labels, by name."""
        ...

    async def remove_volume(self, name: str) -> None:
        """Removes the volume and its data; a missing one is no error; raises VolumeInUse while mounted."""
        ...

    async def ensure_network(
        self, name: str, subnet: str, gateway: str, bridge: str, labels: Mapping[str, str], masquerade: bool
    ) -> NetworkInfo:
        """Creates a bridge network on `subnet` with that gateway and bridge interface unless it exists as such.

        One of that name with another subnet, gateway or bridge is recreated when no container is attached
        to it, else NetworkInUse is raised. One of that name that is not Dockyard's (dockyard.labels.is_dockyards)
        is neither reused nor removed: NotDockyards. `masquerade` False turns off Docker's NAT for traffic leaving it.
        """
        ...

    async def list_networks(self, labels: Mapping[str, str]) -> list[NetworkInfo]:
        """Returns the networks carrying all the given labels, by name."""
        ...

    async def remove_network(self, name: str) -> None:
        """Removes the network; a missing one is no error; raises NetworkInUse while a container is attached."""
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
