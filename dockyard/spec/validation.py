"""Semantic checks of a pb.ServiceSpec, shared by the YAML reader and the controller's API.

service_issues makes one pass over a spec's fields in the table's order (dockyard.spec.schema), so
its problems come out in the order a spec file lists the fields, and nothing is sorted afterwards.
The pass is made of small checks, one per field or list item; the YAML reader calls the same checks
right after reading each value, so a file and a gRPC client get the same words, in the same order.

A check judges a value that is present. The pass over a proto decides what counts as absent: 0 in
`cpus`, memory and `stop_after` means "not set" there, while a file that writes 0 is refused.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from dockyard.constraints import ENGINE_LABELS, LABELS, Constraint, ConstraintError, parse_constraint
from dockyard.spec import schema, stacks
from dockyard.spec.dependencies import find_cycle
from dockyard.spec.issues import Issue, describe, index_path, key_path, quote, service_path
from dockyard.spec.schema import Bounded, Field, Ranged
from dockyard.spec.units import (
    MAX_DURATION_SECONDS,
    NANOS_PER_SECOND,
    format_bytes,
    format_cpus,
    format_duration_nanos,
)
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import is_volume_mount

IMAGE_EXAMPLE = '"nginx:1.27"'
JOB_CONDITION_MESSAGE = "a job runs to completion; use on-failure or none"
ROLLBACK_ROLLBACK_MESSAGE = "a rollback cannot itself roll back; use pause or continue"
GLOBAL_REPLICAS_MESSAGE = "a global service runs one task per eligible node; remove replicas or use mode: replicated"
GLOBAL_VOLUME_MESSAGE = (
    "a global service runs a task on every node, but a named volume lives on one node; use a bind or tmpfs "
    "mount, or mode: replicated"
)

# Lowercase RFC 1123 label, so the name can appear in container and DNS names.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
# RFC 1123 host names, as Docker accepts them for a container's hostname.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")
# C0 controls and DEL: invisible in logs and terminals, and meaningless in names and keys.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The same without the ones that count as whitespace, which constraint parsing explains better.
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
# Written from the reference grammar Docker documents; catching a bad name here beats a failed pull later.
_DOMAIN_PART = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9A-Fa-f:]+\])"
_REGISTRY = rf"{_HOST}(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_REGISTRY}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?\Z")
# Docker refuses repository names longer than this.
_MAX_REPOSITORY_LENGTH = 255


# --- Wording of the rules, shared with the reader ------------------------------------------------------


def _choices(field: Field[Any], quoted: bool = False) -> str:
    """Lists a field's choices as "a, b or c"."""
    names = [quote(name) if quoted else name for name in field.choices]
    return ", ".join(names[:-1]) + f" or {names[-1]}"


def _from_to(field: Ranged[int]) -> str:
    return f"from {field.shown(field.minimum)} to {field.shown(field.maximum)}"


def replicas_message(got: str) -> str:
    """Wording for a replica count out of range or of the wrong type."""
    return f"must be an integer {_from_to(schema.REPLICAS)}, got {got}"


def mode_message(got: str) -> str:
    """Wording for an unknown service mode."""
    return f"must be {_choices(schema.MODE)}, got {got}"


def max_replicas_per_node_message(got: str) -> str:
    """Wording for a per-node replica cap out of range or of the wrong type."""
    return f"must be an integer {_from_to(schema.MAX_REPLICAS_PER_NODE)} (0 means no limit), got {got}"


def strategy_message(got: str) -> str:
    """Wording for an unknown placement strategy."""
    return f"must be {_choices(schema.STRATEGY)}, got {got}"


def stop_after_message(got: str) -> str:
    """Wording for an on_disconnect.stop_after out of range."""
    field = schema.STOP_AFTER
    return (
        f"must be a duration greater than {field.shown(field.minimum)} and at most {field.shown(field.maximum)}, "
        f"got {got}"
    )


def target_port_message(got: str) -> str:
    """Wording for a container port out of range or of the wrong type."""
    return f"must be a container port {_from_to(schema.PORT_TARGET)}, got {got}"


def published_port_message(got: str) -> str:
    """Wording for a host port out of range or of the wrong type."""
    return f"must be a host port {_from_to(schema.PORT_PUBLISHED)} (0 lets Docker pick a free one), got {got}"


def protocol_message(got: str) -> str:
    """Wording for a protocol other than the allowed ones."""
    return f"must be {_choices(schema.PORT_PROTOCOL, quoted=True)}, got {got}"


def condition_message(got: str) -> str:
    """Wording for an unknown restart condition."""
    return f"must be {_choices(schema.RESTART_CONDITION)}, got {got}"


def ranged_message(field: Ranged[int], got: str) -> str:
    """Wording for an integer out of its field's range or of the wrong type."""
    return f"must be an integer {_from_to(field)}, got {got}"


def choice_message(field: Field[Any], got: str) -> str:
    """Wording for a value that is none of a field's choices."""
    return f"must be {_choices(field)}, got {got}"


def boolean_message(got: str) -> str:
    """Wording for a value that should have been true or false."""
    return f"must be true or false, got {got}"


def ratio_message(got: str) -> str:
    """Wording for a failure ratio out of range or of the wrong type."""
    field = schema.UPDATE_MAX_FAILURE_RATIO
    return f"must be a number from {field.minimum:g} to {field.maximum:g} (a share of the tasks), got {got}"


def max_attempts_message(got: str) -> str:
    """Wording for a restart attempt count that is negative, too large or of the wrong type."""
    return f"must be an integer {_from_to(schema.RESTART_MAX_ATTEMPTS)} (0 means no limit), got {got}"


def cpus_ok(cpus: float) -> bool:
    """Tells whether an explicitly given CPU amount is within the table's range (NaN is not)."""
    return schema.CPU_LIMIT.minimum < cpus <= schema.CPU_LIMIT.maximum


def cpus_message(got: str) -> str:
    """Wording for a CPU amount out of range or of the wrong type."""
    field = schema.CPU_LIMIT
    return (
        f"must be a number of CPUs greater than {field.shown(field.minimum)} and at most "
        f"{field.shown(field.maximum)}, got {got}"
    )


def memory_limit_message(got: str) -> str:
    """Wording for a memory limit below Docker's minimum."""
    minimum = schema.MEMORY_LIMIT.minimum
    return f"must be at least {format_bytes(minimum)} (the smallest limit Docker accepts), got {got}"


def memory_reservation_message(got: str) -> str:
    """Wording for a memory reservation that is not positive."""
    return f"must be greater than {schema.MEMORY_RESERVATION.minimum}, got {got}; leave it out to reserve nothing"


# --- Checks of single values, in the table's order --------------------------------------------------------


def name_issues(name: str, path: str, stack: str = "") -> Iterator[Issue]:
    """Checks a service name, reported on the service's own path; a stack's service is `<stack>_<short name>`."""
    if not name:
        yield Issue(path, "service name must not be empty")
    elif stack and not stacks.belongs(stack, name):
        yield Issue(
            path,
            f"a service of stack {quote(stack)} is named {quote(stacks.scoped(stack, '<service>'))}, got "
            f"{describe(name)}; name it {quote(stacks.scoped(stack, name))} or change its stack",
        )
    elif not _is_label(short := stacks.short(stack, name)):
        yield Issue(
            path,
            f'service name must be 1 to {schema.NAME.max_bytes} lowercase letters, digits or "-", starting and '
            f"ending with a letter or digit, got {describe(short)}",
        )


def service_name_ok(name: str) -> bool:
    """Whether `name` can name a service: a DNS label, or `<stack>_<DNS label>` of a valid stack."""
    stack, separator, short = name.rpartition(stacks.SEPARATOR)
    return _is_label(short) and (not separator or (bool(stack) and stacks.stack_problem(stack) is None))


def _is_label(name: str) -> bool:
    return bool(_DNS_LABEL.match(name)) and len(name) <= (schema.NAME.max_bytes or len(name))


def stack_issues(stack: str, path: str) -> Iterator[Issue]:
    """Checks a service's stack name ("" is none)."""
    if (problem := stacks.stack_problem(stack)) is not None:
        yield Issue(path, problem)


def image_issues(image: str, path: str) -> Iterator[Issue]:
    """Checks an image reference."""
    if not image:
        yield Issue(path, f"must not be empty; name the container image to run, like {IMAGE_EXAMPLE}")
    elif too_long := _length_problem(image, schema.IMAGE.max_bytes):
        yield Issue(path, f"{too_long}; no image reference is that long")
    elif any(c.isspace() for c in image):
        yield Issue(path, f"must not contain whitespace, got {describe(image)}")
    elif _CONTROL.search(image):
        yield Issue(path, f"{_control_problem(image)}; remove it")
    elif not _is_image_reference(image):
        yield Issue(
            path,
            f"must be an image reference like {IMAGE_EXAMPLE} or "
            '"registry.example.com/team/app:v2" (lowercase name, optional :tag and @digest), '
            f"got {describe(image)}",
        )


def argument_issues(argument: str, path: str) -> Iterator[Issue]:
    """Checks one argument of the command."""
    # execve() cannot pass NUL, so such an argument would be cut short silently.
    if "\0" in argument:
        yield Issue(path, "must not contain NUL characters")
    elif too_long := _length_problem(argument, schema.COMMAND.max_bytes):
        yield Issue(path, f"{too_long}, the most Linux passes to a program; put long scripts in a file in the image")


def env_issues(name: str, value: str, path: str) -> Iterator[Issue]:
    """Checks one environment variable; `path` is the variable's own path."""
    if not name:
        yield Issue(path, "variable name must not be empty")
    elif "=" in name:
        yield Issue(path, 'variable name must not contain "="')
    elif "\0" in name:
        yield Issue(path, "variable name must not contain NUL characters")
    elif _CONTROL.search(name):
        yield Issue(path, f"variable name {_control_problem(name)}; remove it")
    elif too_long := _length_problem(name, schema.ENV.max_key_bytes):
        yield Issue(path, f"variable name {too_long}; use a shorter name")
    if "\0" in value:
        yield Issue(path, "value must not contain NUL characters")
    elif (size := _utf8_size(name) + 1 + _utf8_size(value)) > (limit := schema.ENV.max_bytes or size):
        yield Issue(
            path,
            f"NAME=value must be at most {limit} bytes long, got {size} bytes, more than Linux passes to a "
            "program; put large values in a file in the image instead",
        )


def label_key_issues(key: str, path: str) -> Iterator[Issue]:
    """Checks a label key, of a service or of a node: not empty, one word, not reserved for Dockyard."""
    prefix = schema.LABELS.reserved_prefix
    if not key:
        yield Issue(path, "label key must not be empty")
    elif _CONTROL.search(key) or any(c.isspace() or c == "=" for c in key):
        yield Issue(
            path,
            f'label key must not contain whitespace, control characters or "=", got {describe(key)}; '
            'use letters, digits, ".", "-" or "_"',
        )
    elif too_long := _length_problem(key, schema.LABELS.max_key_bytes):
        yield Issue(path, f"label key {too_long}; use a shorter key")
    elif key.startswith(prefix):
        yield Issue(
            path, f'keys starting with "{prefix}" are reserved for the labels Dockyard sets itself; choose another key'
        )


def label_issues(key: str, value: str, path: str) -> Iterator[Issue]:
    """Checks one label of a service; `path` is the label's own path."""
    yield from label_key_issues(key, path)
    if "\0" in value:
        yield Issue(path, "value must not contain NUL characters; remove them")
    elif too_long := _length_problem(value, schema.LABELS.max_bytes):
        yield Issue(path, f"value {too_long}; keep large data out of labels")


def published_issues(port: int, path: str) -> Iterator[Issue]:
    """Checks a host port."""
    if not _within(schema.PORT_PUBLISHED, port):
        yield Issue(path, published_port_message(str(port)))


def target_issues(port: int, path: str) -> Iterator[Issue]:
    """Checks a container port."""
    if not _within(schema.PORT_TARGET, port):
        yield Issue(path, target_port_message(str(port)))


def protocol_issues(protocol: str, path: str) -> Iterator[Issue]:
    """Checks a port's protocol; the proto has no default, so it must be given."""
    if protocol not in schema.PORT_PROTOCOL.choices:
        yield Issue(path, protocol_message(describe(protocol)))


def hostname_issues(hostname: str, path: str) -> Iterator[Issue]:
    """Checks a container's hostname ("" is Docker's)."""
    limit = schema.HOSTNAME.max_bytes or len(hostname)
    if hostname and (not _HOSTNAME.match(hostname) or len(hostname) > limit):
        yield Issue(
            path,
            f'must be a host name of at most {limit} letters, digits, "-" and ".", each part starting and ending '
            f'with a letter or digit, like "db-1", got {describe(hostname)}',
        )


def container_path_issues(target: str, path: str, field: Field[Any]) -> Iterator[Issue]:
    """Checks an absolute path: where a mount, secret or config appears in the container, or a bind's host path."""
    if not target:
        yield Issue(path, 'must not be empty; give an absolute path like "/data"')
    elif "\0" in target or _CONTROL.search(target):
        yield Issue(path, f"must not contain control characters, got {describe(target)}; remove them")
    elif too_long := _length_problem(target, field.max_bytes):
        yield Issue(path, f"{too_long}; use a shorter path")
    elif not target.startswith("/"):
        yield Issue(path, f'must be an absolute path, starting with "/", got {describe(target)}')
    elif ".." in target.split("/"):
        yield Issue(path, f'must not contain "..", got {describe(target)}; write the path it leads to')
    elif posixpath.normpath(target) == "/":
        yield Issue(path, 'must not be "/"; mount on a folder inside the container')


def object_name_issues(name: str, path: str, kind: str) -> Iterator[Issue]:
    """Checks the cluster-wide name of a network, volume, secret or config (`kind` says which) a service names."""
    if (problem := stacks.object_name_problem(name)) is not None:
        yield Issue(path, f"{kind} {problem}")


def mount_issues(mount: pb.Mount, path: str) -> Iterator[Issue]:
    """Checks one mount on its own; Targets checks that no two share a target."""
    kind = mount.type or schema.MOUNT_TYPE.default
    if kind not in schema.MOUNT_TYPE.choices.values():
        yield Issue(key_path(path, "type"), choice_message(schema.MOUNT_TYPE, str(mount.type)))
        return
    source = key_path(path, "source")
    if kind == pb.Mount.TYPE_VOLUME:
        if not mount.source:
            yield Issue(source, 'is required for a volume: name the volume, like "db-data:/var/lib/postgresql/data"')
        else:
            yield from object_name_issues(mount.source, source, "volume")
    elif kind == pb.Mount.TYPE_BIND:
        if mount.source and not mount.source.startswith("/"):
            # Compose resolves "./data" against the project folder; a spec stored in the cluster has no folder.
            yield Issue(
                source,
                f'must be an absolute host path, got {describe(mount.source)}; write the full path, like "/srv/data"',
            )
        elif mount.source:
            yield from container_path_issues(mount.source, source, schema.MOUNT_SOURCE)
        else:
            yield Issue(source, 'is required for a bind mount: give the host path, like "/srv/data"')
    elif mount.source:
        yield Issue(source, "a tmpfs has no source; remove it")
    yield from container_path_issues(mount.target, key_path(path, "target"), schema.MOUNT_TARGET)
    labels = key_path(path, "labels")
    if mount.volume_labels and kind != pb.Mount.TYPE_VOLUME:
        yield Issue(labels, 'applies only to type "volume"; remove it')
    else:
        for key in sorted(mount.volume_labels):
            yield from label_issues(key, mount.volume_labels[key], key_path(labels, key))
    if mount.tmpfs_size_bytes and kind != pb.Mount.TYPE_TMPFS:
        yield Issue(key_path(path, "tmpfs"), 'applies only to type "tmpfs"; remove it')
    elif mount.tmpfs_size_bytes < 0:
        yield Issue(key_path(key_path(path, "tmpfs"), "size"), f"must not be negative, got {mount.tmpfs_size_bytes}")


def file_ref_issues(ref: pb.FileRef, path: str, section: str) -> Iterator[Issue]:
    """Checks one entry of `secrets` or `configs` (`section`) on its own; Targets checks that no two share a path."""
    kind = "secret" if section == "secrets" else "config"
    source = key_path(path, "source")
    if not ref.name:
        yield Issue(source, f"is required: name the {kind}")
    else:
        yield from object_name_issues(ref.name, source, kind)
    target = key_path(path, "target")
    row = schema.SECRET_TARGET if section == "secrets" else schema.CONFIG_TARGET
    if ref.target.startswith("/") or (ref.target and section == "configs"):
        yield from container_path_issues(ref.target, target, row)
    elif ".." in ref.target.split("/"):
        # A secret's relative target is a file under /run/secrets; it must stay there.
        yield Issue(
            target, f'must not contain "..", got {describe(ref.target)}; name a file under {schema.SECRETS_DIR}'
        )
    elif ref.target:
        yield from container_path_issues(f"{schema.SECRETS_DIR}/{ref.target}", target, row)
    if ref.HasField("mode") and ref.mode > schema.SECRET_MODE.maximum:
        yield Issue(
            key_path(path, "mode"),
            f"must be permission bits from 0 to 0777, got 0{ref.mode:o}; write it in octal with a leading 0, as 0440",
        )


class Targets:
    """The container paths a service's mounts, secrets and configs take, to refuse a second use of one."""

    def __init__(self) -> None:
        self._first_use: dict[str, str] = {}

    def claim(self, target: str, owner: str, path: str) -> Iterator[Issue]:
        """Records that `owner` (like "mounts[0]") uses `target`; yields an issue when an earlier one has it."""
        key = posixpath.normpath(target)
        first = self._first_use.setdefault(key, owner)
        if first != owner:
            yield Issue(path, f"{quote(key)} is already the target of {first}; give each its own path")


class Names:
    """The names a service's list (networks, secrets, configs) holds, to refuse one listed twice."""

    def __init__(self, section: str) -> None:
        self._section = section
        self._first: dict[str, int] = {}

    def claim(self, name: str, index: int, path: str) -> Iterator[Issue]:
        """Records `name` at `index`; yields an issue when an earlier entry has it."""
        first = self._first.setdefault(name, index)
        if first != index:
            yield Issue(path, f"{quote(name)} is already listed as {self._section}[{first}]; remove one")


class HostPorts:
    """The host ports a service's earlier ports publish, to refuse a second use of one."""

    def __init__(self) -> None:
        self._first_use: dict[tuple[int, str], int] = {}

    def claim(self, port: pb.PortMapping, index: int, path: str) -> Iterator[Issue]:
        """Records the host port of a valid port; yields an issue when an earlier port has it already."""
        if port.host_port == 0:
            return  # Docker picks a free port, so 0 never conflicts.
        owner = self._first_use.setdefault((port.host_port, port.protocol), index)
        if owner != index:
            yield Issue(
                path,
                f"host port {port.host_port}/{port.protocol} is already published by ports[{owner}]; "
                "use another host port",
            )


def mode_issues(mode: int, path: str) -> Iterator[Issue]:
    """Checks a mode number; UNSPECIFIED means the default."""
    if mode not in pb.ServiceMode.values():
        yield Issue(path, mode_message(str(mode)))


def replicas_issues(mode: int, replicas: int, path: str) -> Iterator[Issue]:
    """Checks the replica count against the mode."""
    if mode == pb.SERVICE_MODE_GLOBAL:
        # The count follows the eligible nodes, so any number here would be ignored or misread.
        if replicas:
            yield Issue(path, GLOBAL_REPLICAS_MESSAGE)
    elif not _within(schema.REPLICAS, replicas):
        yield Issue(path, replicas_message(str(replicas)))


class Constraints:
    """A service's constraints checked one by one: each must parse, and all must hold together."""

    def __init__(self) -> None:
        self._first: dict[Constraint, int] = {}
        self._first_equal: dict[tuple[str, str], int] = {}
        self._first_value: dict[tuple[str, str, str, bool], int] = {}
        self._accepted: dict[int, Constraint] = {}

    def check(self, text: str, index: int, path: str) -> Iterator[Issue]:
        """Yields the problems of constraint `index`: it is too long, does not parse, repeats or contradicts."""
        if too_long := _length_problem(text, schema.CONSTRAINTS.max_bytes):
            yield Issue(path, f"{too_long}; compare shorter labels or values")
            return
        if _INVISIBLE.search(text):
            yield Issue(path, f"{_control_problem(text, _INVISIBLE)}; remove it")
            return
        try:
            constraint = parse_constraint(text)
        except ConstraintError as exc:
            yield Issue(path, str(exc))
            return
        problem = self._conflict(constraint)
        if problem is not None:
            yield Issue(path, problem)
            return
        self._accepted[index] = constraint
        self._first[constraint] = index
        subject = (constraint.field, constraint.key)
        if constraint.equal:
            self._first_equal.setdefault(subject, index)
        self._first_value.setdefault((*subject, constraint.value, constraint.equal), index)

    def _conflict(self, constraint: Constraint) -> str | None:
        """Says how `constraint` clashes with the first earlier accepted one it clashes with, if any."""
        if (same := self._first.get(constraint)) is not None:
            return f"is the same as constraints[{same}]; remove one of them"
        subject = (constraint.field, constraint.key)
        # Constraints are combined with "and": two equalities on one subject, or = and != of one value,
        # leave no eligible node at all.
        candidates = [self._first_value.get((*subject, constraint.value, not constraint.equal))]
        if constraint.equal:
            candidates.append(self._first_equal.get(subject))
        found = [index for index in candidates if index is not None]
        if not found:
            return None
        index = min(found)
        other = self._accepted[index]
        if constraint.field == LABELS:
            thing = f"label {describe(constraint.key)}"
        elif constraint.field == ENGINE_LABELS:
            thing = f"engine label {describe(constraint.key)}"
        else:
            thing = constraint.field
        if other.value == constraint.value:
            return (
                f"contradicts constraints[{index}]: all constraints must hold, but a node's {thing} "
                f"cannot both be and not be {describe(constraint.value)}; remove one of them"
            )
        return (
            f"contradicts constraints[{index}]: all constraints must hold, but a node's {thing} "
            f"cannot be both {describe(other.value)} and {describe(constraint.value)}; keep one of them"
        )


def max_replicas_per_node_issues(cap: int, path: str) -> Iterator[Issue]:
    """Checks the per-node replica cap."""
    if not _within(schema.MAX_REPLICAS_PER_NODE, cap):
        yield Issue(path, max_replicas_per_node_message(str(cap)))


def strategy_issues(strategy: int, path: str) -> Iterator[Issue]:
    """Checks a strategy number; UNSPECIFIED means the default."""
    if strategy not in pb.Placement.Strategy.values():
        yield Issue(path, strategy_message(str(strategy)))


def cpus_issues(cpus: float, path: str) -> Iterator[Issue]:
    """Checks a CPU limit or reservation that is given."""
    if not cpus_ok(cpus):
        yield Issue(path, cpus_message(format_cpus(cpus)))


def memory_limit_issues(size: int, path: str) -> Iterator[Issue]:
    """Checks a memory limit that is given."""
    if size < schema.MEMORY_LIMIT.minimum:
        yield Issue(path, memory_limit_message(format_bytes(size)))


def memory_reservation_issues(size: int, path: str) -> Iterator[Issue]:
    """Checks a memory reservation that is given."""
    if size <= schema.MEMORY_RESERVATION.minimum:
        yield Issue(path, memory_reservation_message(format_bytes(size)))


def reservation_issues(resources: pb.Resources, path: str) -> Iterator[Issue]:
    """Checks that valid reservations stay within valid limits; `path` is that of resources."""
    reservations = key_path(path, "reservations")
    cpu_limit, cpu_reserved = resources.cpu_limit, resources.cpu_reservation
    if cpus_ok(cpu_limit) and cpus_ok(cpu_reserved) and cpu_reserved > cpu_limit:
        yield Issue(
            key_path(reservations, "cpus"),
            _exceeds(schema.CPU_LIMIT, format_cpus(cpu_limit), format_cpus(cpu_reserved)),
        )
    limit_bytes, reserved_bytes = resources.memory_limit_bytes, resources.memory_reservation_bytes
    if limit_bytes >= schema.MEMORY_LIMIT.minimum and reserved_bytes > limit_bytes:
        yield Issue(
            key_path(reservations, "memory"),
            _exceeds(schema.MEMORY_LIMIT, format_bytes(limit_bytes), format_bytes(reserved_bytes)),
        )


def condition_issues(condition: int, path: str) -> Iterator[Issue]:
    """Checks a restart condition number; UNSPECIFIED means the default."""
    if condition not in pb.RestartPolicy.Condition.values():
        yield Issue(path, condition_message(str(condition)))


def job_condition_issues(mode: int, condition: int, path: str) -> Iterator[Issue]:
    """Checks a restart condition against the mode: a job's tasks that complete are never restarted."""
    if mode == pb.SERVICE_MODE_JOB and condition == pb.RestartPolicy.CONDITION_ANY:
        yield Issue(path, JOB_CONDITION_MESSAGE)


def rebalance_issues(mode: int, rebalance: bool, path: str) -> Iterator[Issue]:
    """Checks placement.rebalance against the mode: only a replicated service's tasks can move."""
    if rebalance and mode == pb.SERVICE_MODE_GLOBAL:
        yield Issue(path, "a global service runs one task on every eligible node, so none can move; remove rebalance")
    elif rebalance and mode == pb.SERVICE_MODE_JOB:
        yield Issue(path, "a job's tasks run to completion and are not moved; remove rebalance")


def max_delay_issues(restart: pb.RestartPolicy, path: str) -> Iterator[Issue]:
    """Checks that a given max_delay is not below the delay in effect; `path` is that of restart."""
    if not restart.HasField("max_delay"):
        return
    delay, cap = schema.restart_delay_nanos(restart), restart.max_delay.ToNanoseconds()
    delay_ok = not restart.HasField("delay") or _within(schema.RESTART_DELAY, delay)
    if delay_ok and _within(schema.RESTART_MAX_DELAY, cap) and cap < delay:
        yield Issue(
            key_path(path, "max_delay"),
            f"must not be below restart.delay ({format_duration_nanos(delay)}), got {format_duration_nanos(cap)}; "
            "raise it, or set it equal to delay for a fixed delay",
        )


def ranged_issues(field: Ranged[int], value: int, path: str) -> Iterator[Issue]:
    """Checks an integer against its field's range."""
    if not _within(field, value):
        yield Issue(path, ranged_message(field, str(value)))


def health_test_issues(test: Sequence[str], path: str) -> Iterator[Issue]:
    """Checks a health check's test: ["CMD", arg...], ["CMD-SHELL", "command"] or ["NONE"], as Compose."""
    for i, argument in enumerate(test):
        yield from argument_issues(argument, index_path(path, i))
    if not test:
        return
    kind, rest = test[0], len(test) - 1
    if kind == "NONE" and rest:
        yield Issue(path, '["NONE"] turns the check off and takes nothing after it; remove the rest')
    elif kind == "CMD" and not rest:
        yield Issue(path, 'needs the program to run after "CMD", like ["CMD", "pg_isready"]')
    elif kind == "CMD-SHELL" and rest != 1:
        yield Issue(
            path,
            f'takes exactly one command line after "CMD-SHELL", got {rest}; '
            'write ["CMD-SHELL", "curl -f localhost || exit 1"], or use "CMD" for separate arguments',
        )
    elif kind not in ("NONE", "CMD", "CMD-SHELL"):
        yield Issue(
            path,
            f'must start with "CMD", "CMD-SHELL" or "NONE", got {describe(kind)}; '
            "or write the command line as one string to run it with the shell",
        )


def health_probe_issues(given: Sequence[str], path: str) -> Iterator[Issue]:
    """Checks that at most one of the probes test, http and tcp is given (in that order); each extra one is reported."""
    for name in given[1:]:
        yield Issue(
            key_path(path, name),
            f"cannot be combined with {given[0]}; a health check runs one of test, http and tcp, so keep one",
        )


def http_path_issues(text: str, path: str) -> Iterator[Issue]:
    """Checks the path of an HTTP probe."""
    if too_long := _length_problem(text, schema.HEALTH_HTTP_PATH.max_bytes):
        yield Issue(path, f"{too_long}; probe a shorter path")
    elif _CONTROL.search(text) or any(c.isspace() for c in text):
        yield Issue(path, f"must not contain whitespace or control characters, got {describe(text)}")
    elif not text.startswith("/"):
        yield Issue(path, f'must start with "/", like "/healthz", got {describe(text)}')


def ratio_issues(ratio: float, path: str) -> Iterator[Issue]:
    """Checks a max_failure_ratio (NaN is refused too)."""
    field = schema.UPDATE_MAX_FAILURE_RATIO
    if not field.minimum <= ratio <= field.maximum:
        yield Issue(path, ratio_message(repr(ratio)))


def choice_issues(field: Field[Any], number: int, path: str) -> Iterator[Issue]:
    """Checks an enum number against a field's choices; UNSPECIFIED (0) means the field's default."""
    if number and number not in field.choices.values():
        if field is schema.ROLLBACK_FAILURE_ACTION and number == pb.UpdateConfig.FAILURE_ACTION_ROLLBACK:
            yield Issue(path, ROLLBACK_ROLLBACK_MESSAGE)
        else:
            yield Issue(path, choice_message(field, str(number)))


def dependency_issues(name: str, dependent: str, path: str) -> Iterator[Issue]:
    """Checks the name of a service that `dependent` depends on; `path` is the dependency's own."""
    if not service_name_ok(name):
        yield Issue(
            path,
            f'must name a service: 1 to {schema.NAME.max_bytes} lowercase letters, digits or "-", starting and '
            f"ending with a letter or digit (a stack's: `<stack>_<service>`), got {describe(name)}",
        )
    elif name == dependent:
        yield Issue(path, "a service cannot depend on itself; remove it")


def duration_issues(field: Bounded[int], nanos: int, path: str) -> Iterator[Issue]:
    """Checks a duration that is given against its field's range."""
    if _within(field, nanos):
        return
    shown = format_duration_nanos(nanos)
    if field is schema.STOP_AFTER:
        yield Issue(path, stop_after_message(shown))
    elif isinstance(field, Ranged):
        yield Issue(path, f"must be a duration {_from_to(field)}, got {shown}")
    else:
        yield Issue(path, f"must be a duration of {field.shown(field.minimum)} or more, got {shown}")


def size_issues(spec: pb.ServiceSpec, path: str) -> Iterator[Issue]:
    """Checks the size of the whole spec as stored; `path` is the service's."""
    size, limit = spec.ByteSize(), schema.SPEC_BYTES
    if size > limit.maximum:
        yield Issue(
            path,
            f"the spec is {size} bytes when stored, more than the limit of {limit.shown} for one service; "
            "move large env values, commands or labels into the image or a file it reads",
        )


# --- One pass over a whole spec -------------------------------------------------------------------------


def validate_service(spec: pb.ServiceSpec) -> list[str]:
    """Returns one `<path>: <problem>` line per problem of `spec` (empty when valid); never raises.

    Paths start with `services.<name>`, where a name that is not a plain word is quoted in brackets
    (`services["my app"]`, `services[""]`); problems with the name itself are reported on that path.
    Unset message fields (restart, durations, resources, placement, on_disconnect, healthcheck,
    update, rollback) mean "the default" and are accepted, as are the UNSPECIFIED values of mode
    (replicated), strategy (spread), order, failure_action and a dependency's condition. Checks
    between services (depends_on names and cycles) are depends_on_issues'.
    """
    return [str(issue) for issue in service_issues(spec)]


def service_issues(spec: pb.ServiceSpec) -> list[Issue]:
    """Like validate_service, but keeps path and message apart; problems come in the table's field order."""
    return list(_service(spec))


def _service(spec: pb.ServiceSpec) -> Iterator[Issue]:
    base = service_path(spec.name)
    stack_problems = list(stack_issues(spec.stack, key_path(base, "stack")))
    yield from name_issues(spec.name, base, "" if stack_problems else spec.stack)
    yield from image_issues(spec.image, key_path(base, "image"))
    entrypoint = key_path(base, "entrypoint")
    for i, argument in enumerate(spec.entrypoint):
        yield from argument_issues(argument, index_path(entrypoint, i))
    command = key_path(base, "command")
    for i, argument in enumerate(spec.command):
        yield from argument_issues(argument, index_path(command, i))
    env = key_path(base, "env")
    # A proto map has no order of its own; sorting keeps reports stable.
    for name in sorted(spec.env):
        yield from env_issues(name, spec.env[name], key_path(env, name))
    yield from hostname_issues(spec.hostname, key_path(base, "hostname"))
    yield from _ports(spec.ports, key_path(base, "ports"))
    yield from mode_issues(spec.mode, key_path(base, "mode"))
    # An unknown mode reads as the default, replicated, as it does in a file.
    yield from replicas_issues(spec.mode, spec.replicas, key_path(base, "replicas"))
    yield from _placement(spec.placement, spec.mode, key_path(base, "placement"))
    yield from _resources(spec.resources, key_path(base, "resources"))
    labels = key_path(base, "labels")
    for key in sorted(spec.labels):
        yield from label_issues(key, spec.labels[key], key_path(labels, key))
    yield from _files(spec, base)
    yield from _restart(spec.restart, spec.mode, key_path(base, "restart"))
    if spec.HasField("healthcheck"):
        yield from _healthcheck(spec.healthcheck, key_path(base, "healthcheck"))
    if spec.HasField("update"):
        yield from _update_config(spec.update, "update", key_path(base, "update"))
    if spec.HasField("rollback"):
        yield from _update_config(spec.rollback, "rollback", key_path(base, "rollback"))
    depends_on = key_path(base, "depends_on")
    for name in sorted(spec.depends_on):
        where = key_path(depends_on, name)
        yield from dependency_issues(name, spec.name, where)
        condition = spec.depends_on[name].condition
        yield from choice_issues(schema.DEPENDS_ON_CONDITION, condition, key_path(where, "condition"))
    if spec.HasField("stop_grace_period"):
        yield from _duration(schema.STOP_GRACE_PERIOD, spec.stop_grace_period, key_path(base, "stop_grace_period"))
    stop_after = spec.on_disconnect.stop_after
    # An unset or zero deadline is how the proto says "keep".
    if stop_after.seconds or stop_after.nanos:
        where = key_path(key_path(base, "on_disconnect"), "stop_after")
        yield from _duration(schema.STOP_AFTER, stop_after, where)
    yield from stack_problems
    yield from size_issues(spec, base)


def _files(spec: pb.ServiceSpec, base: str) -> Iterator[Issue]:
    """Checks mounts, networks, secrets and configs, and that no two of them share a path in the container."""
    targets = Targets()
    mounts = key_path(base, "mounts")
    for i, mount in enumerate(spec.mounts):
        where = index_path(mounts, i)
        problems = list(mount_issues(mount, where))
        yield from problems
        if not problems:
            yield from targets.claim(mount.target, f"mounts[{i}]", key_path(where, "target"))
            if spec.mode == pb.SERVICE_MODE_GLOBAL and is_volume_mount(mount):
                # A named volume lives on the node of its first task, so every other node's task would wait.
                yield Issue(key_path(where, "source"), GLOBAL_VOLUME_MESSAGE)
    networks, names = key_path(base, "networks"), Names("networks")
    for i, network in enumerate(spec.networks):
        where = index_path(networks, i)
        problems = list(object_name_issues(network, where, "network"))
        yield from problems or names.claim(network, i, where)
    for section, refs, place in (
        ("secrets", spec.secrets, schema.secret_target),
        ("configs", spec.configs, schema.config_target),
    ):
        path = key_path(base, section)
        for i, ref in enumerate(refs):
            where = index_path(path, i)
            problems = list(file_ref_issues(ref, where, section))
            yield from problems
            if not problems:
                yield from targets.claim(place(ref), f"{section}[{i}]", key_path(where, "target"))


def _ports(ports: Sequence[pb.PortMapping], path: str) -> Iterator[Issue]:
    host_ports = HostPorts()
    for i, port in enumerate(ports):
        where = index_path(path, i)
        yield from published_issues(port.host_port, key_path(where, "published"))
        yield from target_issues(port.container_port, key_path(where, "target"))
        protocol_problems = list(protocol_issues(port.protocol, key_path(where, "protocol")))
        yield from protocol_problems
        if _within(schema.PORT_PUBLISHED, port.host_port) and not protocol_problems:
            yield from host_ports.claim(port, i, where)


def _placement(placement: pb.Placement, mode: int, path: str) -> Iterator[Issue]:
    constraints, where = Constraints(), key_path(path, "constraints")
    for i, text in enumerate(placement.constraints):
        yield from constraints.check(text, i, index_path(where, i))
    yield from max_replicas_per_node_issues(placement.max_replicas_per_node, key_path(path, "max_replicas_per_node"))
    yield from strategy_issues(placement.strategy, key_path(path, "strategy"))
    yield from rebalance_issues(mode, placement.rebalance, key_path(path, "rebalance"))


def _resources(resources: pb.Resources, path: str) -> Iterator[Issue]:
    limits, reservations = key_path(path, "limits"), key_path(path, "reservations")
    # Zero means "not set" in the proto, so only other amounts are checked.
    if resources.cpu_limit:
        yield from cpus_issues(resources.cpu_limit, key_path(limits, "cpus"))
    if resources.memory_limit_bytes:
        yield from memory_limit_issues(resources.memory_limit_bytes, key_path(limits, "memory"))
    if resources.cpu_reservation:
        yield from cpus_issues(resources.cpu_reservation, key_path(reservations, "cpus"))
    if resources.memory_reservation_bytes:
        yield from memory_reservation_issues(resources.memory_reservation_bytes, key_path(reservations, "memory"))
    yield from reservation_issues(resources, path)


def _restart(restart: pb.RestartPolicy, mode: int, path: str) -> Iterator[Issue]:
    yield from condition_issues(restart.condition, key_path(path, "condition"))
    yield from job_condition_issues(mode, restart.condition, key_path(path, "condition"))
    if restart.HasField("delay"):
        yield from _duration(schema.RESTART_DELAY, restart.delay, key_path(path, "delay"))
    if restart.HasField("window"):
        yield from _duration(schema.RESTART_WINDOW, restart.window, key_path(path, "window"))
    if restart.HasField("max_delay"):
        problems = list(_duration(schema.RESTART_MAX_DELAY, restart.max_delay, key_path(path, "max_delay")))
        yield from problems or max_delay_issues(restart, path)


def _healthcheck(check: pb.HealthCheck, path: str) -> Iterator[Issue]:
    yield from health_test_issues(check.test, key_path(path, "test"))
    if check.HasField("http"):
        http = key_path(path, "http")
        yield from ranged_issues(schema.HEALTH_HTTP_PORT, check.http.port, key_path(http, "port"))
        # An empty path is the proto's "not set": "/".
        if check.http.path:
            yield from http_path_issues(check.http.path, key_path(http, "path"))
        yield from ranged_issues(schema.HEALTH_HTTP_STATUS, check.http.status, key_path(http, "status"))
    if check.HasField("tcp"):
        yield from ranged_issues(schema.HEALTH_TCP_PORT, check.tcp.port, key_path(key_path(path, "tcp"), "port"))
    yield from health_probe_issues([name for name, present in _probes(check) if present], path)
    timings = (schema.HEALTH_INTERVAL, schema.HEALTH_TIMEOUT, schema.HEALTH_START_PERIOD, schema.HEALTH_START_INTERVAL)
    for row in timings[:2]:
        yield from _optional_duration(check, row, path)
    if check.HasField("retries"):
        yield from ranged_issues(schema.HEALTH_RETRIES, check.retries, key_path(path, "retries"))
    for row in timings[2:]:
        yield from _optional_duration(check, row, path)


def _update_config(config: pb.UpdateConfig, block: str, path: str) -> Iterator[Issue]:
    rows = update_rows(block)
    parallelism = rows["parallelism"]
    if isinstance(parallelism, Ranged):
        yield from ranged_issues(parallelism, config.parallelism, key_path(path, "parallelism"))
    yield from _optional_duration(config, rows["delay"], path)
    yield from choice_issues(rows["order"], config.order, key_path(path, "order"))
    yield from _optional_duration(config, rows["monitor"], path)
    yield from ratio_issues(config.max_failure_ratio, key_path(path, "max_failure_ratio"))
    yield from choice_issues(rows["failure_action"], config.failure_action, key_path(path, "failure_action"))


def update_rows(block: str) -> dict[str, Field[Any]]:
    """The table's rows of `update` or `rollback`, by key."""
    return {row.name: row for row in schema.FIELDS if row.path.startswith(f"{block}.")}


def _optional_duration(message: Message, field: Field[Any], path: str) -> Iterator[Issue]:
    """Checks a duration of `message` named as `field`'s last segment, when it is set."""
    if message.HasField(field.name) and isinstance(field, Bounded):
        yield from _duration(field, getattr(message, field.name), key_path(path, field.name))


def _probes(check: pb.HealthCheck) -> tuple[tuple[str, bool], ...]:
    return (("test", bool(check.test)), ("http", check.HasField("http")), ("tcp", check.HasField("tcp")))


def _duration(field: Bounded[int], duration: Duration, path: str) -> Iterator[Issue]:
    seconds, nanos = duration.seconds, duration.nanos
    same_sign = not (seconds > 0 > nanos or seconds < 0 < nanos)
    if abs(seconds) > MAX_DURATION_SECONDS or abs(nanos) >= NANOS_PER_SECOND or not same_sign:
        yield Issue(
            path,
            f"is not a valid duration (seconds={seconds}, nanos={nanos}); seconds must be within "
            f"+-{MAX_DURATION_SECONDS} and nanos within +-{NANOS_PER_SECOND - 1} with the same sign",
        )
    else:
        yield from duration_issues(field, seconds * NANOS_PER_SECOND + nanos, path)


# --- Limits over many services ----------------------------------------------------------------------------


def replica_budget_issues(specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service]) -> list[Issue]:
    """Checks the replicas a request asks for against the per-request and per-cluster caps.

    `existing` maps the name of every service in the cluster to it; services the request names count
    with their new spec only. A global service counts 0: its tasks follow the nodes. A change that
    lowers the cluster's total is always allowed, even above the cap.
    """
    issues = []
    requested = _replicas(specs)
    request_cap, cluster_cap = schema.REQUEST_REPLICAS.maximum, schema.CLUSTER_REPLICAS.maximum
    if requested > request_cap:
        issues.append(
            Issue(
                "services",
                f"ask for {requested} replicas in all, more than the limit of {request_cap} per request; "
                "apply the services in several requests",
            )
        )
    names = {spec.name for spec in specs}
    others = _replicas(service.spec for name, service in existing.items() if name not in names)
    total, before = others + requested, _replicas(service.spec for service in existing.values())
    if total > cluster_cap and total > before:
        issues.append(
            Issue(
                "services",
                f"would bring the cluster to {total} replicas ({others} of them in other services), more than "
                f"the limit of {cluster_cap}; scale down or delete other services first",
            )
        )
    return issues


def depends_on_issues(specs: Sequence[pb.ServiceSpec], existing: Mapping[str, pb.Service] | None = None) -> list[Issue]:
    """Checks the dependencies between services: names that exist, and no cycle; in the specs' order.

    Given `existing` (the cluster's services by name, without those the request removes), a
    dependency must name a service of the request or of the cluster, and a cycle may run through
    both, the request's specs replacing the cluster's. Without it (a file checked on its own), only
    cycles among the specs are found. A cycle is reported once, on the first of its services in the
    request: `services.web.depends_on: cycle web -> api -> web; ...`.
    """
    issues = []
    requested = {spec.name: spec for spec in specs}
    if existing is not None:
        for spec in specs:
            for name in sorted(spec.depends_on):
                if name not in requested and name not in existing and name != spec.name:
                    issues.append(
                        Issue(
                            key_path(key_path(service_path(spec.name), "depends_on"), name),
                            "names no service of this request or of the cluster; add the service, or remove "
                            "the dependency",
                        )
                    )
    # A service naming itself is refused on its own (dependency_issues); it is no cycle to report again.
    graph: dict[str, list[str]] = {name: [d for d in spec.depends_on if d != name] for name, spec in requested.items()}
    for name, service in (existing or {}).items():
        graph.setdefault(name, [d for d in service.spec.depends_on if d != name])
    cycle = find_cycle(graph)
    if cycle is not None:
        issues.append(
            Issue(
                key_path(service_path(cycle[0]), "depends_on"),
                f"cycle {' -> '.join(cycle)}; a service cannot wait for itself, so remove one of these dependencies",
            )
        )
    return issues


def _replicas(specs: Iterable[pb.ServiceSpec]) -> int:
    return sum(spec.replicas for spec in specs if spec.mode != pb.SERVICE_MODE_GLOBAL)


# --- Helpers ------------------------------------------------------------------------------------------


def _within(field: Bounded[int], value: int) -> bool:
    """Tells whether an integer is within its field's range."""
    if value < field.minimum or (field.exclusive_minimum and value == field.minimum):
        return False
    return not isinstance(field, Ranged) or value <= field.maximum


def _utf8_size(text: str) -> int:
    # Limits are in bytes as stored; surrogates cannot reach a proto, but counting must not fail on them.
    return len(text.encode("utf-8", "surrogatepass"))


def _length_problem(text: str, limit: int | None) -> str:
    """Says "must be at most N bytes long, got M bytes" when `text` is longer than `limit`, else ""."""
    if limit is None or len(text) * 4 <= limit:
        return ""  # Quick exit: no character takes more than four bytes.
    size = _utf8_size(text)
    return f"must be at most {limit} bytes long, got {size} bytes" if size > limit else ""


def _control_problem(text: str, pattern: re.Pattern[str] = _CONTROL) -> str:
    """Names the first control character of `text`, which has one."""
    found = pattern.search(text)
    code = ord(found[0]) if found else 0
    return f"must not contain control characters, got U+{code:04X} in {describe(text)}"


def _exceeds(limit: Field[Any], shown_limit: str, got: str) -> str:
    return f"must not exceed {limit.path} ({shown_limit}), got {got}"


def _is_image_reference(text: str) -> bool:
    """Tells whether `text` is a well-formed image reference such as "nginx:1.27" or "reg:5000/a/b:v1"."""
    match = _REFERENCE.match(text)
    return match is not None and len(match["name"]) <= _MAX_REPOSITORY_LENGTH
