"""Host policy: what a service spec may ask of this host, decided by the host's operator, not by the controller.

Whoever holds an admin credential can apply any spec, and the controller sends it to every eligible node.
What a spec asks of the container alone (image, command, env, limits) stays inside Docker's default
confinement; what reaches the host itself (published host ports, bind mounts of host paths) is checked here against the
agent's own settings before any container is created. A refused task ends REJECTED with a reason that
names the spec field, the agent setting and the fix, and `dockyard ps` shows it.

Every ServiceSpec field is listed once below, either as checked here or with why it does not reach the
host; a new spec field fails tests/unit/test_agent_policy.py until it is classified, so nothing new is
passed to Docker unchecked. Pure: no I/O, no clock.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from agent.container_spec import MOUNT_KINDS, port_protocol
from dockyard.limits import STATUS_TEXT_BYTES, truncate_text
from dockyard.spec import schema
from dockyard.spec.issues import Issue, index_path, key_path, quote, service_path
from dockyard.v1 import types_pb2 as pb

_LOWEST_PORT = 1  # the lowest port a setting may name; 0 in a spec means "Docker picks"
_HIGHEST_PORT = schema.PORT_PUBLISHED.maximum
# Ports below this need root (CAP_NET_BIND_SERVICE) to bind on Linux: the ones an operator consents to.
_FIRST_UNPRIVILEGED_PORT = 1024
# How many refused items one status names before "and N more"; the whole text is also cut to the status limit.
_SHOWN_ISSUES = 3


@dataclass(frozen=True, order=True)
class PortRange:
    """A closed range of port numbers, first <= last."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not _LOWEST_PORT <= self.first <= self.last <= _HIGHEST_PORT:
            raise ValueError(f"{self.first}-{self.last} is not a range of ports {_LOWEST_PORT} to {_HIGHEST_PORT}")

    def __contains__(self, port: object) -> bool:
        """Tells whether a port number lies in the range."""
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        """Writes the range as a setting does: "80" or "8000-8999"."""
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Setting:
    """One policy setting of the agent: its long option name (also its config file key), default and help."""

    name: str
    default: str
    help: str

    @property
    def option(self) -> str:
        """The command-line option, e.g. "--allow-host-ports"."""
        return f"--{self.name}"


HOST_PORTS = Setting(
    "allow-host-ports",
    f"{_FIRST_UNPRIVILEGED_PORT}-{_HIGHEST_PORT}",
    "Host ports a service may publish on this host: ports and ranges like 80,443,8000-8999, all, or none. The "
    f"default leaves out the privileged ports below {_FIRST_UNPRIVILEGED_PORT}, which need the operator's consent. "
    f"A spec's published 0 (Docker picks a port) is allowed only while all of {_FIRST_UNPRIVILEGED_PORT}-"
    f"{_HIGHEST_PORT} is.",
)
BIND_PATHS = Setting(
    "allow-bind-paths",
    "none",
    "Host paths a service may bind-mount on this host: a comma-separated list of absolute directories (a mount "
    "of one of them or of anything under it is allowed), or none. Named volumes and tmpfs mounts need no "
    "setting.",
)
HOST_PROTOCOLS = Setting(
    "allow-host-protocols",
    ",".join(schema.PORT_PROTOCOL.choices),
    "Protocols a service may publish host ports with on this host: a comma-separated list of "
    f"{', '.join(schema.PORT_PROTOCOL.choices)}, or none.",
)


class PolicyError(ValueError):
    """A policy setting that cannot be read; str() is "<option>: <problem and fix>"."""

    def __init__(self, setting: Setting, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"{setting.option}: {problem}")


def parse_host_ports(text: str) -> tuple[PortRange, ...]:
    """Reads an allow-host-ports value into sorted, merged ranges (empty for `none`); raises PolicyError."""
    fix = "write ports and ranges like 80,443,8000-8999, or all, or none"
    words = [word.strip() for word in text.split(",")]
    if words == ["none"]:
        return ()
    if words == ["all"]:
        return (PortRange(_LOWEST_PORT, _HIGHEST_PORT),)
    ranges = []
    for word in words:
        if word in ("none", "all"):
            raise PolicyError(HOST_PORTS, f"{word} stands alone, not in a list; {fix}")
        first, dash, last = word.partition("-")
        low, high = _port(first, word, fix), _port(last if dash else first, word, fix)
        if low > high:
            problem = f"{quote(word)} runs backwards; write the lower port first, e.g. {high}-{low}"
            raise PolicyError(HOST_PORTS, problem)
        ranges.append(PortRange(low, high))
    return _merged(ranges)


def _port(text: str, word: str, fix: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise PolicyError(HOST_PORTS, f"{quote(word)} is not a port or a range of ports; {fix}")
    number = int(text)
    if not _LOWEST_PORT <= number <= _HIGHEST_PORT:
        raise PolicyError(HOST_PORTS, f"{quote(word)}: ports are {_LOWEST_PORT} to {_HIGHEST_PORT}; {fix}")
    return number


def _merged(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    """Sorts ranges and joins overlapping or adjacent ones, so that each setting has one way to be shown."""
    merged: list[PortRange] = []
    for item in sorted(ranges):
        if merged and item.first <= merged[-1].last + 1:
            merged[-1] = PortRange(merged[-1].first, max(merged[-1].last, item.last))
        else:
            merged.append(item)
    return tuple(merged)


def parse_host_protocols(text: str) -> frozenset[str]:
    """Reads an allow-host-protocols value (empty for `none`); raises PolicyError."""
    known = schema.PORT_PROTOCOL.choices
    words = [word.strip() for word in text.split(",")]
    if words == ["none"]:
        return frozenset()
    for word in words:
        if word not in known:
            raise PolicyError(
                HOST_PROTOCOLS,
                f"{quote(word)} is not a protocol; write a comma-separated list of {', '.join(known)}, or none",
            )
    return frozenset(words)


def parse_bind_paths(text: str) -> tuple[str, ...]:
    """Reads an allow-bind-paths value into sorted normalised absolute paths (empty for `none`); raises PolicyError."""
    words = [word.strip() for word in text.split(",")]
    if words == ["none"]:
        return ()
    paths: set[str] = set()
    for word in words:
        if not word.startswith("/") or word in ("none", "all"):
            raise PolicyError(
                BIND_PATHS,
                f"{quote(word)} is not an absolute path; write absolute directories like /srv/data,/var/log, or none",
            )
        paths.add(posixpath.normpath(word).replace("//", "/"))
    return tuple(sorted(paths))


def _under(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies beneath it (both normalised)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _ports_text(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(str(r) for r in ranges) or "none"


def _protocols_text(protocols: frozenset[str]) -> str:
    # In the field table's order, so that the default reads as it is written.
    return ",".join(p for p in schema.PORT_PROTOCOL.choices if p in protocols) or "none"


@dataclass(frozen=True)
class HostPolicy:
    """What specs may ask of this host; every default refuses what needs the operator's consent.

    Settings (each an agent option and config file key, see HOST_PORTS and HOST_PROTOCOLS):

    * host_ports: the host ports a service may publish (default 1024-65535: no privileged port);
      empty forbids publishing.
    * host_protocols: the protocols it may publish them with (default tcp and udp).
    * bind_paths: the host directories a service may bind-mount, each with everything beneath it
      (default none). Named volumes (Docker's own storage) and tmpfs mounts are always allowed.

    Refused until the policy allows them, once the spec can ask for them (it cannot yet): devices
    (allowed device paths, default none), privileged mode and added capabilities (default no), the
    host's network, PID or IPC namespace (default no). Each comes as a spec field classified in
    HOST_FIELDS, a field here whose default refuses, a Setting, and one checker in _CHECKERS.
    """

    host_ports: tuple[PortRange, ...] = parse_host_ports(HOST_PORTS.default)
    host_protocols: frozenset[str] = parse_host_protocols(HOST_PROTOCOLS.default)
    bind_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # One shape per policy, however it was built: allows_port relies on merged ranges.
        object.__setattr__(self, "host_ports", _merged(list(self.host_ports)))
        object.__setattr__(self, "host_protocols", frozenset(self.host_protocols))
        object.__setattr__(self, "bind_paths", tuple(sorted({posixpath.normpath(p) for p in self.bind_paths})))

    @classmethod
    def from_settings(
        cls,
        *,
        host_ports: str = HOST_PORTS.default,
        host_protocols: str = HOST_PROTOCOLS.default,
        bind_paths: str = BIND_PATHS.default,
    ) -> HostPolicy:
        """Builds a policy from the settings as written; raises PolicyError naming the bad one."""
        return cls(
            host_ports=parse_host_ports(host_ports),
            host_protocols=parse_host_protocols(host_protocols),
            bind_paths=parse_bind_paths(bind_paths),
        )

    def settings(self) -> dict[str, str]:
        """Returns each setting as it would be written, by name: for the agent's start-up log line."""
        return {
            HOST_PORTS.name: _ports_text(self.host_ports),
            HOST_PROTOCOLS.name: _protocols_text(self.host_protocols),
            BIND_PATHS.name: ",".join(self.bind_paths) or "none",
        }

    def allows_bind(self, source: str) -> bool:
        """Tells whether a host path may be bind-mounted: it must be absolute and under an allowed directory.

        The path is normalised first, so `..` cannot climb out of an allowed directory (symlinks on the host
        are the operator's: an allowed directory is trusted as a whole).
        """
        if not source.startswith("/"):
            return False
        path = posixpath.normpath(source)
        return any(_under(path, allowed) for allowed in self.bind_paths)

    def allows_port(self, port: int) -> bool:
        """Tells whether a spec's published port may be used; 0 (Docker picks) needs every unprivileged port."""
        if port == 0:
            # Ranges are merged, so one range holds all of them or none does.
            return any(_FIRST_UNPRIVILEGED_PORT in r and _HIGHEST_PORT in r for r in self.host_ports)
        return any(port in r for r in self.host_ports)


def _ports(spec: pb.ServiceSpec, policy: HostPolicy) -> Iterator[Issue]:
    """Published ports: their protocol, then their host port; one issue per port at most."""
    settings = policy.settings()
    for index, port in enumerate(spec.ports):
        path = index_path(key_path(service_path(spec.name), "ports"), index)
        protocol = port_protocol(port)
        if not policy.host_ports or not policy.host_protocols:
            setting = HOST_PORTS if not policy.host_ports else HOST_PROTOCOLS
            yield Issue(
                path,
                f"this host publishes no ports ({setting.name} is none); remove the port, keep the service "
                f"off this host with a placement constraint, or have the host's operator set {setting.option}",
            )
        elif protocol not in policy.host_protocols:
            allowed = settings[HOST_PROTOCOLS.name]
            # The controller validates protocols, but the agent does not take that on trust.
            shown = protocol if protocol in schema.PORT_PROTOCOL.choices else quote(protocol)
            yield Issue(
                key_path(path, "protocol"),
                f"{shown} is not allowed on this host ({HOST_PROTOCOLS.name} is {allowed}); publish over "
                f"{allowed}, or have the host's operator add {shown} to {HOST_PROTOCOLS.option}",
            )
        elif not policy.allows_port(port.host_port):
            allowed = settings[HOST_PORTS.name]
            asked = (
                "0 lets Docker pick any free port, which"
                if port.host_port == 0
                else f"host port {port.host_port}/{protocol}"
            )
            yield Issue(
                key_path(path, "published"),
                f"{asked} is not allowed on this host ({HOST_PORTS.name} is {allowed}); publish a port in "
                f"{allowed}, or have the host's operator allow it with {HOST_PORTS.option}",
            )


def _mounts(spec: pb.ServiceSpec, policy: HostPolicy) -> Iterator[Issue]:
    """Bind mounts: their host path must lie under an allowed directory; volumes and tmpfs stay in Docker.

    A mount type this agent does not know (sent by a newer controller) is refused rather than guessed at.
    """
    allowed = policy.settings()[BIND_PATHS.name]
    for index, mount in enumerate(spec.mounts):
        if mount.type not in MOUNT_KINDS:
            yield Issue(
                key_path(index_path(key_path(service_path(spec.name), "mounts"), index), "type"),
                f"mount type {mount.type} is not known to this agent; upgrade the agent on this host, or keep the "
                f"service off it with a placement constraint",
            )
            continue
        if mount.type != pb.Mount.TYPE_BIND or policy.allows_bind(mount.source):
            continue
        path = key_path(index_path(key_path(service_path(spec.name), "mounts"), index), "source")
        yield Issue(
            path,
            f"bind mount of host path {quote(mount.source)} is not allowed on this host ({BIND_PATHS.name} is "
            f"{allowed}); use a named volume, keep the service off this host with a placement constraint, or have "
            f"the host's operator add the directory to {BIND_PATHS.option}",
        )


# Every ServiceSpec field that reaches the host, with its checker. A field is listed here or in
# CONTAINED_FIELDS, never both; tests/unit/test_agent_policy.py holds the proto to that.
_CHECKERS: Mapping[str, Callable[[pb.ServiceSpec, HostPolicy], Iterator[Issue]]] = {
    "ports": _ports,
    "mounts": _mounts,
}
HOST_FIELDS = frozenset(_CHECKERS)

# The other ServiceSpec fields, and why none of them reaches past Docker's default confinement.
CONTAINED_FIELDS: Mapping[str, str] = {
    "name": "names the containers",
    "image": "runs inside the container; pulled with the host's Docker (and any registry login it has)",
    "command": "runs inside the container",
    "env": "is seen inside the container only",
    "labels": "are container labels: Docker metadata, meaningful only to tools that read them",
    "resources": "limits only lower what a container may use; reservations are the scheduler's",
    "replicas": "is the controller's",
    "mode": "is the controller's",
    "placement": "is the controller's",
    "restart": "is the controller's; Docker's own restart policy is always off",
    "stop_grace_period": "is how long the agent waits when it stops the container",
    "on_disconnect": "is when the agent stops the container while cut off",
    "healthcheck": (
        "test runs inside the container; http and tcp probes are the agent's connections to the container's own"
        " address, never to the host's"
    ),
    "update": "is the controller's",
    "rollback": "is the controller's",
    "depends_on": "is the controller's",
    "stack": "is the controller's (names and scoping)",
    "entrypoint": "runs inside the container",
    "networks": "are Docker bridge networks the agent itself makes on the cluster's subnets",
    "secrets": "are files the agent writes on its own tmpfs and mounts read-only into the container",
    "configs": "are files the agent writes on its own tmpfs and mounts read-only into the container",
    "hostname": "is the container's own UTS namespace",
}


def check(spec: pb.ServiceSpec, policy: HostPolicy) -> list[Issue]:
    """Returns every reason the policy refuses the spec, in field order; empty when it may run here."""
    return [issue for checker in _CHECKERS.values() for issue in checker(spec, policy)]


def refusal(spec: pb.ServiceSpec, policy: HostPolicy) -> str | None:
    """Returns the task error for a refused spec, bounded to a status text; None when the policy allows it."""
    issues = check(spec, policy)
    if not issues:
        return None
    text = "; ".join(str(issue) for issue in issues[:_SHOWN_ISSUES])
    if len(issues) > _SHOWN_ISSUES:
        text += f"; and {len(issues) - _SHOWN_ISSUES} more"
    return truncate_text(f"refused by this host's policy: {text}", STATUS_TEXT_BYTES)
