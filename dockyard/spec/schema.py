"""The table of a service spec's fields: for each its path, type, default, limits and one line of help.

This is the one place that states a default or a limit. The reader, validation, the writer, the
controller's API, the orchestrator's restart rules, the agent's container settings and the field
reference in docs/spec.md (rendered by dockyard.spec.docgen) all read them from here. Defaults and
limits are in the proto's units: nanoseconds, bytes, CPUs and enum numbers.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar

from dockyard.spec.stacks import MAX_STACK_BYTES
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
# Where a secret's file goes when its target is not an absolute path, as in Swarm.
SECRETS_DIR = "/run/secrets"
# Linux's PATH_MAX, with the terminating NUL.
_MAX_PATH_BYTES = 4095
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
ENTRYPOINT = Field[None](
    "entrypoint",
    "list of strings, or string",
    None,
    "The program the container starts instead of the image's ENTRYPOINT; `command` becomes its arguments.",
    shown_default="the image's own entrypoint",
    max_bytes=_MAX_ARG_BYTES,
    max_bytes_of="each argument",
    note="no NUL characters",
)
HOSTNAME = Field[str](
    "hostname",
    "string",
    "",
    "The container's hostname.",
    shown_default="Docker's (the container id)",
    max_bytes=63,
    note="letters, digits, `-` and `.`; each part starting and ending with a letter or digit",
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
    "`replicated`, `global` or `job`",
    pb.SERVICE_MODE_REPLICATED,
    "`replicated` runs `replicas` copies; `global` one copy on every eligible node; `job` runs `replicas` copies"
    " to completion (a one-shot such as a migration).",
    unit=Unit.CHOICE,
    choices={
        "replicated": pb.SERVICE_MODE_REPLICATED,
        "global": pb.SERVICE_MODE_GLOBAL,
        "job": pb.SERVICE_MODE_JOB,
    },
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
REBALANCE = Field[bool](
    "placement.rebalance",
    "boolean",
    False,
    "Move tasks start-first by themselves when the spread no longer holds (a node joined or came back).",
    note="off: running work is never moved; `dockyard service rebalance` does it once, on request",
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
MOUNTS = Field[None](
    "mounts",
    "list of mounts",
    None,
    "Volumes, host paths and tmpfs the containers mount; `volumes` is accepted as Compose's spelling.",
    shown_default="none",
    note="see [mounts](#mounts)",
)
MOUNT_TYPE = Field[pb.Mount.Type.ValueType](
    "mounts[].type",
    "`volume`, `bind` or `tmpfs`",
    pb.Mount.TYPE_VOLUME,
    "`volume`: a named volume on the node, kept when tasks are replaced; `bind`: a host path, if the agent's"
    " host policy allows it; `tmpfs`: memory, gone with the container.",
    unit=Unit.CHOICE,
    choices={"volume": pb.Mount.TYPE_VOLUME, "bind": pb.Mount.TYPE_BIND, "tmpfs": pb.Mount.TYPE_TMPFS},
)
MOUNT_SOURCE = Field[str](
    "mounts[].source",
    "string",
    "",
    "`volume`: the volume's name (a stack's declared volume is scoped: `<stack>_<name>`); `bind`: an absolute"
    " host path; `tmpfs`: none.",
    shown_default="required for `volume` and `bind`",
    max_bytes=_MAX_PATH_BYTES,
)
MOUNT_TARGET = Field[str](
    "mounts[].target",
    "string",
    "",
    "Where the container sees it: an absolute path.",
    shown_default="required",
    max_bytes=_MAX_PATH_BYTES,
    note="one mount, secret or config per target",
)
MOUNT_READ_ONLY = Field[bool](
    "mounts[].read_only",
    "boolean",
    False,
    "Mount it read-only (the short syntax's `:ro`).",
)
MOUNT_LABELS = Field[None](
    "mounts[].labels",
    "mapping",
    None,
    "`volume`: labels put on the volume when the agent creates it; a stack's declared volume gives its own.",
    shown_default="none",
)
MOUNT_TMPFS = Field[None](
    "mounts[].tmpfs",
    "mapping",
    None,
    "`tmpfs` only: its options.",
    shown_default="none",
)
MOUNT_TMPFS_SIZE = Bounded[int](
    "mounts[].tmpfs.size",
    "byte size",
    0,
    "The tmpfs's size; 0 is Docker's default (half the host's memory).",
    unit=Unit.BYTES,
    minimum=0,
)
NETWORKS = Field[None](
    "networks",
    "list of network names",
    None,
    "The networks the containers join and are found on by name.",
    shown_default="the stack's `default` network, or the cluster network `dockyard` outside a stack",
    note="see [networks](#networks)",
)
SECRETS = Field[None](
    "secrets",
    "list of names or mappings",
    None,
    "Secrets the containers get as files on tmpfs.",
    shown_default="none",
    note="see [secrets and configs](#secrets-and-configs)",
)
SECRET_SOURCE = Field[str](
    "secrets[].source",
    "string",
    "",
    "The secret's name (a stack's declared secret is scoped: `<stack>_<name>`).",
    shown_default="required",
)
SECRET_TARGET = Field[str](
    "secrets[].target",
    "string",
    "",
    f"The file's path: a name under `{SECRETS_DIR}`, or an absolute path.",
    shown_default=f"`{SECRETS_DIR}/<source>`",
    max_bytes=_MAX_PATH_BYTES,
)
SECRET_UID = Ranged[int](
    "secrets[].uid",
    "integer",
    0,
    "The file's owner.",
    minimum=0,
    maximum=MAX_UINT32,
)
SECRET_GID = Ranged[int](
    "secrets[].gid",
    "integer",
    0,
    "The file's group.",
    minimum=0,
    maximum=MAX_UINT32,
)
SECRET_MODE = Ranged[int](
    "secrets[].mode",
    "integer (octal: `0440`)",
    0o444,
    "The file's permission bits.",
    shown_default="`0444`",
    minimum=0,
    maximum=0o777,
    note="written in octal with a leading 0, as `0440`",
)
CONFIGS = Field[None](
    "configs",
    "list of names or mappings",
    None,
    "Configs the containers get as read-only files.",
    shown_default="none",
    note="see [secrets and configs](#secrets-and-configs)",
)
CONFIG_SOURCE = dataclasses.replace(
    SECRET_SOURCE, path="configs[].source", help=SECRET_SOURCE.help.replace("secret", "config")
)
CONFIG_TARGET = dataclasses.replace(
    SECRET_TARGET,
    path="configs[].target",
    help="The file's absolute path.",
    shown_default="`/<source>`",
)
CONFIG_UID = dataclasses.replace(SECRET_UID, path="configs[].uid")
CONFIG_GID = dataclasses.replace(SECRET_GID, path="configs[].gid")
CONFIG_MODE = dataclasses.replace(SECRET_MODE, path="configs[].mode")
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
RESTART_MAX_DELAY = Ranged[int](
    "restart.max_delay",
    "duration",
    5 * 60 * _SECOND,
    "The cap of the delay, which doubles with every failure of a slot in a row.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=_HOUR,
    note="not below `delay`; equal to it for a fixed delay",
)
RESTART = Field[None](
    "restart",
    "mapping",
    None,
    "What Dockyard does when a container of the service stops.",
    shown_default=(
        f"{RESTART_CONDITION.shown(RESTART_CONDITION.default)}, "
        f"{RESTART_DELAY.shown(RESTART_DELAY.default)} delay doubling up to "
        f"{RESTART_MAX_DELAY.shown(RESTART_MAX_DELAY.default)}, unlimited attempts"
    ),
    note="see [restart](#restart)",
)
HEALTHCHECK = Field[None](
    "healthcheck",
    "mapping",
    None,
    "How the containers are checked; a task counts as running only once healthy.",
    shown_default="the image's own HEALTHCHECK, if any",
    note="see [healthcheck](#healthcheck)",
)
HEALTH_TEST = Field[None](
    "healthcheck.test",
    "list of strings, or string",
    None,
    'Run by Docker in the container: `["CMD", arg...]`, `["CMD-SHELL", "command"]` (a string is CMD-SHELL),'
    ' or `["NONE"]` to turn the image\'s own check off.',
    shown_default="none",
    max_bytes=_MAX_ARG_BYTES,
    max_bytes_of="each argument",
    note="at most one of `test`, `http` and `tcp`",
)
HEALTH_HTTP = Field[None](
    "healthcheck.http",
    "mapping",
    None,
    "An HTTP GET the agent sends from the host to the container.",
    shown_default="none",
)
HEALTH_HTTP_PORT = Ranged[int](
    "healthcheck.http.port",
    "integer",
    0,
    "The container's port.",
    shown_default="required",
    minimum=1,
    maximum=65_535,
)
HEALTH_HTTP_PATH = Field[str](
    "healthcheck.http.path",
    "string",
    "/",
    "The path to get.",
    max_bytes=1024,
    note="starts with `/`; no whitespace or control characters",
)
HEALTH_HTTP_STATUS = Ranged[int](
    "healthcheck.http.status",
    "integer",
    0,
    "The status that counts as healthy; 0 means any 2xx or 3xx.",
    shown_default="any 2xx or 3xx",
    minimum=0,
    maximum=599,
)
HEALTH_TCP = Field[None](
    "healthcheck.tcp",
    "mapping",
    None,
    "A TCP connect the agent makes from the host to the container.",
    shown_default="none",
)
HEALTH_TCP_PORT = Ranged[int](
    "healthcheck.tcp.port",
    "integer",
    0,
    "The container's port.",
    shown_default="required",
    minimum=1,
    maximum=65_535,
)
# Compose's names and defaults. Docker refuses an interval, timeout or start interval under 1ms.
HEALTH_INTERVAL = Ranged[int](
    "healthcheck.interval",
    "duration",
    30 * _SECOND,
    "Time between probes.",
    unit=Unit.DURATION,
    minimum=NANOS_PER_SECOND // 10,
    maximum=24 * _HOUR,
)
HEALTH_TIMEOUT = Ranged[int](
    "healthcheck.timeout",
    "duration",
    30 * _SECOND,
    "How long one probe may take before it counts as failed.",
    unit=Unit.DURATION,
    minimum=NANOS_PER_SECOND // 10,
    maximum=_HOUR,
)
HEALTH_RETRIES = Ranged[int](
    "healthcheck.retries",
    "integer",
    3,
    "Failed probes in a row that make a container unhealthy.",
    minimum=1,
    maximum=1000,
)
HEALTH_START_PERIOD = Ranged[int](
    "healthcheck.start_period",
    "duration",
    0,
    "Time for the container to start; failures inside it do not count.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=24 * _HOUR,
)
HEALTH_START_INTERVAL = Ranged[int](
    "healthcheck.start_interval",
    "duration",
    5 * _SECOND,
    "Time between probes inside `start_period`.",
    unit=Unit.DURATION,
    minimum=NANOS_PER_SECOND // 10,
    maximum=24 * _HOUR,
)
UPDATE = Field[None](
    "update",
    "mapping",
    None,
    "How a changed spec rolls out over the tasks.",
    shown_default="one at a time, stop-first, 5s monitor, roll back on the first failure",
    note="see [update and rollback](#update-and-rollback)",
)
UPDATE_PARALLELISM = Ranged[int](
    "update.parallelism",
    "integer",
    1,
    "How many tasks change at once; 0 means all at once.",
    minimum=0,
    maximum=REPLICAS.maximum,
)
UPDATE_DELAY = Ranged[int](
    "update.delay",
    "duration",
    0,
    "Time between one batch of tasks and the next.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=_HOUR,
)
UPDATE_ORDER = Field[pb.UpdateConfig.Order.ValueType](
    "update.order",
    "`stop-first` or `start-first`",
    pb.UpdateConfig.ORDER_STOP_FIRST,
    "`stop-first` stops the old task before its successor starts; `start-first` stops it once the new one runs"
    " healthy, so the service never runs fewer tasks than it asks for.",
    unit=Unit.CHOICE,
    choices={"stop-first": pb.UpdateConfig.ORDER_STOP_FIRST, "start-first": pb.UpdateConfig.ORDER_START_FIRST},
)
UPDATE_MONITOR = Ranged[int](
    "update.monitor",
    "duration",
    5 * _SECOND,
    "How long a new task is watched once it runs; a failure inside it counts against the rollout.",
    unit=Unit.DURATION,
    minimum=0,
    maximum=_HOUR,
)
UPDATE_MAX_FAILURE_RATIO = Ranged[float](
    "update.max_failure_ratio",
    "number",
    0.0,
    "The share of updated tasks that may fail before the failure action is taken.",
    minimum=0.0,
    maximum=1.0,
)
UPDATE_FAILURE_ACTION = Field[pb.UpdateConfig.FailureAction.ValueType](
    "update.failure_action",
    "`pause`, `rollback` or `continue`",
    pb.UpdateConfig.FAILURE_ACTION_ROLLBACK,
    "What to do when too many updated tasks fail.",
    unit=Unit.CHOICE,
    choices={
        "pause": pb.UpdateConfig.FAILURE_ACTION_PAUSE,
        "rollback": pb.UpdateConfig.FAILURE_ACTION_ROLLBACK,
        "continue": pb.UpdateConfig.FAILURE_ACTION_CONTINUE,
    },
)
ROLLBACK = Field[None](
    "rollback",
    "mapping",
    None,
    "How a rollback rolls out: the same keys as `update`.",
    shown_default="as `update`, but `failure_action: pause`",
    note="see [update and rollback](#update-and-rollback)",
)
ROLLBACK_PARALLELISM = dataclasses.replace(UPDATE_PARALLELISM, path="rollback.parallelism")
ROLLBACK_DELAY = dataclasses.replace(UPDATE_DELAY, path="rollback.delay")
ROLLBACK_ORDER = dataclasses.replace(UPDATE_ORDER, path="rollback.order")
ROLLBACK_MONITOR = dataclasses.replace(UPDATE_MONITOR, path="rollback.monitor")
ROLLBACK_MAX_FAILURE_RATIO = dataclasses.replace(UPDATE_MAX_FAILURE_RATIO, path="rollback.max_failure_ratio")
# A rollback that failed has nothing further to roll back to, so `rollback` is no choice here.
ROLLBACK_FAILURE_ACTION = dataclasses.replace(
    UPDATE_FAILURE_ACTION,
    path="rollback.failure_action",
    type="`pause` or `continue`",
    default=pb.UpdateConfig.FAILURE_ACTION_PAUSE,
    help="What to do when too many rolled back tasks fail.",
    choices={"pause": pb.UpdateConfig.FAILURE_ACTION_PAUSE, "continue": pb.UpdateConfig.FAILURE_ACTION_CONTINUE},
)
DEPENDS_ON = Field[None](
    "depends_on",
    "list of service names, or mapping",
    None,
    "Services whose tasks must have started, be healthy, or have completed before this one's start, on any host.",
    shown_default="none",
    note="see [depends_on](#depends_on)",
)
DEPENDS_ON_CONDITION = Field[pb.Dependency.Condition.ValueType](
    "depends_on.*.condition",
    "`service_started`, `service_healthy` or `service_completed_successfully`",
    pb.Dependency.CONDITION_SERVICE_STARTED,
    "What must hold of the other service: its tasks started, running healthy, or all exited with code 0.",
    unit=Unit.CHOICE,
    choices={
        "service_started": pb.Dependency.CONDITION_SERVICE_STARTED,
        "service_healthy": pb.Dependency.CONDITION_SERVICE_HEALTHY,
        "service_completed_successfully": pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY,
    },
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

STACK = Field[str](
    "stack",
    "string",
    "",
    "The stack the service belongs to: its name is `<stack>_<service>`, and it finds the stack's other services"
    " by their short names.",
    shown_default="the file's `stack`, or none",
    max_bytes=MAX_STACK_BYTES,
    note="Compose's project names: lowercase letters, digits, `_` and `-`, starting with a letter or digit",
)

# Every field inside a service, in the order a spec file lists them and problems are reported.
FIELDS: tuple[Field[Any], ...] = (
    IMAGE,
    ENTRYPOINT,
    COMMAND,
    ENV,
    HOSTNAME,
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
    REBALANCE,
    RESOURCES,
    CPU_LIMIT,
    MEMORY_LIMIT,
    CPU_RESERVATION,
    MEMORY_RESERVATION,
    LABELS,
    MOUNTS,
    MOUNT_TYPE,
    MOUNT_SOURCE,
    MOUNT_TARGET,
    MOUNT_READ_ONLY,
    MOUNT_LABELS,
    MOUNT_TMPFS,
    MOUNT_TMPFS_SIZE,
    NETWORKS,
    SECRETS,
    SECRET_SOURCE,
    SECRET_TARGET,
    SECRET_UID,
    SECRET_GID,
    SECRET_MODE,
    CONFIGS,
    CONFIG_SOURCE,
    CONFIG_TARGET,
    CONFIG_UID,
    CONFIG_GID,
    CONFIG_MODE,
    RESTART,
    RESTART_CONDITION,
    RESTART_DELAY,
    RESTART_MAX_ATTEMPTS,
    RESTART_WINDOW,
    RESTART_MAX_DELAY,
    HEALTHCHECK,
    HEALTH_TEST,
    HEALTH_HTTP,
    HEALTH_HTTP_PORT,
    HEALTH_HTTP_PATH,
    HEALTH_HTTP_STATUS,
    HEALTH_TCP,
    HEALTH_TCP_PORT,
    HEALTH_INTERVAL,
    HEALTH_TIMEOUT,
    HEALTH_RETRIES,
    HEALTH_START_PERIOD,
    HEALTH_START_INTERVAL,
    UPDATE,
    UPDATE_PARALLELISM,
    UPDATE_DELAY,
    UPDATE_ORDER,
    UPDATE_MONITOR,
    UPDATE_MAX_FAILURE_RATIO,
    UPDATE_FAILURE_ACTION,
    ROLLBACK,
    ROLLBACK_PARALLELISM,
    ROLLBACK_DELAY,
    ROLLBACK_ORDER,
    ROLLBACK_MONITOR,
    ROLLBACK_MAX_FAILURE_RATIO,
    ROLLBACK_FAILURE_ACTION,
    DEPENDS_ON,
    DEPENDS_ON_CONDITION,
    STOP_GRACE_PERIOD,
    ON_DISCONNECT,
    STOP_AFTER,
    STACK,
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
SERVICE_HISTORY = Limit(
    "revisions kept per service",
    100,
    Unit.PLAIN,
    "The default of the controller's `--service-history`: older revisions are forgotten (the current one never).",
)
FILE_BYTES = Limit(
    "secret or config size",
    500 * KIB,
    Unit.BYTES,
    "The data of one secret or config, as Swarm allows: every node that runs a task using it holds it in memory.",
)
LIMITS = (SPEC_BYTES, REQUEST_REPLICAS, CLUSTER_REPLICAS, SERVICE_HISTORY, FILE_BYTES)


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


# --- The settings in effect, for the roles that act on a spec -------------------------------------------
# A spec leaves out what holds its default; these fill it in, so that no role restates a default or
# decides on its own what an unset block means.


def restart_delay_nanos(policy: pb.RestartPolicy) -> int:
    """The restart delay in effect: the policy's, or the table's default when unset."""
    return policy.delay.ToNanoseconds() if policy.HasField("delay") else RESTART_DELAY.default


def restart_max_delay_nanos(policy: pb.RestartPolicy) -> int:
    """The cap of the doubling restart delay: the policy's, or when unset the default cap, raised to the delay."""
    if policy.HasField("max_delay"):
        return policy.max_delay.ToNanoseconds()
    # A delay above the default cap asks for that delay at least; the cap must not shorten it.
    return max(RESTART_MAX_DELAY.default, restart_delay_nanos(policy))


def update_config(spec: pb.ServiceSpec) -> pb.UpdateConfig:
    """How a changed spec rolls out, every field explicit: an unset `update` holds every default of its rows."""
    if not spec.HasField("update"):
        return _config_defaults(_UPDATE_ROWS)
    return _config_filled(spec.update, _UPDATE_ROWS)


def rollback_config(spec: pb.ServiceSpec) -> pb.UpdateConfig:
    """How a rollback rolls out, every field explicit: an unset `rollback` is update_config with `pause`."""
    if not spec.HasField("rollback"):
        config = update_config(spec)
        config.failure_action = ROLLBACK_FAILURE_ACTION.default
        return config
    return _config_filled(spec.rollback, _ROLLBACK_ROWS)


def config_defaults(block: str) -> pb.UpdateConfig:
    """The defaults of block "update" or "rollback", every field explicit; KeyError for another block."""
    return _config_defaults({"update": _UPDATE_ROWS, "rollback": _ROLLBACK_ROWS}[block])


_UPDATE_ROWS = (
    UPDATE_PARALLELISM,
    UPDATE_DELAY,
    UPDATE_ORDER,
    UPDATE_MONITOR,
    UPDATE_MAX_FAILURE_RATIO,
    UPDATE_FAILURE_ACTION,
)
_ROLLBACK_ROWS = (
    ROLLBACK_PARALLELISM,
    ROLLBACK_DELAY,
    ROLLBACK_ORDER,
    ROLLBACK_MONITOR,
    ROLLBACK_MAX_FAILURE_RATIO,
    ROLLBACK_FAILURE_ACTION,
)


def _config_defaults(rows: tuple[Field[Any], ...]) -> pb.UpdateConfig:
    parallelism, delay, order, monitor, ratio, action = rows
    config = pb.UpdateConfig(
        parallelism=parallelism.default,
        order=order.default,
        max_failure_ratio=ratio.default,
        failure_action=action.default,
    )
    config.delay.FromNanoseconds(delay.default)
    config.monitor.FromNanoseconds(monitor.default)
    return config


def _config_filled(given: pb.UpdateConfig, rows: tuple[Field[Any], ...]) -> pb.UpdateConfig:
    # In a block that is set the numbers stand as given (parallelism 0 is "all at once"); unset
    # durations and UNSPECIFIED choices are the block's defaults.
    config = _config_defaults(rows)
    config.parallelism = given.parallelism
    config.max_failure_ratio = given.max_failure_ratio
    if given.HasField("delay"):
        config.delay.CopyFrom(given.delay)
    if given.HasField("monitor"):
        config.monitor.CopyFrom(given.monitor)
    if given.order:
        config.order = given.order
    if given.failure_action:
        config.failure_action = given.failure_action
    return config


def secret_target(ref: pb.FileRef) -> str:
    """The absolute path of a secret's file in the container: the target, under /run/secrets unless absolute."""
    target = ref.target or ref.name
    return target if target.startswith("/") else f"{SECRETS_DIR}/{target}"


def config_target(ref: pb.FileRef) -> str:
    """The absolute path of a config's file in the container: the target, or /<name>."""
    return ref.target or f"/{ref.name}"


def file_mode(ref: pb.FileRef) -> int:
    """The permission bits of a secret's or config's file: the ref's, or the default 0444."""
    return ref.mode if ref.HasField("mode") else SECRET_MODE.default
