"""Reading a parsed YAML document into ServiceSpecs, collecting every problem rather than the first.

Each service is read field by field (see field_reader), then validate_service runs on the spec that
was built, so a rule broken in a file is worded exactly as when a gRPC client breaks it. A field the
reader rejects keeps its default, and validate_service's findings at or below its path are dropped,
so that one mistake is reported once.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from dockyard.spec import defaults
from dockyard.spec.display import describe
from dockyard.spec.errors import Issue
from dockyard.spec.field_reader import PORT_FIELDS, RESOURCE_SECTIONS, RESTART_FIELDS
from dockyard.spec.fields import unknown_field_issues
from dockyard.spec.paths import is_within, key_path
from dockyard.spec.scheduling_reader import ON_DISCONNECT_FIELDS, PLACEMENT_FIELDS, SchedulingReader
from dockyard.spec.validation import service_issues
from dockyard.v1 import types_pb2 as pb

SERVICE_FIELDS = (
    "image",
    "command",
    "env",
    "ports",
    "mode",
    "replicas",
    "placement",
    "resources",
    "labels",
    "restart",
    "stop_grace_period",
    "on_disconnect",
)
# Spellings people bring from Docker Compose, where difflib alone would not find our field.
_SERVICE_HINTS = {
    "environment": 'did you mean "env"?',
    "deploy": "write mode, replicas, placement, resources and restart directly under the service",
    "restart_policy": 'did you mean "restart"?',
}
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)(?:\[(\d+)\])?")
# Field order inside the sections, so that their issues too come out in reading order.
_SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "ports": PORT_FIELDS,
    "placement": PLACEMENT_FIELDS,
    "resources": RESOURCE_SECTIONS,
    "restart": RESTART_FIELDS,
    "on_disconnect": ON_DISCONNECT_FIELDS,
}


def read_document(data: object, source: str) -> tuple[list[pb.ServiceSpec], list[Issue]]:
    """Converts a parsed document into specs in file order, with every problem found in it.

    `source` names the file in problems about the document as a whole. The specs are only
    meaningful when no issues are returned.
    """
    reader = _Reader()
    specs = reader.document(data, source)
    return specs, reader.issues


def _ordering(service_path: str) -> Callable[[Issue], tuple[int, int, int, int]]:
    """Sort key putting a service's issues in reading order: name, unknown fields, then known fields."""

    def key(issue: Issue) -> tuple[int, int, int, int]:
        match = _SEGMENT.match(issue.path, len(service_path))
        if match is None:
            return (0 if issue.path == service_path else 1, -1, 0, -1)
        field, index = match[1], match[2]
        inner = _SEGMENT.match(issue.path, match.end()) if field in _SECTION_FIELDS else None
        if inner is None:
            return (_rank(field, SERVICE_FIELDS), _index(index), 0, -1)
        return (_rank(field, SERVICE_FIELDS), _index(index), _rank(inner[1], _SECTION_FIELDS[field]), _index(inner[2]))

    return key


def _rank(field: str, known: tuple[str, ...]) -> int:
    """Unknown fields come first, as they are reported first; then known ones in their listed order."""
    return known.index(field) + 2 if field in known else 1


def _index(index: str | None) -> int:
    return int(index) if index else -1


def _default_spec(name: str) -> pb.ServiceSpec:
    """A spec with the defaults set explicitly, so loaded specs compare equal field by field."""
    spec = pb.ServiceSpec(name=name, replicas=defaults.REPLICAS, mode=defaults.MODE)
    spec.resources.SetInParent()
    spec.restart.condition = defaults.RESTART_CONDITION
    spec.restart.delay.FromNanoseconds(defaults.RESTART_DELAY_NANOS)
    spec.restart.max_attempts = defaults.RESTART_MAX_ATTEMPTS
    spec.restart.window.FromNanoseconds(defaults.RESTART_WINDOW_NANOS)
    spec.stop_grace_period.FromNanoseconds(defaults.STOP_GRACE_PERIOD_NANOS)
    # placement and on_disconnect stay unset while they hold only defaults: the scheduler skips an
    # unset placement on its hot path, and "keep" is the absence of a stop_after deadline.
    return spec


class _Reader(SchedulingReader):
    """Reads a whole document on top of the field readers."""

    def document(self, data: object, source: str) -> list[pb.ServiceSpec]:
        """Reads the top level and every service under it."""
        if data is None:
            self.fail(source, 'the file is empty; it needs a "services:" mapping with at least one service')
            return []
        if not isinstance(data, dict):
            self.fail(source, f'must be a mapping with a top-level "services" key, got {describe(data)}')
            return []
        # Top-level "x-" keys are free for YAML anchors to share settings between services, as in Compose.
        self.fields({key: None for key in data if not str(key).startswith("x-")}, "", ("services",))
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
        spec = _default_spec(name)
        self.image(body, key_path(path, "image"), spec)
        if "command" in body:
            spec.command.extend(self.command(body["command"], key_path(path, "command")))
        if "env" in body:
            spec.env.update(self.string_map(body["env"], key_path(path, "env"), "env", "NAME"))
        if "ports" in body:
            spec.ports.extend(self.ports(body["ports"], key_path(path, "ports")))
        self.mode_and_replicas(body, path, spec)
        if "placement" in body:
            self.placement(body["placement"], key_path(path, "placement"), spec)
        if "resources" in body:
            self.resources(body["resources"], key_path(path, "resources"), spec.resources)
        if "labels" in body:
            spec.labels.update(self.string_map(body["labels"], key_path(path, "labels"), "labels", "key"))
        if "restart" in body:
            self.restart(body["restart"], key_path(path, "restart"), spec.restart)
        if "stop_grace_period" in body:
            self.duration(body["stop_grace_period"], key_path(path, "stop_grace_period"), spec.stop_grace_period)
        if "on_disconnect" in body:
            self.on_disconnect(body["on_disconnect"], key_path(path, "on_disconnect"), spec.on_disconnect)

        rejected = [issue.path for issue in self.issues[first:]]
        self.issues += [
            issue for issue in service_issues(spec) if not any(is_within(issue.path, bad) for bad in rejected)
        ]
        self.issues[first:] = sorted(self.issues[first:], key=_ordering(path))
        return spec
