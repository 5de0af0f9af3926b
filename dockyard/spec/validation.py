"""Semantic checks of a typed ServiceSpec, shared by the YAML loader and the controller's API."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import rules
from dockyard.spec.constraint_checks import constraint_issues
from dockyard.spec.display import describe, format_number
from dockyard.spec.errors import Issue
from dockyard.spec.image_reference import is_image_reference
from dockyard.spec.paths import index_path, key_path
from dockyard.spec.units import MAX_DURATION_SECONDS, NANOS_PER_SECOND, format_bytes, format_duration_nanos
from dockyard.v1 import types_pb2 as pb

_IMAGE_EXAMPLE = '"nginx:1.27"'


def validate_service(spec: pb.ServiceSpec) -> list[str]:
    """Returns one `<path>: <problem>` line per problem of `spec` (empty when valid); never raises.

    Paths start with `services.<name>`, where a name that is not a plain word is quoted in brackets
    (`services["my app"]`, `services[""]`); problems with the name itself are reported on that path.
    Unset message fields (restart, durations, resources, placement, on_disconnect) mean "the default"
    and are accepted, as are the UNSPECIFIED values of mode (replicated) and strategy (spread).
    """
    return [str(issue) for issue in service_issues(spec)]


def service_issues(spec: pb.ServiceSpec) -> list[Issue]:
    """Like validate_service, but keeps path and message apart so callers can filter by path."""
    base = key_path("services", spec.name)
    issues = [
        *_name_issues(spec.name, base),
        *_image_issues(spec.image, key_path(base, "image")),
        *_command_issues(spec.command, key_path(base, "command")),
        *_env_issues(spec.env, key_path(base, "env")),
        *_port_issues(spec.ports, key_path(base, "ports")),
    ]
    issues += _mode_and_replicas_issues(spec, base)
    issues += _placement_issues(spec.placement, key_path(base, "placement"))
    issues += _resource_issues(spec.resources, key_path(base, "resources"))
    issues += _label_issues(spec.labels, key_path(base, "labels"))
    issues += _restart_issues(spec.restart, key_path(base, "restart"))
    if spec.HasField("stop_grace_period"):
        issues += _bounded_duration_issues(
            spec.stop_grace_period, key_path(base, "stop_grace_period"), rules.MAX_STOP_GRACE_PERIOD_NANOS
        )
    if spec.on_disconnect.HasField("stop_after"):
        stop_after_path = key_path(key_path(base, "on_disconnect"), "stop_after")
        issues += _stop_after_issues(spec.on_disconnect.stop_after, stop_after_path)
    return issues


def _name_issues(name: str, path: str) -> list[Issue]:
    if not name:
        return [Issue(path, "service name must not be empty")]
    if not rules.DNS_LABEL.match(name):
        return [
            Issue(
                path,
                'service name must be 1 to 63 lowercase letters, digits or "-", starting and ending with '
                f"a letter or digit, got {describe(name)}",
            )
        ]
    return []


def _image_issues(image: str, path: str) -> list[Issue]:
    if not image:
        return [Issue(path, f"must not be empty; name the container image to run, like {_IMAGE_EXAMPLE}")]
    if any(c.isspace() for c in image):
        return [Issue(path, f"must not contain whitespace, got {describe(image)}")]
    if not is_image_reference(image):
        return [
            Issue(
                path,
                f"must be an image reference like {_IMAGE_EXAMPLE} or "
                '"registry.example.com/team/app:v2" (lowercase name, optional :tag and @digest), '
                f"got {describe(image)}",
            )
        ]
    return []


def _command_issues(command: Sequence[str], path: str) -> list[Issue]:
    # execve() cannot pass NUL, so such an argument would be cut short silently.
    return [
        Issue(index_path(path, i), "must not contain NUL characters")
        for i, argument in enumerate(command)
        if "\0" in argument
    ]


def _env_issues(env: Mapping[str, str], path: str) -> list[Issue]:
    issues = []
    for name, value in sorted(env.items()):
        where = key_path(path, name)
        if not name:
            issues.append(Issue(where, "variable name must not be empty"))
        elif "=" in name:
            issues.append(Issue(where, 'variable name must not contain "="'))
        elif "\0" in name:
            issues.append(Issue(where, "variable name must not contain NUL characters"))
        if "\0" in value:
            issues.append(Issue(where, "value must not contain NUL characters"))
    return issues


def _label_issues(labels: Mapping[str, str], path: str) -> list[Issue]:
    issues = []
    for key in sorted(labels):
        where = key_path(path, key)
        if not key:
            issues.append(Issue(where, "label key must not be empty"))
        elif key.startswith(rules.RESERVED_LABEL_PREFIX):
            issues.append(
                Issue(
                    where,
                    f'keys starting with "{rules.RESERVED_LABEL_PREFIX}" are reserved for the labels '
                    "Dockyard sets itself; choose another key",
                )
            )
    return issues


def _port_issues(ports: Sequence[pb.PortMapping], path: str) -> list[Issue]:
    issues = []
    first_use: dict[tuple[int, str], int] = {}
    for i, port in enumerate(ports):
        where = index_path(path, i)
        target_ok = 1 <= port.container_port <= rules.MAX_PORT
        published_ok = port.host_port <= rules.MAX_PORT
        protocol_ok = port.protocol in rules.PROTOCOLS
        if not target_ok:
            issues.append(Issue(key_path(where, "target"), rules.target_port_message(str(port.container_port))))
        if not published_ok:
            issues.append(Issue(key_path(where, "published"), rules.published_port_message(str(port.host_port))))
        if not protocol_ok:
            issues.append(Issue(key_path(where, "protocol"), rules.protocol_message(describe(port.protocol))))
        if port.host_port == 0 or not (published_ok and protocol_ok):
            continue
        owner = first_use.setdefault((port.host_port, port.protocol), i)
        if owner != i:
            issues.append(
                Issue(
                    where,
                    f"host port {port.host_port}/{port.protocol} is already published by ports[{owner}]; "
                    "use another host port",
                )
            )
    return issues


def _mode_and_replicas_issues(spec: pb.ServiceSpec, base: str) -> list[Issue]:
    mode_path, replicas_path = key_path(base, "mode"), key_path(base, "replicas")
    if spec.mode not in pb.ServiceMode.values():
        return [Issue(mode_path, rules.mode_message(str(spec.mode)))]
    if spec.mode == pb.SERVICE_MODE_GLOBAL:
        # The count follows the eligible nodes, so any number here would be ignored or misread.
        return [Issue(replicas_path, rules.GLOBAL_REPLICAS_MESSAGE)] if spec.replicas else []
    if spec.replicas > rules.MAX_REPLICAS:
        return [Issue(replicas_path, rules.replicas_message(str(spec.replicas)))]
    return []


def _placement_issues(placement: pb.Placement, path: str) -> list[Issue]:
    issues = constraint_issues(placement.constraints, key_path(path, "constraints"))
    if placement.max_replicas_per_node > rules.MAX_REPLICAS:
        message = rules.max_replicas_per_node_message(str(placement.max_replicas_per_node))
        issues.append(Issue(key_path(path, "max_replicas_per_node"), message))
    if placement.strategy not in pb.Placement.Strategy.values():
        issues.append(Issue(key_path(path, "strategy"), rules.strategy_message(str(placement.strategy))))
    return issues


def _stop_after_issues(stop_after: Duration, path: str) -> list[Issue]:
    nanos = _duration_nanos(stop_after)
    if nanos is None:
        return [_malformed_duration(stop_after, path)]
    # Zero is how the proto says "keep", so only a negative or too long deadline is wrong.
    if not 0 <= nanos <= rules.MAX_STOP_AFTER_NANOS:
        return [Issue(path, rules.stop_after_message(format_duration_nanos(nanos)))]
    return []


def _resource_issues(resources: pb.Resources, path: str) -> list[Issue]:
    limits, reservations = key_path(path, "limits"), key_path(path, "reservations")
    issues = []
    # Zero means "not set" in the proto, so only non-zero amounts are checked.
    for value, where in (
        (resources.cpu_limit, key_path(limits, "cpus")),
        (resources.cpu_reservation, key_path(reservations, "cpus")),
    ):
        if value != 0 and not rules.cpus_ok(value):
            issues.append(Issue(where, rules.cpus_message(format_number(value))))
    limit_bytes, reserved_bytes = resources.memory_limit_bytes, resources.memory_reservation_bytes
    if limit_bytes != 0 and limit_bytes < rules.MIN_MEMORY_LIMIT:
        message = rules.memory_limit_message(format_bytes(limit_bytes))
        issues.append(Issue(key_path(limits, "memory"), message))
    if reserved_bytes < 0:
        message = rules.memory_reservation_message(format_bytes(reserved_bytes))
        issues.append(Issue(key_path(reservations, "memory"), message))
    cpu_limit, cpu_reserved = resources.cpu_limit, resources.cpu_reservation
    if rules.cpus_ok(cpu_limit) and rules.cpus_ok(cpu_reserved) and cpu_reserved > cpu_limit:
        message = rules.exceeds_limit_message(
            "resources.limits.cpus", format_number(cpu_limit), format_number(cpu_reserved)
        )
        issues.append(Issue(key_path(reservations, "cpus"), message))
    if limit_bytes >= rules.MIN_MEMORY_LIMIT and reserved_bytes > limit_bytes:
        message = rules.exceeds_limit_message(
            "resources.limits.memory", format_bytes(limit_bytes), format_bytes(reserved_bytes)
        )
        issues.append(Issue(key_path(reservations, "memory"), message))
    return issues


def _restart_issues(restart: pb.RestartPolicy, path: str) -> list[Issue]:
    issues = []
    if restart.condition not in pb.RestartPolicy.Condition.values():
        issues.append(Issue(key_path(path, "condition"), rules.condition_message(str(restart.condition))))
    if restart.HasField("delay"):
        issues += _bounded_duration_issues(restart.delay, key_path(path, "delay"), rules.MAX_RESTART_DELAY_NANOS)
    if restart.HasField("window"):
        where = key_path(path, "window")
        nanos = _duration_nanos(restart.window)
        if nanos is None:
            issues.append(_malformed_duration(restart.window, where))
        elif nanos < 0:
            issues.append(Issue(where, rules.window_message(format_duration_nanos(nanos))))
    return issues


def _bounded_duration_issues(duration: Duration, path: str, maximum_nanos: int) -> list[Issue]:
    nanos = _duration_nanos(duration)
    if nanos is None:
        return [_malformed_duration(duration, path)]
    if not 0 <= nanos <= maximum_nanos:
        return [Issue(path, rules.bounded_duration_message(format_duration_nanos(nanos)))]
    return []


def _duration_nanos(duration: Duration) -> int | None:
    """Returns the duration in nanoseconds, or None if it breaks the Duration invariants."""
    seconds, nanos = duration.seconds, duration.nanos
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) >= NANOS_PER_SECOND:
        return None
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        return None
    return seconds * NANOS_PER_SECOND + nanos


def _malformed_duration(duration: Duration, path: str) -> Issue:
    return Issue(
        path,
        f"is not a valid duration (seconds={duration.seconds}, nanos={duration.nanos}); seconds must be "
        f"within +-{MAX_DURATION_SECONDS} and nanos within +-{NANOS_PER_SECOND - 1} with the same sign",
    )
