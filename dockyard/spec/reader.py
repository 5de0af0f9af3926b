"""Reading a parsed YAML document into ServiceSpecs, collecting every problem rather than the first.

The reader only checks what the proto cannot express: shapes, types, unit syntax, numbers a proto
field cannot hold, and explicit zeros that the proto would read as "not set". Everything else is
left to validate_service, run on the spec the reader built, so both entry points word a problem the
same way. A field the reader rejects keeps its default, and validate_service's findings at or below
that path are dropped so that one mistake is reported once.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import defaults, rules
from dockyard.spec.display import describe, quote
from dockyard.spec.errors import Issue
from dockyard.spec.fields import closest, unknown_field_issues
from dockyard.spec.paths import index_path, is_within, key_path
from dockyard.spec.port_syntax import PORT_SHAPE, parse_port
from dockyard.spec.units import (
    DURATION_SHAPE,
    MAX_BYTES,
    format_bytes,
    parse_bytes,
    parse_duration_nanos,
    seconds_to_nanos,
)
from dockyard.spec.validation import service_issues
from dockyard.v1 import types_pb2 as pb

SERVICE_FIELDS = (
    "image",
    "command",
    "env",
    "ports",
    "replicas",
    "resources",
    "labels",
    "restart",
    "stop_grace_period",
)
# Spellings people bring from Docker Compose, where difflib alone would not find our field.
_SERVICE_HINTS = {
    "environment": 'did you mean "env"?',
    "deploy": "write replicas, resources and restart directly under the service",
    "restart_policy": 'did you mean "restart"?',
}
_PORT_FIELDS = ("published", "target", "protocol")
_RESOURCE_SECTIONS = ("limits", "reservations")
_RESOURCE_FIELDS = ("cpus", "memory")
_RESTART_FIELDS = ("condition", "delay", "max_attempts", "window")
_CONDITIONS = {
    "none": pb.RestartPolicy.CONDITION_NONE,
    "on-failure": pb.RestartPolicy.CONDITION_ON_FAILURE,
    "any": pb.RestartPolicy.CONDITION_ANY,
}
_IMAGE_EXAMPLE = '"nginx:1.27"'
_FIELD_AND_INDEX = re.compile(r"\.([A-Za-z0-9_-]+)(?:\[(\d+)\])?")
_NUMERIC = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*\Z")


def read_document(data: object, source: str) -> tuple[list[pb.ServiceSpec], list[Issue]]:
    """Converts a parsed document into specs in file order, with every problem found in it.

    `source` names the file in problems about the document as a whole. The specs are only
    meaningful when no issues are returned.
    """
    reader = _Reader()
    specs = reader.document(data, source)
    return specs, reader.issues


def _got(value: object) -> str:
    """The "got ..." text for a field that was given the wrong kind of value."""
    if value is None:
        return "null; leave the field out to use the default"
    return describe(value)


def _got_number(value: object) -> str:
    """Like _got, pointing out numbers written in quotes."""
    if isinstance(value, str) and _NUMERIC.match(value):
        return f"{describe(value)}; write the number without quotes"
    return _got(value)


def _got_string(value: object) -> str:
    """The "got ..." text for a value that should have been a string."""
    if value is None:
        return 'null; write "" for an empty value'
    if isinstance(value, list | dict):
        return describe(value)
    # YAML turned it into a number, boolean or date; quoting keeps the text as written.
    return f"{describe(value)}; put the value in quotes"


def _ordering(service_path: str) -> Callable[[Issue], tuple[int, int]]:
    """Sort key putting a service's issues in reading order: name, unknown fields, then known fields."""

    def key(issue: Issue) -> tuple[int, int]:
        match = _FIELD_AND_INDEX.match(issue.path, len(service_path))
        if match is None:
            return (0 if issue.path == service_path else 1, 0)
        field, index = match[1], match[2]
        rank = SERVICE_FIELDS.index(field) + 2 if field in SERVICE_FIELDS else 1
        return (rank, int(index) if index else -1)

    return key


class _Reader:
    """Holds the issues found so far while one document is read."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, path: str, message: str) -> None:
        """Records a problem at `path`."""
        self.issues.append(Issue(path, message))

    def fields(self, mapping: Mapping[object, object], path: str, known: tuple[str, ...], **hints: str) -> None:
        """Records unknown keys of `mapping`."""
        self.issues += unknown_field_issues(mapping, path, known, hints or None)

    def document(self, data: object, source: str) -> list[pb.ServiceSpec]:
        """Reads the top level and every service under it."""
        if data is None:
            self.fail(source, 'the file is empty; it needs a "services:" mapping with at least one service')
            return []
        if not isinstance(data, dict):
            self.fail(source, f'must be a mapping with a top-level "services" key, got {describe(data)}')
            return []
        self.fields(data, "", ("services",))
        if "services" not in data:
            self.fail("services", 'is required; put each service under a top-level "services:" mapping')
            return []
        services = data["services"]
        if services is None or services == {}:
            self.fail("services", "must define at least one service")
            return []
        if not isinstance(services, dict):
            self.fail("services", f"must be a mapping from service names to services, got {describe(services)}")
            return []
        specs = []
        for name, body in services.items():
            if not isinstance(name, str):
                self.fail("services", f"service name {describe(name)} must be a string; put it in quotes")
                continue
            spec = self.service(name, body)
            if spec is not None:
                specs.append(spec)
        return specs

    def service(self, name: str, body: object) -> pb.ServiceSpec | None:
        """Reads one service, then adds validate_service's findings that the reader has not covered."""
        path = key_path("services", name)
        if not isinstance(body, dict):
            self.fail(path, f'must be a mapping of service fields with at least "image", got {describe(body)}')
            return None
        first = len(self.issues)
        self.issues += unknown_field_issues(body, path, SERVICE_FIELDS, _SERVICE_HINTS)
        spec = pb.ServiceSpec(name=name, replicas=defaults.REPLICAS)
        spec.resources.SetInParent()
        spec.restart.condition = defaults.RESTART_CONDITION
        spec.restart.delay.FromNanoseconds(defaults.RESTART_DELAY_NANOS)
        spec.restart.max_attempts = defaults.RESTART_MAX_ATTEMPTS
        spec.restart.window.FromNanoseconds(defaults.RESTART_WINDOW_NANOS)
        spec.stop_grace_period.FromNanoseconds(defaults.STOP_GRACE_PERIOD_NANOS)

        self.image(body, key_path(path, "image"), spec)
        if "command" in body:
            spec.command.extend(self.command(body["command"], key_path(path, "command")))
        if "env" in body:
            spec.env.update(self.string_map(body["env"], key_path(path, "env"), "env", "NAME"))
        if "ports" in body:
            spec.ports.extend(self.ports(body["ports"], key_path(path, "ports")))
        if "replicas" in body:
            replicas = self.uint32(body["replicas"], key_path(path, "replicas"), rules.replicas_message)
            if replicas is not None:
                spec.replicas = replicas
        if "resources" in body:
            self.resources(body["resources"], key_path(path, "resources"), spec.resources)
        if "labels" in body:
            spec.labels.update(self.string_map(body["labels"], key_path(path, "labels"), "labels", "key"))
        if "restart" in body:
            self.restart(body["restart"], key_path(path, "restart"), spec.restart)
        if "stop_grace_period" in body:
            self.duration(body["stop_grace_period"], key_path(path, "stop_grace_period"), spec.stop_grace_period)

        rejected = [issue.path for issue in self.issues[first:]]
        self.issues += [
            issue for issue in service_issues(spec) if not any(is_within(issue.path, bad) for bad in rejected)
        ]
        self.issues[first:] = sorted(self.issues[first:], key=_ordering(path))
        return spec

    def image(self, body: Mapping[object, object], path: str, spec: pb.ServiceSpec) -> None:
        """Reads the required image reference."""
        if "image" not in body:
            self.fail(path, f"is required; name the container image to run, like {_IMAGE_EXAMPLE}")
        elif isinstance(image := body["image"], str):
            spec.image = image
        else:
            self.fail(path, f"must be a string like {_IMAGE_EXAMPLE}, got {describe(image)}")

    def command(self, value: object, path: str) -> list[str]:
        """Reads a command given as a list of arguments or as one string split like a shell would."""
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                reason = str(exc).lower()
                self.fail(path, f"cannot be split into words ({reason}); fix the quoting or write a list")
                return []
        if not isinstance(value, list):
            self.fail(path, f"must be a list of strings or a string, got {_got(value)}")
            return []
        arguments = []
        for i, argument in enumerate(value):
            if isinstance(argument, str):
                arguments.append(argument)
            else:
                self.fail(index_path(path, i), f"must be a string, got {_got_string(argument)}")
                # A stand-in keeps later indexes in validate_service's paths aligned with the file.
                arguments.append("")
        return arguments

    def string_map(self, value: object, path: str, field: str, word: str) -> dict[str, str]:
        """Reads env or labels, given as a mapping or as a list of "NAME=value" strings."""
        result: dict[str, str] = {}
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.fail(path, f"{word} {describe(key)} must be a string; put it in quotes")
                elif isinstance(item, str):
                    result[key] = item
                else:
                    self.fail(key_path(path, key), f"must be a string, got {_got_string(item)}")
            return result
        if not isinstance(value, list):
            self.fail(
                path,
                f'must be a mapping of {word}: value or a list of "{word}=value" strings, got {_got(value)}',
            )
            return result
        first_index: dict[str, int] = {}
        for i, entry in enumerate(value):
            where = index_path(path, i)
            if not isinstance(entry, str):
                self.fail(where, f'must be a "{word}=value" string, got {_got_string(entry)}')
                continue
            key, equals, item = entry.partition("=")
            if not equals:
                self.fail(
                    where,
                    f"must have the form {word}=value, got {quote(entry)}; "
                    f"write {quote(entry + '=')} for an empty value",
                )
            elif key in first_index:
                self.fail(where, f"{quote(key)} is already set by {field}[{first_index[key]}]; remove one of them")
            else:
                first_index[key] = i
                result[key] = item
        return result

    def ports(self, value: object, path: str) -> list[pb.PortMapping]:
        """Reads the list of published ports."""
        if not isinstance(value, list):
            self.fail(path, f'must be a list of ports like "8080:80/tcp", got {_got(value)}')
            return []
        # A rejected port still occupies its index so validate_service's paths match the file.
        return [self.port(item, index_path(path, i)) for i, item in enumerate(value)]

    def port(self, value: object, path: str) -> pb.PortMapping:
        """Reads one port in the short syntax, as a bare container port, or as a mapping."""
        if isinstance(value, int) and not isinstance(value, bool):
            return self.port_mapping(path, 0, value, defaults.PORT_PROTOCOL)
        if isinstance(value, str):
            try:
                host, container, protocol = parse_port(value)
            except ValueError as exc:
                self.fail(path, str(exc))
                return pb.PortMapping()
            return self.port_mapping(path, host, container, protocol)
        if not isinstance(value, dict):
            self.fail(path, f"{PORT_SHAPE}, got {describe(value)}")
            return pb.PortMapping()
        self.fields(value, path, _PORT_FIELDS)
        port = pb.PortMapping(protocol=defaults.PORT_PROTOCOL)
        if "target" not in value:
            self.fail(key_path(path, "target"), "is required; give the port the container listens on")
        elif (target := self.uint32(value["target"], key_path(path, "target"), rules.target_port_message)) is not None:
            port.container_port = target
        if "published" in value:
            published = self.uint32(value["published"], key_path(path, "published"), rules.published_port_message)
            port.host_port = published or 0
        if "protocol" in value:
            if isinstance(protocol := value["protocol"], str):
                port.protocol = protocol
            else:
                self.fail(key_path(path, "protocol"), rules.protocol_message(_got(protocol)))
        return port

    def port_mapping(self, path: str, host: int, container: int, protocol: str) -> pb.PortMapping:
        """Builds a port from short-syntax numbers, rejecting those a proto uint32 cannot hold."""
        port = pb.PortMapping(protocol=protocol)
        if host > rules.MAX_UINT32:
            self.fail(key_path(path, "published"), rules.published_port_message(str(host)))
        else:
            port.host_port = host
        if not 0 <= container <= rules.MAX_UINT32:
            self.fail(key_path(path, "target"), rules.target_port_message(str(container)))
        else:
            port.container_port = container
        return port

    def uint32(self, value: object, path: str, message: Callable[[str], str]) -> int | None:
        """Returns `value` if it is an integer a proto uint32 holds; records `message` otherwise."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, message(_got_number(value)))
            return None
        if not 0 <= value <= rules.MAX_UINT32:
            self.fail(path, message(str(value)))
            return None
        return value

    def resources(self, value: object, path: str, resources: pb.Resources) -> None:
        """Reads resource limits and reservations."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping with limits and/or reservations, got {_got(value)}")
            return
        self.fields(value, path, _RESOURCE_SECTIONS)
        for section in _RESOURCE_SECTIONS:
            if section not in value:
                continue
            where = key_path(path, section)
            amounts = value[section]
            if not isinstance(amounts, dict):
                self.fail(where, f"must be a mapping with cpus and/or memory, got {_got(amounts)}")
                continue
            self.fields(amounts, where, _RESOURCE_FIELDS)
            is_limit = section == "limits"
            if "cpus" in amounts and (cpus := self.cpus(amounts["cpus"], key_path(where, "cpus"))):
                if is_limit:
                    resources.cpu_limit = cpus
                else:
                    resources.cpu_reservation = cpus
            if "memory" in amounts:
                memory = self.memory(amounts["memory"], key_path(where, "memory"), is_limit)
                if memory and is_limit:
                    resources.memory_limit_bytes = memory
                elif memory:
                    resources.memory_reservation_bytes = memory

    def cpus(self, value: object, path: str) -> float | None:
        """Reads a CPU amount; an explicit 0 is refused since the proto would read it as "not set"."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, rules.cpus_message(_got_number(value)))
            return None
        if not rules.cpus_ok(value):
            self.fail(path, rules.cpus_message(describe(value)))
            return None
        return float(value)

    def memory(self, value: object, path: str, is_limit: bool) -> int | None:
        """Reads a byte size; an explicit 0 is refused since the proto would read it as "not set"."""
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            try:
                size = parse_bytes(value)
            except ValueError as exc:
                self.fail(path, str(exc))
                return None
        else:
            self.fail(path, f"must be a size like 512MiB or 2GiB, got {_got(value)}")
            return None
        if size > MAX_BYTES:
            self.fail(path, f"is too large, got {size}; the maximum is {MAX_BYTES} bytes")
        elif is_limit and size < rules.MIN_MEMORY_LIMIT:
            self.fail(path, rules.memory_limit_message(format_bytes(size)))
        elif not is_limit and size <= 0:
            self.fail(path, rules.memory_reservation_message(format_bytes(size)))
        else:
            return size
        return None

    def restart(self, value: object, path: str, restart: pb.RestartPolicy) -> None:
        """Reads the restart policy over its defaults."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {{condition: on-failure, delay: 5s}}, got {_got(value)}")
            return
        self.fields(value, path, _RESTART_FIELDS)
        if "condition" in value:
            condition = value["condition"]
            if isinstance(condition, str) and condition in _CONDITIONS:
                restart.condition = _CONDITIONS[condition]
            else:
                message = rules.condition_message(_got(condition))
                if isinstance(condition, str) and (guess := closest(condition, rules.CONDITION_NAMES)):
                    message += f"; did you mean {quote(guess)}?"
                self.fail(key_path(path, "condition"), message)
        if "delay" in value:
            self.duration(value["delay"], key_path(path, "delay"), restart.delay)
        if "max_attempts" in value:
            attempts = self.uint32(value["max_attempts"], key_path(path, "max_attempts"), rules.max_attempts_message)
            if attempts is not None:
                restart.max_attempts = attempts
        if "window" in value:
            self.duration(value["window"], key_path(path, "window"), restart.window)

    def duration(self, value: object, path: str, target: Duration) -> None:
        """Reads a duration into `target`, leaving it untouched when the value is unusable."""
        try:
            if isinstance(value, str):
                nanos = parse_duration_nanos(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                nanos = seconds_to_nanos(value)
            else:
                raise ValueError(f"{DURATION_SHAPE}, got {_got(value)}")
        except ValueError as exc:
            self.fail(path, str(exc))
            return
        target.FromNanoseconds(nanos)
