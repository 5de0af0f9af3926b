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

A ``sh -c`` script of simple commands joined by `` && `` runs at once at start and exits with the first
failing command's code (0 when all pass): ``exit N``, ``touch PATH``, ``echo WORDS > PATH``, ``test -e|-f
PATH``, ``grep -q[F][x] TEXT PATH`` and ``nslookup -type=a NAME`` (found, as by Docker's embedded DNS,
when a running container on a user-defined network shared with this one has that name, alias or short id).
They act on the container's files as Docker lays them out: named volumes (shared by every container
mounting them, kept until remove_volume), bind mounts (the real host path), tmpfs (the container's own), a
read-only mount refusing writes (exit 1), and the files Docker writes: /etc/hostname, /etc/resolv.conf (on
a user-defined network Docker's embedded DNS 127.0.0.11 with the search domains; on the default bridge the
spec's nameservers) and /proc/mounts (a line per mount). A container joins its networks when it starts
(one that no longer exists fails the start), getting the next free address of each network's subnet, and
leaves them when it exits. Images have ids ("sha256:" + a digest of the reference unless loaded with
another), and save_image writes a `docker save` archive (manifest.json with RepoTags) that load_image
reads back.

Other events, as Docker 20.10 emits them: create; start; remove of a running container gives
kill, die 137, destroy, of a stopped one destroy. Stopping or starting a container that is already in
that state is a no-op without events, as in Docker. Nothing here waits in real time: a grace period is
recorded but never slept through.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import io
import ipaddress
import json
import os
import re
import shlex
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
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
    MountKind,
    MountSpec,
    NameConflict,
    NetworkInfo,
    NetworkInUse,
    RegistryAuth,
    RuntimeEvent,
    RuntimeFailure,
    RuntimeUnavailable,
    VolumeInfo,
    VolumeInUse,
    not_dockyards,
)
from dockyard.images import normalize_image
from dockyard.labels import is_dockyards

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
# Docker's rule for volume names (at least two characters).
_VALID_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# Docker's embedded DNS server, the only nameserver of a container on a user-defined network.
EMBEDDED_DNS = "127.0.0.11"
# The fake host's own resolver, which a container on the default bridge without `dns` inherits.
HOST_RESOLVER = "10.0.2.3"
# Docker's default network, which a container without networks of its own is on.
DEFAULT_BRIDGE = "bridge"
# Linux's limit on interface names (IFNAMSIZ - 1).
_MAX_INTERFACE_NAME = 15
_SAVE_CHUNK = 64 * 1024
_GREP_FLAGS = frozenset("qFx")


def _argv(spec: ContainerSpec) -> tuple[str, ...]:
    """The process a container runs: the entrypoint (the test image has none of its own), then the command."""
    return (spec.entrypoint or ()) + spec.command


def _script_of(command: tuple[str, ...]) -> list[list[str]] | None:
    """The simple commands of a scripted `sh -c` (see the module docstring); None for anything else."""
    if len(command) != 3 or command[:2] != ("sh", "-c"):
        return None
    steps: list[list[str]] = []
    for piece in command[2].split(" && "):
        try:
            words = shlex.split(piece)
        except ValueError:
            return None
        if not _is_scripted(words):
            return None
        steps.append(words)
    return steps


def _is_scripted(words: list[str]) -> bool:
    """Whether the fake knows how to run this one simple command."""
    match words:
        case ["exit", code]:
            return _EXIT_COMMAND.match(f"exit {code}") is not None
        case ["touch", _] | ["test", "-e" | "-f", _] | ["nslookup", "-type=a", _]:
            return True
        case ["echo", *_, ">", _]:
            return True
        case ["grep", flags, _, _]:
            return flags.startswith("-q") and set(flags[1:]) <= _GREP_FLAGS
    return False


def _ignores_sigterm(command: tuple[str, ...]) -> bool:  # the argv, see _argv
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
    addresses: dict[str, str] = field(default_factory=dict)  # while running: network name -> address
    rootfs: dict[str, str] = field(default_factory=dict)  # files written outside any mount: path -> content
    tmpfs: dict[str, dict[str, str]] = field(default_factory=dict)  # mount target -> its files

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
            ip_address=self.address() if self.state is ContainerState.RUNNING else "",
            addresses=self.network_addresses(),
        )

    def network_addresses(self) -> dict[str, str]:
        """Network name -> address while running; one without networks of its own is on Docker's "bridge"."""
        if self.state is not ContainerState.RUNNING:
            return {}
        return dict(self.addresses) if self.spec.networks else {DEFAULT_BRIDGE: self.ip_address}

    def address(self) -> str:
        """Its address on the default bridge, else on its first network by name (as DockerRuntime reads it)."""
        if not self.spec.networks:
            return self.ip_address
        return next((self.addresses[name] for name in sorted(self.addresses)), "")


@dataclass
class _Volume:
    """A local volume: its labels and its files (path under the volume's root -> content)."""

    labels: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class _Network:
    """A bridge network and whether Docker masquerades what leaves it."""

    info: NetworkInfo
    masquerade: bool


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
        private: Mapping[str, RegistryAuth] | None = None,
    ) -> None:
        """Starts with `images` present; pull() succeeds only for `pullable` ones; `clock` stamps times.

        `image_healthchecks` gives images their own HEALTHCHECK, as a Dockerfile would. `address` is every
        running container's IP address on the default bridge (say 127.0.0.1, so a test can probe a server
        of its own); by default each gets a made-up one. `private` images are pullable only with exactly
        those credentials.
        """
        self._address = address
        self._images = {normalize_image(image) for image in images}
        self._image_checks = {normalize_image(i): c for i, c in (image_healthchecks or {}).items()}
        self._private = {normalize_image(image): auth for image, auth in (private or {}).items()}
        self._pullable = {normalize_image(image) for image in pullable} | set(self._private)
        self._image_ids: dict[str, str] = {}  # reference -> id, for images loaded with an id of their own
        self._volumes: dict[str, _Volume] = {}
        self._networks: dict[str, _Network] = {}
        self._facts = facts or DEFAULT_FACTS
        self._clock = clock or (lambda: datetime.now(UTC))
        self._containers: dict[str, _Container] = {}
        self._subscribers: list[_Subscriber] = []
        self._available = True
        self._shutting_down = False
        self._serial = 0
        self._network_serial = 0
        self.calls: list[tuple[str, ...]] = []
        """Every protocol call the fake daemon served, e.g. ("create", name) or ("stop", id, "10")."""
        self.pull_auths: list[tuple[str, RegistryAuth | None]] = []
        """The credentials each pull() was given, in order."""

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

    async def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        """Makes a pullable image present; raises ImageNotFound for any other that is not already here.

        A private image needs its exact credentials, as a registry answers "unauthorized" otherwise.
        """
        await self._serve("pull", image)
        self.pull_auths.append((image, auth))
        reference = normalize_image(image)
        if reference not in self._images and reference not in self._pullable:
            raise ImageNotFound(f"pull access denied for {image}, repository does not exist")
        required = self._private.get(reference)
        if required is not None and (
            auth is None or (auth.username, auth.password) != (required.username, required.password)
        ):
            raise ImageNotFound(f"cannot pull {image}: unauthorized: authentication required")
        self._images.add(reference)

    async def list_images(self) -> builtins.list[str]:
        """Returns the references of the local images, sorted."""
        await self._serve("list_images")
        return sorted(self._images)

    async def image_id(self, image: str) -> str | None:
        """Returns the image's id, or None when it is not here."""
        await self._serve("image_id", image)
        reference = normalize_image(image)
        if reference not in self._images:
            return None
        return self._id_of(reference)

    async def load_image(self, chunks: AsyncIterator[bytes]) -> builtins.list[str]:
        """Reads a `docker save` archive (manifest.json's RepoTags and Config) and makes its images present."""
        await self._serve("load_image")
        archive = bytearray()
        async for chunk in chunks:
            archive.extend(chunk)
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(archive)), mode="r:") as tar:
                member = tar.extractfile("manifest.json")
                if member is None:
                    raise KeyError("manifest.json")
                manifest = json.loads(member.read())
        except (tarfile.TarError, KeyError, ValueError) as exc:
            raise RuntimeFailure(f"invalid image archive: {exc}") from exc
        loaded: builtins.list[str] = []
        for entry in manifest:
            image_id = "sha256:" + str(entry.get("Config", "")).removesuffix(".json").removeprefix("blobs/sha256/")
            tags = [normalize_image(str(tag)) for tag in entry.get("RepoTags") or []]
            for tag in tags:
                self._images.add(tag)
                self._image_ids[tag] = image_id
            loaded.extend(tags or [image_id])
        return loaded

    def save_image(self, image: str) -> AsyncIterator[bytes]:
        """Streams a `docker save` archive of the image; raises ImageNotFound when it is not here."""
        return self._saved(image)

    async def _saved(self, image: str) -> AsyncGenerator[bytes, None]:
        """The generator behind save_image()."""
        await self._serve("save_image", image)
        reference = normalize_image(image)
        if reference not in self._images:
            raise ImageNotFound(f"No such image: {image}")
        digest = self._id_of(reference).removeprefix("sha256:")
        config = json.dumps({"architecture": self._facts.arch, "config": {}}).encode()
        manifest = json.dumps([{"Config": f"{digest}.json", "RepoTags": [reference], "Layers": []}]).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:") as tar:
            for name, data in ((f"{digest}.json", config), ("manifest.json", manifest)):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        archive = buffer.getvalue()
        for offset in range(0, len(archive), _SAVE_CHUNK):
            yield archive[offset : offset + _SAVE_CHUNK]

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """Creates the volume unless it exists; an existing one keeps its labels and files; NotDockyards if not ours."""
        await self._serve("ensure_volume", name)
        if not _VALID_VOLUME_NAME.match(name):
            raise RuntimeFailure(
                f'create {name}: "{name}" includes invalid characters for a local volume name, '
                "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        existing = self._volumes.get(name)
        if existing is not None and not is_dockyards(existing.labels):
            raise not_dockyards("volume", name)
        volume = self._volumes.setdefault(name, _Volume(dict(labels)))
        return VolumeInfo(name, dict(volume.labels))

    async def list_volumes(self, labels: Mapping[str, str]) -> builtins.list[VolumeInfo]:
        """Returns the volumes carrying all the given labels, by name."""
        await self._serve("list_volumes", *(f"{k}={v}" for k, v in sorted(labels.items())))
        return [
            VolumeInfo(name, dict(volume.labels))
            for name, volume in sorted(self._volumes.items())
            if _matches(volume.labels, labels)
        ]

    async def remove_volume(self, name: str) -> None:
        """Removes the volume and its files; raises VolumeInUse while any container (even stopped) mounts it."""
        await self._serve("remove_volume", name)
        if name not in self._volumes:
            return
        users = sorted(c.id for c in self._containers.values() if _mounts_volume(c.spec.mounts, name))
        if users:
            raise VolumeInUse(f"remove {name}: volume is in use - [{', '.join(users)}]")
        del self._volumes[name]

    async def ensure_network(
        self, name: str, subnet: str, gateway: str, bridge: str, labels: Mapping[str, str], masquerade: bool
    ) -> NetworkInfo:
        """Creates the bridge network unless it exists as asked; recreates one that differs when unused.

        One that is not Dockyard's is neither reused nor recreated: NotDockyards.
        """
        await self._serve("ensure_network", name, subnet)
        try:
            network = ipaddress.IPv4Network(subnet)
            if ipaddress.IPv4Address(gateway) not in network:
                raise ValueError(f"no matching subnet for gateway {gateway}")
        except ValueError as exc:
            raise RuntimeFailure(f"invalid network {name}: {exc}") from exc
        if len(bridge) > _MAX_INTERFACE_NAME:
            raise RuntimeFailure(f"bridge name {bridge!r} is longer than {_MAX_INTERFACE_NAME} characters")
        existing = self._networks.get(name)
        if existing is not None and not is_dockyards(existing.info.labels):
            raise not_dockyards("network", name)
        if existing is not None:
            info = existing.info
            if (info.subnet, info.gateway, info.bridge) == (str(network), gateway, bridge):
                return info
            self._refuse_if_attached(name, "recreate")
            del self._networks[name]
        for other in self._networks.values():
            if network.overlaps(ipaddress.IPv4Network(other.info.subnet)):
                raise RuntimeFailure(f"Pool overlaps with other one on this address space ({other.info.name})")
        self._network_serial += 1
        network_id = hashlib.sha256(f"fake-network-{self._network_serial}".encode()).hexdigest()
        info = NetworkInfo(name, network_id, str(network), gateway, bridge, dict(labels))
        self._networks[name] = _Network(info, masquerade)
        return info

    async def list_networks(self, labels: Mapping[str, str]) -> builtins.list[NetworkInfo]:
        """Returns the networks carrying all the given labels, by name."""
        await self._serve("list_networks", *(f"{k}={v}" for k, v in sorted(labels.items())))
        return [n.info for _, n in sorted(self._networks.items()) if _matches(n.info.labels, labels)]

    async def remove_network(self, name: str) -> None:
        """Removes the network; raises NetworkInUse while a running container is attached to it."""
        await self._serve("remove_network", name)
        if name not in self._networks:
            return
        self._refuse_if_attached(name, "remove")
        del self._networks[name]

    async def create(self, spec: ContainerSpec) -> str:
        """Creates (does not start) a container and returns its id; raises ImageNotFound or NameConflict."""
        await self._serve("create", spec.name)
        if normalize_image(spec.image) not in self._images:
            raise ImageNotFound(f"No such image: {spec.image}")
        if spec.name and not _VALID_NAME.match(spec.name):
            raise RuntimeFailure(f"Invalid container name ({spec.name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if spec.name and any(c.name == spec.name.lstrip("/") for c in self._containers.values()):
            raise NameConflict(f'Conflict. The container name "/{spec.name.lstrip("/")}" is already in use')
        self._check_mounts(spec.mounts)
        for mount in spec.mounts:
            # Docker creates a named volume that does not exist yet, without labels.
            if mount.kind == MountKind.VOLUME:
                self._volumes.setdefault(mount.source, _Volume({}))
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
        command = _argv(container.spec)
        if command and command[0].startswith(_MISSING_PROGRAM_PREFIX):
            container.exit_code = _NOT_EXECUTABLE_EXIT
            container.error = f'exec: "{command[0]}": stat {command[0]}: no such file or directory'
            raise RuntimeFailure(container.error)
        for attachment in container.spec.networks:
            # Docker looks networks up at start, not at create: one missing (or removed since) fails the start.
            if attachment.network not in self._networks:
                container.error = f"network {attachment.network} not found"
                raise RuntimeFailure(container.error)
        for attachment in container.spec.networks:
            container.addresses[attachment.network] = self._free_address(attachment.network)
        container.state = ContainerState.RUNNING
        container.exit_code = 0
        container.error = ""
        container.oom_killed = False
        container.started_at = self._clock()
        container.health = Health(HealthStatus.STARTING) if container.check is not None else None
        self._emit(container, "start")
        script = _script_of(command)
        if script is not None:
            self._exit(container, self._run_script(container, script))
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
        if _ignores_sigterm(_argv(container.spec)):
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
                deaf = _ignores_sigterm(_argv(container.spec))
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

    def remove_image(self, image: str) -> None:
        """Deletes a local image, as `docker rmi` on the host would."""
        reference = normalize_image(image)
        self._images.discard(reference)
        self._image_ids.pop(reference, None)

    def volume_files(self, name: str) -> dict[str, str]:
        """The files in a volume (path under its root -> content); raises KeyError for a missing volume."""
        return dict(self._volumes[name].files)

    def network_masquerades(self, name: str) -> bool:
        """Whether Docker would masquerade traffic leaving the named network."""
        return self._networks[name].masquerade

    def aliases(self, container_id: str) -> dict[str, tuple[str, ...]]:
        """The names a container answers to on each of its networks (its short id and the spec's aliases)."""
        container = self._find(container_id)
        return {a.network: (container.id[:12], *a.aliases) for a in container.spec.networks}

    # --- internals ----------------------------------------------------------------------------

    def _id_of(self, reference: str) -> str:
        """A present image's id: the one it was loaded with, or a digest of its reference."""
        return self._image_ids.get(reference) or "sha256:" + hashlib.sha256(reference.encode()).hexdigest()

    def _check_mounts(self, mounts: Iterable[MountSpec]) -> None:
        """Refuses mounts as Docker's create does: bad kinds, missing bind sources, two on one target."""
        targets: set[str] = set()
        for mount in mounts:
            if mount.kind not in set(MountKind):
                raise RuntimeFailure(f"mount type unknown: {mount.kind!r}")
            if not mount.target.startswith("/"):
                raise RuntimeFailure(f"invalid mount config: mount path must be absolute: {mount.target}")
            if mount.target in targets:
                raise RuntimeFailure(f"Duplicate mount point: {mount.target}")
            targets.add(mount.target)
            if mount.kind == MountKind.BIND and not os.path.exists(mount.source):
                raise RuntimeFailure(
                    f'invalid mount config for type "bind": bind source path does not exist: {mount.source}'
                )
            if mount.kind == MountKind.TMPFS and mount.source:
                raise RuntimeFailure('invalid mount config for type "tmpfs": source must not be specified')
            if mount.kind == MountKind.VOLUME and not _VALID_VOLUME_NAME.match(mount.source):
                raise RuntimeFailure(f'invalid mount config for type "volume": invalid volume name {mount.source!r}')

    def _refuse_if_attached(self, name: str, action: str) -> None:
        """Raises NetworkInUse when a running container is attached to the network."""
        users = sorted(c.name for c in self._containers.values() if name in c.addresses)
        if users:
            raise NetworkInUse(
                f"error while removing network: network {name} has active endpoints ({', '.join(users)})"
            )

    def _free_address(self, network_name: str) -> str:
        """The lowest address of the network's subnet that is neither its gateway nor taken, as Docker's IPAM."""
        info = self._networks[network_name].info
        taken = {c.addresses.get(network_name) for c in self._containers.values()} | {info.gateway}
        for host in ipaddress.IPv4Network(info.subnet).hosts():
            if str(host) not in taken:
                return str(host)
        raise RuntimeFailure(f"no available IPv4 addresses on this network's address pools: {network_name}")

    # --- the scripted shell (see the module docstring) ------------------------------------------

    def _run_script(self, container: _Container, script: builtins.list[builtins.list[str]]) -> int:
        """Runs the simple commands in order; the first failing one's code is the exit code."""
        for words in script:
            code = self._run_step(container, words)
            if code != 0:
                return code
        return 0

    def _run_step(self, container: _Container, words: builtins.list[str]) -> int:
        """Runs one simple command (already checked by _is_scripted) and returns its exit code."""
        match words:
            case ["exit", code]:
                return int(code) % 256
            case ["touch", path]:
                existing = self._read(container, path)
                return 0 if self._write(container, path, existing or "") else 1
            case ["echo", *text, ">", path]:
                return 0 if self._write(container, path, " ".join(text) + "\n") else 1
            case ["test", _, path]:
                return 0 if self._read(container, path) is not None else 1
            case ["nslookup", _, name]:
                return 0 if self._resolves(container, name) else 1
            case ["grep", flags, pattern, path]:
                content = self._read(container, path)
                if content is None:
                    return 2
                lines = content.splitlines()
                if "x" in flags:
                    found = pattern in lines
                else:
                    found = any(pattern in line if "F" in flags else re.search(pattern, line) for line in lines)
                return 0 if found else 1
        raise AssertionError(f"not a scripted command: {words}")

    def _resolves(self, container: _Container, name: str) -> bool:
        """Whether Docker's embedded DNS answers `name` to this container (user-defined networks only)."""
        mine = {a.network for a in container.spec.networks}
        for other in self._containers.values():
            if other.state is not ContainerState.RUNNING:
                continue
            for attachment in other.spec.networks:
                if attachment.network in mine and name in (other.name, other.id[:12], *attachment.aliases):
                    return True
        return False

    def _mount_at(self, container: _Container, path: str) -> tuple[MountSpec | None, str]:
        """The mount a path falls in (the deepest) and the path under the mount's root."""
        best: MountSpec | None = None
        for mount in container.spec.mounts:
            target = mount.target.rstrip("/")
            if (path == target or path.startswith(f"{target}/")) and (
                best is None or len(target) > len(best.target.rstrip("/"))
            ):
                best = mount
        if best is None:
            return None, path
        return best, path[len(best.target.rstrip("/")) :].lstrip("/")

    def _read(self, container: _Container, path: str) -> str | None:
        """A file's content as the container sees it; None when there is no such file."""
        mount, inner = self._mount_at(container, path)
        if mount is None:
            generated = self._generated_file(container, path)
            return generated if generated is not None else container.rootfs.get(path)
        if mount.kind == MountKind.BIND:
            host_path = os.path.join(mount.source, inner) if inner else mount.source
            try:
                with open(host_path, encoding="utf-8", errors="replace") as file:
                    return file.read()
            except OSError:
                return None
        if mount.kind == MountKind.VOLUME:
            return self._volumes[mount.source].files.get(inner)
        return container.tmpfs.get(mount.target, {}).get(inner)

    def _write(self, container: _Container, path: str, content: str) -> bool:
        """Writes a file as the container would; False when the mount (or /proc) is read-only."""
        mount, inner = self._mount_at(container, path)
        if mount is None:
            if path.startswith("/proc/"):
                return False
            container.rootfs[path] = content
            return True
        if mount.read_only:
            return False
        if mount.kind == MountKind.BIND:
            host_path = os.path.join(mount.source, inner) if inner else mount.source
            try:
                with open(host_path, "w", encoding="utf-8") as file:
                    file.write(content)
            except OSError:
                return False
            return True
        if mount.kind == MountKind.VOLUME:
            self._volumes[mount.source].files[inner] = content
        else:
            container.tmpfs.setdefault(mount.target, {})[inner] = content
        return True

    def _generated_file(self, container: _Container, path: str) -> str | None:
        """The files Docker writes into every container (when not written over)."""
        spec = container.spec
        if path == "/etc/hostname":
            return container.rootfs.get(path, f"{spec.hostname or container.id[:12]}\n")
        if path == "/etc/resolv.conf" and path not in container.rootfs:
            lines = [f"search {' '.join(spec.dns_search)}"] if spec.dns_search else []
            if spec.networks:
                # A user-defined network: Docker's embedded DNS answers and forwards to spec.dns.
                lines += [f"nameserver {EMBEDDED_DNS}", "options ndots:0"]
            else:
                lines += [f"nameserver {server}" for server in spec.dns or (HOST_RESOLVER,)]
            return "\n".join(lines) + "\n"
        if path == "/proc/mounts":
            return "".join(self._mount_line(m) for m in spec.mounts)
        return None

    def _mount_line(self, mount: MountSpec) -> str:
        """A mount's line in /proc/mounts, as the kernel writes it in a Docker container."""
        mode = "ro" if mount.read_only else "rw"
        if mount.kind == MountKind.TMPFS:
            size = mount.tmpfs_size_bytes or self._facts.memory_bytes // 2
            return f"tmpfs {mount.target} tmpfs {mode},nosuid,nodev,noexec,relatime,size={size // 1024}k 0 0\n"
        return f"/dev/root {mount.target} ext4 {mode},relatime 0 0\n"

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
        """Records the process's end (it leaves its networks) and emits die."""
        container.state = ContainerState.EXITED
        container.addresses.clear()
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


def _mounts_volume(mounts: Iterable[MountSpec], name: str) -> bool:
    """Whether any of the mounts is of the named volume."""
    return any(m.kind == MountKind.VOLUME and m.source == name for m in mounts)


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Whether `labels` carries every key=value of `wanted`."""
    return all(labels.get(key) == value for key, value in wanted.items())
