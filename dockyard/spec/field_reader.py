"""Reading the value of each service field into its proto form, recording what is wrong with it.

Only what the proto cannot express is checked here: shapes, types, unit syntax, numbers a proto
field cannot hold, and explicit zeros that the proto would read as "not set". Range and consistency
rules belong to validate_service.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import defaults, rules
from dockyard.spec.display import describe, got, got_number, got_string, quote
from dockyard.spec.enum_names import CONDITIONS, Number
from dockyard.spec.errors import Issue
from dockyard.spec.fields import closest, unknown_field_issues
from dockyard.spec.paths import index_path, key_path
from dockyard.spec.port_syntax import PORT_SHAPE, parse_port
from dockyard.spec.units import (
    DURATION_SHAPE,
    MAX_BYTES,
    format_bytes,
    parse_bytes,
    parse_duration_nanos,
    seconds_to_nanos,
)
from dockyard.v1 import types_pb2 as pb

PORT_FIELDS = ("published", "target", "protocol")
RESOURCE_SECTIONS = ("limits", "reservations")
_RESOURCE_FIELDS = ("cpus", "memory")
RESTART_FIELDS = ("condition", "delay", "max_attempts", "window")
_IMAGE_EXAMPLE = '"nginx:1.27"'


class FieldReader:
    """Reads field values and collects the issues found in them, in the order found."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def fail(self, path: str, message: str) -> None:
        """Records a problem at `path`."""
        self.issues.append(Issue(path, message))

    def fields(self, mapping: Mapping[object, object], path: str, known: tuple[str, ...]) -> None:
        """Records unknown keys of `mapping`."""
        self.issues += unknown_field_issues(mapping, path, known)

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
            self.fail(path, f"must be a list of strings or a string, got {got(value)}")
            return []
        arguments = []
        for i, argument in enumerate(value):
            if isinstance(argument, str):
                arguments.append(argument)
            else:
                self.fail(index_path(path, i), f"must be a string, got {got_string(argument)}")
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
                    self.fail(key_path(path, key), f"must be a string, got {got_string(item)}")
            return result
        if not isinstance(value, list):
            self.fail(
                path,
                f'must be a mapping of {word}: value or a list of "{word}=value" strings, got {got(value)}',
            )
            return result
        first_index: dict[str, int] = {}
        for i, entry in enumerate(value):
            where = index_path(path, i)
            if not isinstance(entry, str):
                self.fail(where, f'must be a "{word}=value" string, got {got_string(entry)}')
                continue
            key, equals, item = entry.partition("=")
            if not equals:
                self.fail(
                    where,
                    f"must have the form {word}=value, got {describe(entry)}; "
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
            self.fail(path, f'must be a list of ports like "8080:80/tcp", got {got(value)}')
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
        self.fields(value, path, PORT_FIELDS)
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
                self.fail(key_path(path, "protocol"), rules.protocol_message(got(protocol)))
        return port

    def port_mapping(self, path: str, host: int, container: int, protocol: str) -> pb.PortMapping:
        """Builds a port from short-syntax numbers, rejecting those a proto uint32 cannot hold."""
        port = pb.PortMapping(protocol=protocol)
        if host > rules.MAX_UINT32:
            self.fail(key_path(path, "published"), rules.published_port_message(describe(host)))
        else:
            port.host_port = host
        if not 0 <= container <= rules.MAX_UINT32:
            self.fail(key_path(path, "target"), rules.target_port_message(describe(container)))
        else:
            port.container_port = container
        return port

    def uint32(self, value: object, path: str, message: Callable[[str], str]) -> int | None:
        """Returns `value` if it is an integer a proto uint32 holds; records `message` otherwise."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, message(got_number(value)))
            return None
        if not 0 <= value <= rules.MAX_UINT32:
            self.fail(path, message(describe(value)))
            return None
        return value

    def resources(self, value: object, path: str, resources: pb.Resources) -> None:
        """Reads resource limits and reservations."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping with limits and/or reservations, got {got(value)}")
            return
        self.fields(value, path, RESOURCE_SECTIONS)
        for section in RESOURCE_SECTIONS:
            if section not in value:
                continue
            where = key_path(path, section)
            amounts = value[section]
            if not isinstance(amounts, dict):
                self.fail(where, f"must be a mapping with cpus and/or memory, got {got(amounts)}")
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
            self.fail(path, rules.cpus_message(got_number(value)))
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
            self.fail(path, f"must be a size like 512MiB or 2GiB, got {got(value)}")
            return None
        if size > MAX_BYTES:
            self.fail(path, f"is too large, got {describe(value)}; the maximum is {MAX_BYTES} bytes")
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
            self.fail(path, f"must be a mapping like {{condition: on-failure, delay: 5s}}, got {got(value)}")
            return
        self.fields(value, path, RESTART_FIELDS)
        if "condition" in value:
            where = key_path(path, "condition")
            condition = self.choice(value["condition"], where, CONDITIONS, rules.condition_message)
            if condition is not None:
                restart.condition = condition
        if "delay" in value:
            self.duration(value["delay"], key_path(path, "delay"), restart.delay)
        if "max_attempts" in value:
            attempts = self.uint32(value["max_attempts"], key_path(path, "max_attempts"), rules.max_attempts_message)
            if attempts is not None:
                restart.max_attempts = attempts
        if "window" in value:
            self.duration(value["window"], key_path(path, "window"), restart.window)

    def choice(
        self, value: object, path: str, names: Mapping[str, Number], message: Callable[[str], str]
    ) -> Number | None:
        """Returns the enum number `value` names, or records `message` with a guess at the name meant."""
        if isinstance(value, str) and value in names:
            return names[value]
        text = message(got(value))
        if isinstance(value, str) and (guess := closest(value, list(names))):
            text += f"; did you mean {quote(guess)}?"
        self.fail(path, text)
        return None

    def duration(self, value: object, path: str, target: Duration) -> int | None:
        """Reads a duration into `target` and returns it in nanoseconds; None leaves `target` untouched."""
        try:
            if isinstance(value, str):
                nanos = parse_duration_nanos(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                nanos = seconds_to_nanos(value)
            else:
                raise ValueError(f"{DURATION_SHAPE}, got {got(value)}")
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        target.FromNanoseconds(nanos)
        return nanos
