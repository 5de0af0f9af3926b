"""The ContainerRuntime over a real dockerd, through aiodocker: the only module that imports aiodocker."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from datetime import datetime
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from agent.runtime.base import (
    HEALTH_STATUS,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerState,
    DaemonShuttingDown,
    Health,
    HealthConfig,
    HealthStatus,
    HostFacts,
    ImageNotFound,
    MountKind,
    MountSpec,
    NameConflict,
    NetworkAttachment,
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
from dockyard.images import DEFAULT_REGISTRY, names_registry
from dockyard.labels import is_dockyards

# aiodocker reports a failed connection as a DockerError with this pseudo HTTP status.
_CONNECTION_FAILED = 900
# Docker's way of saying "never": the zero value of Go's time.Time.
_ZERO_TIME_PREFIX = "0001-01-01"
# Event attributes that Docker adds next to the container's labels; they are not labels.
_DOCKER_EVENT_ATTRIBUTES = frozenset(
    {"image", "name", "exitCode", "signal", "execID", "execDuration", "oldName", "container"}
)
# Connecting to a local socket is instant; a daemon that does not accept within this is gone.
_CONNECT_TIMEOUT = 10.0
# Inspects one list() runs at once. Unbounded, a relist of N containers opened N connections to dockerd, which
# the client then kept alive between relists: at 100 tasks, 100 idle connections and 3 MB more RSS 10 s after
# the apply, 7 MB a minute later (bench/agent_footprint.py --tasks 100). On a local socket an inspect takes
# about a millisecond, so a few at a time relist hundreds of containers well within the relist period.
_LIST_INSPECTS = 8
# How a failure that is the daemon's own state reads (moby's shutdown errors, a containerd that went away);
# a task whose create or start fails so is not to blame.
_DAEMON_FAULTS = ("shutting down", "containerd.sock", "transport is closing")

# The bridge driver's options: the host interface's name, and whether traffic leaving the subnet is NATed.
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
MASQUERADE_OPTION = "com.docker.network.bridge.enable_ip_masquerade"
# How `docker load` names what it loaded in its progress stream.
_LOADED_IMAGE = "Loaded image: "
_LOADED_IMAGE_ID = "Loaded image ID: "
_SAVE_CHUNK = 64 * 1024
# The default network's name; a container with no networks of its own is on it.
_DEFAULT_BRIDGE = "bridge"

_Json = dict[str, Any]


class _Errors:
    """Which RuntimeFailure a call's HTTP 404 and 409 mean."""

    def __init__(
        self,
        not_found: type[RuntimeFailure] = ContainerNotFound,
        conflict: type[RuntimeFailure] = RuntimeFailure,
    ) -> None:
        self.not_found = not_found
        self.conflict = conflict

    def translate(self, exc: DockerError) -> RuntimeFailure:
        """Returns the RuntimeFailure that stands for a DockerError."""
        message = str(exc.message)
        if exc.status == _CONNECTION_FAILED:
            return RuntimeUnavailable(message)
        if exc.status == 404:
            if self.not_found is ContainerNotFound and "no such container" not in message.lower():
                # Starting a container whose network is gone is a 404 too ("network X not found").
                return RuntimeFailure(message)
            return self.not_found(message)
        if exc.status == 409:
            return self.conflict(message)
        if any(fault in message.lower() for fault in _DAEMON_FAULTS):
            return DaemonShuttingDown(message)
        return RuntimeFailure(message)


_CONTAINER_CALL = _Errors()


class _Missing(RuntimeFailure):
    """A volume or network that is not there (a 404 of its own calls); never leaves this module."""


@contextlib.contextmanager
def _mapped_errors(errors: _Errors = _CONTAINER_CALL) -> Iterator[None]:
    """Turns aiodocker, aiohttp and socket errors into the protocol's RuntimeFailure family."""
    try:
        yield
    except DockerError as exc:
        raise errors.translate(exc) from exc
    except TimeoutError as exc:
        # Before OSError, of which TimeoutError is a subclass.
        raise RuntimeUnavailable("docker did not answer in time") from exc
    except (aiohttp.ClientError, OSError) as exc:
        # OSError covers a missing or refused socket file that slips past aiodocker's wrapping.
        raise RuntimeUnavailable(f"cannot reach docker: {exc}") from exc


def _parse_time(value: object) -> datetime | None:
    """Parses Docker's RFC 3339 timestamps; Go's zero time and garbage become None."""
    if not isinstance(value, str) or not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    try:
        # Python keeps microseconds; Docker's nanoseconds beyond that are dropped by fromisoformat.
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _parse_info(data: Mapping[str, Any]) -> ContainerInfo:
    """Builds a ContainerInfo from a `docker inspect` document."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    try:
        status = ContainerState(state.get("Status", ""))
    except ValueError as exc:
        raise RuntimeFailure(f"docker reported an unknown container state {state.get('Status')!r}") from exc
    return ContainerInfo(
        id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        labels=dict(config.get("Labels") or {}),
        state=status,
        exit_code=int(state.get("ExitCode") or 0),
        error=str(state.get("Error") or ""),
        oom_killed=bool(state.get("OOMKilled", False)),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        restart_count=int(data.get("RestartCount") or 0),
        health=_parse_health(state.get("Health")),
        ip_address=_ip_address(data.get("NetworkSettings") or {}),
        addresses=_addresses(data.get("NetworkSettings") or {}),
    )


def _addresses(settings: Mapping[str, Any]) -> dict[str, str]:
    """Network name -> the container's IPv4 address on it, for every network that gave it one."""
    networks = settings.get("Networks") or {}
    found = {name: str((endpoint or {}).get("IPAddress") or "") for name, endpoint in networks.items()}
    return {name: address for name, address in found.items() if address}


def _parse_health(health: object) -> Health | None:
    """Builds a Health from State.Health; a container without a check (or Docker's "none") gives None."""
    if not isinstance(health, Mapping):
        return None
    try:
        status = HealthStatus(str(health.get("Status") or ""))
    except ValueError:
        return None
    log = health.get("Log") or []
    last = log[-1] if isinstance(log, list) and log and isinstance(log[-1], Mapping) else {}
    return Health(status, int(health.get("FailingStreak") or 0), str(last.get("Output") or ""))


def _ip_address(settings: Mapping[str, Any]) -> str:
    """The container's address on the default bridge, else on its first network that gave it one."""
    address = str(settings.get("IPAddress") or "")
    if address:
        return address
    networks = settings.get("Networks") or {}
    for name in sorted(networks):
        address = str((networks[name] or {}).get("IPAddress") or "")
        if address:
            return address
    return ""


def _parse_event(raw: Mapping[str, Any]) -> RuntimeEvent | None:
    """Builds a RuntimeEvent from one `docker events` message; non-container messages give None."""
    if raw.get("Type") != "container":
        return None
    actor = raw.get("Actor") or {}
    attributes: Mapping[str, str] = actor.get("Attributes") or {}
    action = str(raw.get("Action") or raw.get("status") or "")
    exit_code: int | None = None
    if action == "die" and "exitCode" in attributes:
        with contextlib.suppress(ValueError):
            exit_code = int(attributes["exitCode"])
    health: HealthStatus | None = None
    if action.startswith(HEALTH_STATUS):
        # Docker names the new state in the action itself: "health_status: healthy".
        with contextlib.suppress(ValueError):
            health = HealthStatus(action.partition(":")[2].strip())
        action = HEALTH_STATUS
    return RuntimeEvent(
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        action=action,
        labels={k: v for k, v in attributes.items() if k not in _DOCKER_EVENT_ATTRIBUTES},
        exit_code=exit_code,
        health=health,
    )


def _label_filter(labels: Mapping[str, str]) -> list[str]:
    """Docker's `label=key=value` filter terms; Docker requires every one of them to match."""
    return [f"{key}={value}" for key, value in sorted(labels.items())]


def _create_config(spec: ContainerSpec) -> _Json:
    """The body of POST /containers/create for a spec."""
    exposed: _Json = {}
    bindings: dict[str, list[_Json]] = {}
    for port in spec.ports:
        key = f"{port.container_port}/{port.protocol}"
        exposed[key] = {}
        # An empty HostPort asks Docker to pick a free ephemeral port.
        host_port = str(port.host_port) if port.host_port else ""
        bindings.setdefault(key, []).append({"HostPort": host_port})
    config: _Json = {
        "Image": spec.image,
        "Env": [f"{key}={value}" for key, value in spec.env.items()],
        "Labels": dict(spec.labels),
        "ExposedPorts": exposed,
        "HostConfig": {
            "PortBindings": bindings,
            "NanoCpus": round(spec.cpu_limit * 1e9),
            "Memory": spec.memory_limit_bytes,
            # The orchestrator replaces failed tasks itself; a Docker restart would hide the failure.
            "RestartPolicy": {"Name": "no"},
        },
    }
    if spec.command:
        config["Cmd"] = list(spec.command)
    if spec.entrypoint is not None:
        # Docker reads an empty list as "the image's"; [""] is how its CLI clears the entrypoint.
        config["Entrypoint"] = list(spec.entrypoint) or [""]
    if spec.hostname:
        config["Hostname"] = spec.hostname
    if spec.healthcheck is not None:
        config["Healthcheck"] = _healthcheck(spec.healthcheck)
    host_config = config["HostConfig"]
    if spec.mounts:
        host_config["Mounts"] = [_mount(mount) for mount in spec.mounts]
    if spec.dns:
        host_config["Dns"] = list(spec.dns)
    if spec.dns_search:
        host_config["DnsSearch"] = list(spec.dns_search)
    if spec.networks:
        # Docker before API 1.44 takes one network at create; the others are connected before the start.
        first = spec.networks[0]
        host_config["NetworkMode"] = first.network
        config["NetworkingConfig"] = {"EndpointsConfig": {first.network: _endpoint(first)}}
    return config


def _mount(mount: MountSpec) -> _Json:
    """Docker's Mount object (HostConfig.Mounts): unlike Binds, it never creates a missing host path."""
    body: _Json = {"Type": mount.kind, "Target": mount.target, "ReadOnly": mount.read_only}
    if mount.kind != MountKind.TMPFS:
        body["Source"] = mount.source
    elif mount.tmpfs_size_bytes:
        body["TmpfsOptions"] = {"SizeBytes": mount.tmpfs_size_bytes}
    return body


def _endpoint(attachment: NetworkAttachment) -> _Json:
    """An EndpointSettings body: the aliases the container answers to on that network."""
    return {"Aliases": list(attachment.aliases)} if attachment.aliases else {}


def _network_info(data: Mapping[str, Any]) -> NetworkInfo:
    """Builds a NetworkInfo from a `docker network inspect` document (its first IPv4 pool)."""
    pools = (data.get("IPAM") or {}).get("Config") or [{}]
    pool = next((p for p in pools if ":" not in str(p.get("Subnet", ""))), pools[0])
    options = data.get("Options") or {}
    return NetworkInfo(
        name=str(data.get("Name", "")),
        id=str(data.get("Id", "")),
        subnet=str(pool.get("Subnet") or ""),
        gateway=str(pool.get("Gateway") or ""),
        bridge=str(options.get(BRIDGE_NAME_OPTION) or ""),
        labels=dict(data.get("Labels") or {}),
    )


def _masquerades(data: Mapping[str, Any]) -> bool:
    """Whether a network NATs what leaves it (Docker's default when the option is absent)."""
    return str((data.get("Options") or {}).get(MASQUERADE_OPTION, "true")).lower() == "true"


def _healthcheck(check: HealthConfig) -> _Json:
    """Docker's Healthcheck object; a zero duration or count is left out, so Docker's default applies."""
    body: _Json = {"Test": list(check.test)}
    for key, value in (
        ("Interval", check.interval_ns),
        ("Timeout", check.timeout_ns),
        ("Retries", check.retries),
        ("StartPeriod", check.start_period_ns),
        ("StartInterval", check.start_interval_ns),
    ):
        if value:
            body[key] = value
    return body


async def _close_quietly(client: aiodocker.Docker) -> None:
    """Closes a client and its HTTP session whatever its event stream met.

    aiodocker's close() stops the event stream first and re-raises the error that ended it (a daemon
    gone mid-stream), before it closes the session, which then leaks; the stream's task is forgotten once
    stopped, so closing again reaches the session.
    """
    events: Any = client.events  # DockerEvents is untyped in aiodocker
    # Whatever ended the stream was already reported by it (or nobody is left to care).
    with contextlib.suppress(Exception):
        await events.stop()
    with contextlib.suppress(DockerError, aiohttp.ClientError, OSError):
        await client.close()


class DockerRuntime:
    """ContainerRuntime backed by a dockerd reached over its HTTP API."""

    def __init__(
        self,
        url: str | None = None,
        *,
        request_timeout: float = 60.0,
        pull_timeout: float = 600.0,
        heartbeat_seconds: float = 5.0,
    ) -> None:
        """Talks to `url` (e.g. unix:///var/run/docker.sock); None means DOCKER_HOST or the default socket."""
        self._url = url
        self._request_timeout = request_timeout
        self._pull_timeout = pull_timeout
        self._heartbeat = heartbeat_seconds
        self._docker: aiodocker.Docker | None = None

    def _new_client(self, total: float | None) -> aiodocker.Docker:
        """Opens a client; created lazily because aiohttp sessions belong to a running loop."""
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=_CONNECT_TIMEOUT)
        try:
            return aiodocker.Docker(url=self._url, timeout=timeout)
        except (ValueError, DockerError) as exc:
            raise RuntimeUnavailable(f"no docker daemon configured: {exc}") from exc

    def _client(self) -> aiodocker.Docker:
        """The shared client for request/response calls."""
        if self._docker is None:
            self._docker = self._new_client(self._request_timeout)
        return self._docker

    def _volumes(self) -> Any:
        """aiodocker's volume calls (untyped in aiodocker)."""
        return self._client().volumes

    def _network_handle(self, name_or_id: str) -> Any:
        """An aiodocker handle on a network (untyped in aiodocker); making it sends nothing."""
        networks: Any = aiodocker.networks
        return networks.DockerNetwork(self._client(), name_or_id)

    def _container(self, container_id: str) -> Any:
        """An aiodocker handle on a container; making it sends nothing."""
        return self._client().containers.container(container_id)

    async def host_facts(self) -> HostFacts:
        """Returns the host's facts from `docker info`; raises RuntimeUnavailable when there is no answer."""
        with _mapped_errors():
            info = await self._client().system.info()
        return HostFacts(
            hostname=str(info.get("Name", "")),
            cpus=float(info.get("NCPU") or 0),
            memory_bytes=int(info.get("MemTotal") or 0),
            docker_version=str(info.get("ServerVersion", "")),
            os=str(info.get("OperatingSystem", "")),
            arch=str(info.get("Architecture", "")),
        )

    async def ping(self) -> None:
        """Checks on a new connection that the daemon takes calls now; raises RuntimeUnavailable if not."""
        # A client of its own: the shared one would reuse a kept-alive connection, which a dockerd that is
        # shutting down still serves after it stopped accepting new ones.
        client = self._new_client(self._heartbeat)
        try:
            with _mapped_errors():
                await client.version()
        finally:
            await _close_quietly(client)

    async def has_image(self, image: str) -> bool:
        """Tells whether the image is present locally."""
        try:
            with _mapped_errors(_Errors(not_found=ImageNotFound)):
                await self._client().images.inspect(image)
        except ImageNotFound:
            return False
        return True

    async def pull(self, image: str, auth: RegistryAuth | None = None) -> None:
        """Pulls the image (with the credentials if given) in the pull timeout; raises ImageNotFound if it cannot."""
        deadline = asyncio.timeout(self._pull_timeout)
        reference = image
        credentials: _Json | None = None
        if auth is not None:
            credentials = {"username": auth.username, "password": auth.password}
            # aiodocker takes the credentials' server from the reference, so it must name its registry.
            if not names_registry(image):
                reference = f"{DEFAULT_REGISTRY}/{image}"
        try:
            with _mapped_errors(_Errors(not_found=ImageNotFound)):
                async with deadline:
                    await self._client().images.pull(reference, auth=credentials)
        except RuntimeUnavailable as exc:
            if deadline.expired():
                raise ImageNotFound(f"pulling {image} timed out after {self._pull_timeout:g}s") from exc
            raise
        except RuntimeFailure as exc:
            # An unknown, unreachable or refusing registry all mean the same to the agent.
            raise ImageNotFound(f"cannot pull {image}: {exc}") from exc

    async def list_images(self) -> list[str]:
        """Returns the repo:tag references of every local image."""
        with _mapped_errors():
            images = await self._client().images.list()
        tags = {str(tag) for image in images for tag in image.get("RepoTags") or []}
        return sorted(tag for tag in tags if tag != "<none>:<none>")

    async def image_id(self, image: str) -> str | None:
        """Returns the local image's id, or None when the host lacks it."""
        try:
            with _mapped_errors(_Errors(not_found=ImageNotFound)):
                data = await self._client().images.inspect(image)
        except ImageNotFound:
            return None
        return str(data["Id"])

    async def load_image(self, chunks: AsyncIterator[bytes]) -> list[str]:
        """Streams a `docker save` archive into `docker load` (never whole in memory); returns what it loaded."""
        with _mapped_errors():
            messages = await self._client().images.import_image(data=chunks)
        loaded: list[str] = []
        for message in messages:
            line = str(message.get("stream") or "").strip()
            for prefix in (_LOADED_IMAGE, _LOADED_IMAGE_ID):
                if line.startswith(prefix):
                    loaded.append(line.removeprefix(prefix))
                    break
        if not loaded:
            raise RuntimeFailure(f"docker load loaded nothing: {messages}")
        return loaded

    def save_image(self, image: str) -> AsyncIterator[bytes]:
        """Streams the image as a `docker save` archive; raises ImageNotFound when it is missing."""
        return self._saved(image)

    async def _saved(self, image: str) -> AsyncGenerator[bytes, None]:
        """The generator behind save_image(); a client of its own, without the request timeout."""
        client = self._new_client(None)
        try:
            # Docker answers a missing image with a 404 only once the stream is asked for, so check first.
            with _mapped_errors(_Errors(not_found=ImageNotFound)):
                await client.images.inspect(image)
                async with client.images.export_image(image) as content:
                    async for chunk in content.iter_chunked(_SAVE_CHUNK):
                        yield chunk
        finally:
            await _close_quietly(client)

    async def ensure_volume(self, name: str, labels: Mapping[str, str]) -> VolumeInfo:
        """Creates the local volume unless it exists; raises NotDockyards for an existing one that is not Dockyard's."""
        try:
            with _mapped_errors(_Errors(not_found=_Missing)):
                existing = await (await self._volumes().get(name)).show()
        except _Missing:
            existing = None
        if existing is not None and not is_dockyards(existing.get("Labels") or {}):
            raise not_dockyards("volume", name)
        with _mapped_errors():
            # Docker's create returns an existing volume as it is, even one another tool made meanwhile.
            volume = await self._volumes().create({"Name": name, "Driver": "local", "Labels": dict(labels)})
            data = await volume.show()
        found = dict(data.get("Labels") or {})
        if found != dict(labels) and not is_dockyards(found):
            raise not_dockyards("volume", name)
        return VolumeInfo(str(data["Name"]), found)

    async def list_volumes(self, labels: Mapping[str, str]) -> list[VolumeInfo]:
        """Returns the volumes carrying all the given labels, by name."""
        filters = {"label": _label_filter(labels)} if labels else None
        with _mapped_errors():
            data = await self._volumes().list(filters=filters)
        volumes = [VolumeInfo(str(v["Name"]), dict(v.get("Labels") or {})) for v in data.get("Volumes") or []]
        return sorted(volumes, key=lambda volume: volume.name)

    async def remove_volume(self, name: str) -> None:
        """Removes the volume; a missing one is no error; raises VolumeInUse while a container mounts it."""
        try:
            with _mapped_errors(_Errors(not_found=_Missing, conflict=VolumeInUse)):
                volume = await self._volumes().get(name)
                await volume.delete()
        except _Missing:
            return

    async def ensure_network(
        self, name: str, subnet: str, gateway: str, bridge: str, labels: Mapping[str, str], masquerade: bool
    ) -> NetworkInfo:
        """Creates the bridge network unless one of that name has this subnet, gateway, bridge and NAT.

        One of that name that is not Dockyard's (`docker compose` names its networks as a stack's are) is
        neither reused nor removed: NotDockyards.
        """
        existing = await self._network(name)
        if existing is not None and not is_dockyards(existing.get("Labels") or {}):
            raise not_dockyards("network", name)
        if existing is not None:
            info = _network_info(existing)
            if (info.subnet, info.gateway, info.bridge, _masquerades(existing)) == (
                subnet,
                gateway,
                bridge,
                masquerade,
            ):
                return info
            if existing.get("Containers"):
                users = ", ".join(sorted(str(c.get("Name", "")) for c in existing["Containers"].values()))
                raise NetworkInUse(f"network {name} differs from the one asked for but has containers: {users}")
            await self.remove_network(name)
        config: _Json = {
            "Name": name,
            "Driver": "bridge",
            "CheckDuplicate": True,
            "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway}]},
            "Options": {BRIDGE_NAME_OPTION: bridge, MASQUERADE_OPTION: "true" if masquerade else "false"},
            "Labels": dict(labels),
        }
        with _mapped_errors():
            network = await self._client().networks.create(config)
            return _network_info(await network.show())

    async def _network(self, name: str) -> _Json | None:
        """The inspect document of the network with exactly that name, or None."""
        with _mapped_errors():
            found = await self._client().networks.list(filters={"name": name})
        # Docker's name filter matches substrings.
        match = next((n for n in found if n.get("Name") == name), None)
        if match is None:
            return None
        try:
            with _mapped_errors(_Errors(not_found=_Missing)):
                data: _Json = await self._network_handle(str(match["Id"])).show()
                return data
        except _Missing:
            return None

    async def list_networks(self, labels: Mapping[str, str]) -> list[NetworkInfo]:
        """Returns the networks carrying all the given labels, by name."""
        filters = {"label": _label_filter(labels)} if labels else None
        with _mapped_errors():
            data = await self._client().networks.list(filters=filters)
        return sorted((_network_info(n) for n in data), key=lambda network: network.name)

    async def remove_network(self, name: str) -> None:
        """Removes the network; a missing one is no error; raises NetworkInUse while a container runs on it."""
        existing = await self._network(name)
        if existing is None:
            return
        network = self._network_handle(str(existing["Id"]))
        try:
            # Docker says "has active endpoints" with a 403 (20.10) or a 409 (later).
            with _mapped_errors(_Errors(not_found=_Missing, conflict=NetworkInUse)):
                await network.delete()
        except _Missing:
            return
        except RuntimeFailure as exc:
            if "active endpoints" in str(exc):
                raise NetworkInUse(str(exc)) from exc
            raise

    async def create(self, spec: ContainerSpec) -> str:
        """Creates (not starts) a container on its networks; returns its id; raises ImageNotFound or NameConflict."""
        try:
            with _mapped_errors(_Errors(not_found=ImageNotFound, conflict=NameConflict)):
                container = await self._client().containers.create(_create_config(spec), name=spec.name or None)
        except ImageNotFound as exc:
            # A 404 at create also means a network that does not exist.
            if "no such image" not in str(exc).lower():
                raise RuntimeFailure(str(exc)) from exc
            raise
        container_id = str(container.id)
        try:
            for attachment in spec.networks[1:]:
                network = self._network_handle(attachment.network)
                with _mapped_errors():
                    await network.connect({"Container": container_id, "EndpointConfig": _endpoint(attachment)})
        except RuntimeFailure:
            # Half made: take it away so a retry starts afresh under the same name.
            await self.remove(container_id)
            raise
        return container_id

    async def start(self, container_id: str) -> None:
        """Starts a created or exited container; raises ContainerNotFound, or RuntimeFailure with why."""
        with _mapped_errors():
            await self._container(container_id).start()

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        """Sends SIGTERM, then SIGKILL after the grace (rounded up to whole seconds, Docker's unit)."""
        grace = max(0, math.ceil(grace_seconds))
        # The daemon answers only once the container is down, so the request must outlive the grace.
        timeout = aiohttp.ClientTimeout(total=grace + self._request_timeout, sock_connect=_CONNECT_TIMEOUT)
        with _mapped_errors():
            await self._container(container_id).stop(t=grace, timeout=timeout)

    async def remove(self, container_id: str) -> None:
        """Force-removes the container and its anonymous volumes; a missing one is not an error."""
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, sock_connect=_CONNECT_TIMEOUT)
        try:
            with _mapped_errors():
                await self._container(container_id).delete(force=True, v=True, timeout=timeout)
        except ContainerNotFound:
            return
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as exc:
            if "already in progress" not in str(exc):
                raise

    async def inspect(self, container_id: str) -> ContainerInfo:
        """Returns the container's current state; raises ContainerNotFound."""
        with _mapped_errors():
            data = await self._container(container_id).show()
        return _parse_info(data)

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Returns every container, running or not, that carries all the given labels."""
        filters = {"label": _label_filter(labels)} if labels else {}
        with _mapped_errors():
            summaries = await self._client().containers.list(all=True, filters=filters)
        # The summary lacks exit codes and times, so each container is inspected; one removed
        # in between is simply no longer there.
        slots = asyncio.Semaphore(_LIST_INSPECTS)

        async def inspect(container_id: str) -> ContainerInfo:
            async with slots:
                return await self.inspect(container_id)

        results = await asyncio.gather(*(inspect(c.id) for c in summaries), return_exceptions=True)
        infos: list[ContainerInfo] = []
        for result in results:
            if isinstance(result, ContainerInfo):
                infos.append(result)
            elif not isinstance(result, ContainerNotFound):
                raise result
        return infos

    def events(self, labels: Mapping[str, str]) -> AsyncGenerator[RuntimeEvent, None]:
        """Streams container events with all the given labels from the moment of this call.

        Raises RuntimeUnavailable when the stream breaks or the daemon stops answering the heartbeat.
        """
        # Asking Docker for events since now (its clock is ours on a local socket) keeps the events
        # that happen before the stream's HTTP request is actually made.
        return self._event_stream(dict(labels), time.time())

    async def _event_stream(self, labels: dict[str, str], since: float) -> AsyncGenerator[RuntimeEvent, None]:
        """The generator behind events(); owns a dedicated client so its filters are its own."""
        filters: dict[str, list[str]] = {"type": ["container"]}
        if labels:
            filters["label"] = _label_filter(labels)
        # aiodocker runs one event stream per client, so every subscription gets its own client.
        client = self._new_client(None)
        # DockerEvents is untyped in aiodocker.
        docker_events: Any = client.events
        try:
            subscriber = docker_events.subscribe(filters=filters, since=f"{since:.9f}")
            while True:
                raw = await self._next_message(subscriber)
                if raw is None:
                    raise await self._stream_end(docker_events)
                event = _parse_event(raw)
                if event is not None:
                    yield event
        finally:
            await _close_quietly(client)

    async def _next_message(self, subscriber: Any) -> Mapping[str, Any] | None:
        """Waits for the next event message, pinging the daemon whenever the stream is quiet."""
        while True:
            try:
                async with asyncio.timeout(self._heartbeat):
                    message: Mapping[str, Any] | None = await subscriber.get()
                    return message
            except TimeoutError:
                await self._ping()

    async def _ping(self) -> None:
        """Raises RuntimeUnavailable unless the daemon answers within one heartbeat."""
        with _mapped_errors():
            async with asyncio.timeout(self._heartbeat):
                await self._client().version()

    @staticmethod
    async def _stream_end(docker_events: Any) -> RuntimeFailure:
        """Explains why the event stream ended: it never does while the daemon lives."""
        try:
            with _mapped_errors():
                await docker_events.stop()
        except RuntimeFailure as exc:
            return exc
        except ValueError as exc:
            # A line of the stream that is not JSON: the connection is not to be trusted any more.
            return RuntimeFailure(f"docker sent a malformed event: {exc}")
        return RuntimeUnavailable("docker closed the event stream")

    async def close(self) -> None:
        """Releases the shared connection; open event streams close with their iterators."""
        if self._docker is not None:
            docker, self._docker = self._docker, None
            await _close_quietly(docker)
