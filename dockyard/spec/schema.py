"""The table of a service spec's fields: for each its path, type, default, limits and one line of help.

This is the one place that states a default or a limit. The reader, validation, the writer, the
controller's API, the orchestrator's restart rules, the agent's container settings and the field
reference in docs/spec.md (rendered by dockyard.spec.docgen) all read them from here. Defaults and
limits are in the proto's units: nanoseconds, bytes, CPUs and enum numbers.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar

from dockyard.spec.units import (
    KIB,
    MAX_UINT32,
    MIB,
    NANOS_PER_SECOND,
    format_bytes,
    format_cpus,
    format_duration_nanos,
)
from dockyard.v1 import types_pb2 as pb

T = TypeVar("T")

_SECOND = NANOS_PER_SECOND
_HOUR = 3600 * NANOS_PER_SECOND
_DEFAULT_REPLICAS = 1
# Linux refuses a single argument or NAME=value string longer than MAX_ARG_STRLEN (128KiB with its NUL).
_MAX_ARG_BYTES = 128 * KIB - 1


class Unit(enum.Enum):
    """How a field's values are written in a spec file, and so in the reference."""

    PLAIN = "plain"
    CPUS = "cpus"
    BYTES = "bytes"
    DURATION = "duration"
    CHOICE = "choice"


@dataclass(frozen=True, eq=False)
class Field(Generic[T]):
    """One field of a service spec; `path` is its YAML path inside a service, `ports[]` for each port."""

    path: str
    type: str
    default: T
    help: str
    _: KW_ONLY
    unit: Unit = Unit.PLAIN
    # The reference shows this instead of the default's value where that alone would mislead.
    shown_default: str | None = None
    minimum: T | None = None
    maximum: T | None = None
    exclusive_minimum: bool = False
    choices: Mapping[str, T] = field(default_factory=dict)
    max_bytes: int | None = None
    # What max_bytes applies to, as the reference says it: "each argument", "each value".
    max_bytes_of: str = ""
    max_key_bytes: int | None = None
    keys_are: str = "keys"
    reserved_prefix: str = ""
    note: str = ""

    @property
    def name(self) -> str:
        """The last segment of the path, as it appears in the file."""
        return self.path.rpartition(".")[2]

    def shown(self, value: T) -> str:
        """Writes a value of this field the way a spec file would."""
        if self.unit is Unit.DURATION and isinstance(value, int):
            return format_duration_nanos(value)
        if self.unit is Unit.BYTES and isinstance(value, int):
            return format_bytes(value) if value else "0"
        if self.unit is Unit.CPUS and isinstance(value, int | float):
            return format_cpus(value)
        if self.unit is Unit.CHOICE:
            return next((name for name, number in self.choices.items() if number == value), str(value))
        return str(value)

    def choice_name(self, value: T) -> str | T:
        """Returns the name of a choice; an unnamed value comes back as is, so a reader can report it."""
        return next((name for name, number in self.choices.items() if number == value), value)

    @property
    def default_seconds(self) -> float:
        """The default of a duration field in seconds, for code that keeps time in float seconds."""
        if self.unit is not Unit.DURATION or not isinstance(self.default, int):
            raise TypeError(f"{self.path} is not a duration")
        return self.default / NANOS_PER_SECOND

    @property
    def default_text(self) -> str:
        """The default as the reference shows it."""
        return self.shown_default if self.shown_default is not None else f"`{self.shown(self.default)}`"

    @property
    def range_text(self) -> str:
        """The allowed range in words, like "0 to 10000" or "greater than 0s, at most 24h"; "" when unbounded."""
        low = None if self.minimum is None else self.shown(self.minimum)
        high = None if self.maximum is None else self.shown(self.maximum)
        if low is not None and high is not None:
            return f"greater than {low}, at most {high}" if self.exclusive_minimum else f"{low} to {high}"
        if low is not None:
            return f"greater than {low}" if self.exclusive_minimum else f"at least {low}"
        return "" if high is None else f"at most {high}"

    @property
    def limits_text(self) -> str:
        """Every limit of the field in words, for the reference."""
        parts = [self.range_text]
        if self.max_key_bytes is not None:
            parts.append(f"{self.keys_are} at most {self.max_key_bytes} bytes")
        if self.max_bytes is not None:
            parts.append(f"{self.max_bytes_of} at most {self.max_bytes} bytes".strip())
        if self.reserved_prefix:
            parts.append(f"keys starting with `{self.reserved_prefix}` are reserved")
        parts.append(self.note)
        return "; ".join(part for part in parts if part)


@dataclass(frozen=True, eq=False)
class Bounded(Field[T]):
    """A field with a lower bound."""

    minimum: T


@dataclass(frozen=True, eq=False)
class Ranged(Bounded[T]):
    """A field with a lower and an upper bound."""

    maximum: T


@dataclass(frozen=True)
class Limit:
    """A limit on more than one field: the size of a whole spec, or the replicas of many services."""

    name: str
    maximum: int
    unit: Unit
    help: str

    @property
    def shown(self) -> str:
        """The maximum as the reference shows it."""
        return format_bytes(self.maximum) if self.unit is Unit.BYTES else str(self.maximum)


NAME = Field[str](
    "name",
    "string",
    "",
    "The key under `services`; it names the service's containers and DNS entries.",
    shown_default="required",
    max_bytes=63,
    note="a DNS label: lowercase letters `a`-`z`, digits and `-`, starting and ending with a letter or digit",
)
IMAGE = Field[str](
    "image",
    "string",
    "",
    "The container image to run, as for `docker pull`.",
    shown_default="required",
    max_bytes=1024,
    note="an image reference; no whitespace or control characters",
)
COMMAND = Field[None](
    "command",
    "list of strings, or string",
    None,
    "The command the container runs instead of the image's.",
    shown_default="the image's own command",
    max_bytes=_MAX_ARG_BYTES,
    max_bytes_of="each argument",
    note="no NUL characters",
)
ENV = Field[None](
    "env",
    "mapping, or list of `NAME=value`",
    None,
    "Environment variables of the container.",
    shown_default="none",
    max_key_bytes=256,
    keys_are="names",
    max_bytes=_MAX_ARG_BYTES,
    max_bytes_of="each `NAME=value`",
    note="names not empty, without `=` or control characters; values without NUL",
)
PORTS = Field[None](
    "ports",
    "list of ports",
    None,
    "Container ports to publish on the host.",
    shown_default="none",
    note="see [ports](#ports)",
)
PORT_PUBLISHED = Ranged[int](
    "ports[].published",
    "integer",
    0,
    "The host port; 0 lets Docker choose a free one.",
    minimum=0,
    maximum=65_535,
)
PORT_TARGET = Ranged[int](
    "ports[].target",
    "integer",
    0,
    "The port the container listens on.",
    shown_default="required",
    minimum=1,
    maximum=65_535,
)
PORT_PROTOCOL = Field[str](
    "ports[].protocol",
    "`tcp` or `udp`",
    "tcp",
    "The protocol, in lowercase.",
    unit=Unit.CHOICE,
    choices={"tcp": "tcp", "udp": "udp"},
)
REPLICAS = Ranged[int](
    "replicas",
    "integer",
    _DEFAULT_REPLICAS,
    "How many copies to keep running; a global service has none and stores 0.",
    shown_default=f"`{_DEFAULT_REPLICAS}` (global services: none)",
    minimum=0,
    maximum=10_000,
)
MODE = Field[pb.ServiceMode.ValueType](
    "mode",
    "`replicated` or `global`",
    pb.SERVICE_MODE_REPLICATED,
    "`replicated` runs `replicas` copies; `global` one copy on every eligible node.",
    unit=Unit.CHOICE,
    choices={"replicated": pb.SERVICE_MODE_REPLICATED, "global": pb.SERVICE_MODE_GLOBAL},
)
CONSTRAINTS = Field[None](
    "placement.constraints",
    "list of strings",
    None,
    "Conditions a node must meet; all of them must hold.",
    shown_default="none (any node)",
    max_bytes=1024,
    max_bytes_of="each",
    note="no control characters; see [placement](#placement)",
)
MAX_REPLICAS_PER_NODE = Ranged[int](
    "placement.max_replicas_per_node",
    "integer",
    0,
    "The most copies of the service on one node; 0 means no limit.",
    minimum=0,
    maximum=REPLICAS.maximum,
)
STRATEGY = Field[pb.Placement.Strategy.ValueType](
    "placement.strategy",
    "`spread` or `binpack`",
    pb.Placement.STRATEGY_SPREAD,
    "`spread` spreads copies over nodes, then prefers the least loaded; `binpack` fills the most loaded node.",
    unit=Unit.CHOICE,
    choices={"spread": pb.Placement.STRATEGY_SPREAD, "binpack": pb.Placement.STRATEGY_BINPACK},
)
PLACEMENT = Field[None](
    "placement",
    "mapping",
    None,
    "Which nodes the copies may run on, and how they are spread.",
    shown_default=f"any node, no per-node cap, {STRATEGY.shown(STRATEGY.default)}",
    note="see [placement](#placement)",
)
RESOURCES = Field[None](
    "resources",
    "mapping",
    None,
    "CPU and memory each copy may use at most, and what the scheduler sets aside for it.",
    shown_default="no limits, no reservations",
    note="see [resources](#resources)",
)
CPU_LIMIT = Ranged[float](
    "resources.limits.cpus",
    "number of CPUs",
    0.0,
    "The CPUs a container may use at most; fractions allowed.",
    unit=Unit.CPUS,
    shown_default="no limit",
    minimum=0.0,
    maximum=1024.0,
    exclusive_minimum=True,
)
MEMORY_LIMIT = Bounded[int](
    "resources.limits.memory",
    "byte size",
    0,
    "The memory a container may use at most.",
    unit=Unit.BYTES,
    shown_default="no limit",
    # Docker refuses smaller limits when it creates the container; refusing them here fails earlier.
    minimum=6 * MIB,
)
CPU_RESERVATION = Ranged[float](
    "resources.reservations.cpus",
    "number of CPUs",
    0.0,
    "The CPUs the scheduler sets aside on a node for each copy.",
    unit=Unit.CPUS,
    shown_default="none",
    minimum=0.0,
    maximum=CPU_LIMIT.maximum,
    exclusive_minimum=True,
    note="not above `limits.cpus`",
)
MEMORY_RESERVATION = Bounded[int](
    "resources.reservations.memory",
    "byte size",
    0,
    "The memory the scheduler sets aside on a node for each copy.",
    unit=Unit.BYTES,
    shown_default="none",
    minimum=0,
    exclusive_minimum=True,
    note="not above `limits.memory`",
)
LABELS = Field[None](
    "labels",
    "mapping, or list of `key=value`",
    None,
    "Metadata on the service and its containers.",
    shown_default="none",
    max_key_bytes=256,
    max_bytes=4096,
    max_bytes_of="values",
    reserved_prefix="dockyard.",
    note="keys not empty, without whitespace, control characters or `=`; values without NUL",
)
RESTART_CONDITION = Field[pb.RestartPolicy.Condition.ValueType](
    "restart.condition",
    "`none`, `on-failure` or `any`",
    pb.RestartPolicy.CONDITION_ON_FAILURE,
    "`none`: never restart; `on-failure`: after a non-zero exit; `any`: whenever it stops.",
    unit=Unit.CHOICE,
    choices={
        "none": pb.RestartPolicy.CONDITION_NONE,
        "on-failure": pb.RestartPolicy.CONDITION_ON_FAILURE,
        "any": pb.RestartPolicy.CONDITION_ANY,
    },
)
RESTART_DELAY = Ranged[int](
    "restart.delay",
    "duration",
    5 * _SECOND,
    "How long to wait before starting a replacement.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=_HOUR,
)
RESTART_MAX_ATTEMPTS = Ranged[int](
    "restart.max_attempts",
    "integer",
    0,
    "How many restarts to try; 0 means no limit.",
    minimum=0,
    maximum=MAX_UINT32,
)
RESTART_WINDOW = Bounded[int](
    "restart.window",
    "duration",
    0,
    "The span over which attempts are counted; 0s counts all of them.",
    unit=Unit.DURATION,
    minimum=0,
)
RESTART = Field[None](
    "restart",
    "mapping",
    None,
    "What Dockyard does when a container of the service stops.",
    shown_default=(
        f"{RESTART_CONDITION.shown(RESTART_CONDITION.default)}, "
        f"{RESTART_DELAY.shown(RESTART_DELAY.default)} delay, unlimited attempts"
    ),
    note="see [restart](#restart)",
)
STOP_GRACE_PERIOD = Ranged[int](
    "stop_grace_period",
    "duration",
    10 * _SECOND,
    "How long a container gets to exit after SIGTERM before it is killed.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=_HOUR,
)
ON_DISCONNECT = Field[None](
    "on_disconnect",
    "`keep`, or mapping",
    None,
    "What an agent does with the containers when it loses the controller.",
    shown_default="`keep`",
    note="see [on_disconnect](#on_disconnect)",
)
STOP_AFTER = Ranged[int](
    "on_disconnect.stop_after",
    "duration",
    0,
    "Stop the containers after this long without the controller.",
    unit=Unit.DURATION,
    shown_default="required in the mapping",
    minimum=0,
    # A day covers any maintenance window; beyond that a cut-off task is better rescheduled by hand.
    maximum=24 * _HOUR,
    exclusive_minimum=True,
)

# Every field inside a service, in the order a spec file lists them and problems are reported.
FIELDS: tuple[Field[Any], ...] = (
    IMAGE,
    COMMAND,
    ENV,
    PORTS,
    PORT_PUBLISHED,
    PORT_TARGET,
    PORT_PROTOCOL,
    MODE,
    REPLICAS,
    PLACEMENT,
    CONSTRAINTS,
    MAX_REPLICAS_PER_NODE,
    STRATEGY,
    RESOURCES,
    CPU_LIMIT,
    MEMORY_LIMIT,
    CPU_RESERVATION,
    MEMORY_RESERVATION,
    LABELS,
    RESTART,
    RESTART_CONDITION,
    RESTART_DELAY,
    RESTART_MAX_ATTEMPTS,
    RESTART_WINDOW,
    STOP_GRACE_PERIOD,
    ON_DISCONNECT,
    STOP_AFTER,
)

SPEC_BYTES = Limit(
    "spec size",
    256 * KIB,
    Unit.BYTES,
    "One service spec as stored (its protobuf encoding); a 120KiB env fits with room to spare.",
)
REQUEST_REPLICAS = Limit(
    "replicas per request",
    50_000,
    Unit.PLAIN,
    "The sum of `replicas` over the services of one apply.",
)
CLUSTER_REPLICAS = Limit(
    "replicas per cluster",
    100_000,
    Unit.PLAIN,
    "The sum of `replicas` over all services of the cluster after a change.",
)
LIMITS = (SPEC_BYTES, REQUEST_REPLICAS, CLUSTER_REPLICAS)


@functools.cache
def children(section: str) -> tuple[str, ...]:
    """Returns the keys allowed directly inside `section` ("" for a service, "ports[]" for a port), in order."""
    prefix = f"{section}." if section else ""
    names: dict[str, None] = {}
    for row in FIELDS:
        if row.path.startswith(prefix):
            rest = row.path[len(prefix) :]
            names.setdefault(rest.split(".")[0].removesuffix("[]"), None)
    return tuple(names)
