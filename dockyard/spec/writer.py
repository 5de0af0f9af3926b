"""Writing a ServiceSpec back as the YAML-shaped mapping a user would have written, for `service inspect`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from dockyard.spec import schema, stacks
from dockyard.spec.schema import Field
from dockyard.spec.units import format_bytes, format_duration_nanos, format_mount, format_port
from dockyard.spec.validation import dependency_issues
from dockyard.v1 import types_pb2 as pb


def document_name(spec: pb.ServiceSpec) -> str:
    """The key of `spec` under `services` in a file: its name within its stack."""
    return stacks.short(spec.stack, spec.name)


def spec_to_document(spec: pb.ServiceSpec) -> dict[str, Any]:
    """Returns the body of `spec` under `services.<document_name>`, leaving out fields that hold their default.

    Unset fields count as defaults. For any valid spec in the form load_spec returns,
    load_spec(yaml.safe_dump({"services": {document_name(spec): spec_to_document(spec)}})) gives back
    `spec`. Networks, volumes, secrets and configs are written by their cluster-wide names, which a file
    that does not declare them reads as written.
    """
    document: dict[str, Any] = {"image": spec.image}
    if spec.entrypoint:
        document["entrypoint"] = list(spec.entrypoint)
    if spec.command:
        document["command"] = list(spec.command)
    if spec.env:
        document["env"] = dict(sorted(spec.env.items()))
    if spec.hostname:
        document["hostname"] = spec.hostname
    if spec.ports:
        document["ports"] = [_port(port) for port in spec.ports]
    mode = spec.mode or schema.MODE.default
    if mode != schema.MODE.default:
        document["mode"] = schema.MODE.choice_name(mode)
    # A valid global service has no replica count; one that has is written out for load_spec to report.
    default_replicas = 0 if mode == pb.SERVICE_MODE_GLOBAL else schema.REPLICAS.default
    if spec.replicas != default_replicas:
        document["replicas"] = spec.replicas
    if placement := _placement(spec.placement):
        document["placement"] = placement
    if resources := _resources(spec.resources):
        document["resources"] = resources
    if spec.labels:
        document["labels"] = dict(sorted(spec.labels.items()))
    if spec.mounts:
        document["mounts"] = [_mount(mount) for mount in spec.mounts]
    if spec.networks:
        document["networks"] = list(spec.networks)
    if spec.secrets:
        document["secrets"] = [_file_ref(ref) for ref in spec.secrets]
    if spec.configs:
        document["configs"] = [_file_ref(ref) for ref in spec.configs]
    if restart := _restart(spec.restart):
        document["restart"] = restart
    # A healthcheck with nothing in it is kept as {}, which load_spec reads back as set.
    if spec.HasField("healthcheck"):
        document["healthcheck"] = _healthcheck(spec.healthcheck)
    if update := _config(schema.update_config(spec), "update"):
        document["update"] = update
    # Without a rollback block a rollback runs as update says, so an empty block still says something.
    if spec.HasField("rollback"):
        document["rollback"] = _config(schema.rollback_config(spec), "rollback")
    if spec.depends_on:
        document["depends_on"] = _depends_on(spec.depends_on, spec.stack, spec.name)
    if _differs(spec.HasField("stop_grace_period"), spec.stop_grace_period, schema.STOP_GRACE_PERIOD):
        document["stop_grace_period"] = format_duration_nanos(spec.stop_grace_period.ToNanoseconds())
    # An unset or zero deadline means "keep", the default.
    if stop_after := spec.on_disconnect.stop_after.ToNanoseconds():
        document["on_disconnect"] = {"stop_after": format_duration_nanos(stop_after)}
    if spec.stack:
        document["stack"] = spec.stack
    return document


def _mount(mount: pb.Mount) -> str | dict[str, Any]:
    kind = mount.type or schema.MOUNT_TYPE.default
    implied = pb.Mount.TYPE_BIND if mount.source.startswith(("/", ".", "~")) else pb.Mount.TYPE_VOLUME
    plain = ":" not in mount.source + mount.target and mount.source and mount.target
    if kind == implied and plain and not mount.volume_labels and not mount.tmpfs_size_bytes:
        return format_mount(mount.source, mount.target, mount.read_only)
    # The long form writes whatever the short syntax cannot, an invalid mount included, for load_spec to report.
    document: dict[str, Any] = {"type": schema.MOUNT_TYPE.choice_name(kind)}
    if mount.source:
        document["source"] = mount.source
    document["target"] = mount.target
    if mount.read_only:
        document["read_only"] = True
    if mount.volume_labels:
        document["labels"] = dict(sorted(mount.volume_labels.items()))
    if mount.tmpfs_size_bytes:
        document["tmpfs"] = {"size": format_bytes(mount.tmpfs_size_bytes)}
    return document


def _file_ref(ref: pb.FileRef) -> str | dict[str, Any]:
    if not (ref.target or ref.uid or ref.gid or ref.HasField("mode")):
        return ref.name
    document: dict[str, Any] = {"source": ref.name}
    if ref.target:
        document["target"] = ref.target
    if ref.uid:
        document["uid"] = ref.uid
    if ref.gid:
        document["gid"] = ref.gid
    if ref.HasField("mode"):
        # Permission bits read best in octal; the reader takes an octal string as YAML's 0440.
        document["mode"] = f"0{ref.mode:o}"
    return document


def _port(port: pb.PortMapping) -> str | dict[str, Any]:
    if port.protocol in schema.PORT_PROTOCOL.choices:
        implied = schema.PORT_PROTOCOL.default
        return format_port(port.host_port, port.container_port, port.protocol, implied_protocol=implied)
    # The short syntax cannot carry an arbitrary protocol string; the long form can.
    return {"published": port.host_port, "target": port.container_port, "protocol": port.protocol}


def _placement(placement: pb.Placement) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if placement.constraints:
        document["constraints"] = list(placement.constraints)
    if placement.max_replicas_per_node != schema.MAX_REPLICAS_PER_NODE.default:
        document["max_replicas_per_node"] = placement.max_replicas_per_node
    strategy = placement.strategy or schema.STRATEGY.default
    if strategy != schema.STRATEGY.default:
        document["strategy"] = schema.STRATEGY.choice_name(strategy)
    if placement.rebalance != schema.REBALANCE.default:
        document["rebalance"] = placement.rebalance
    return document


def _resources(resources: pb.Resources) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    reservations: dict[str, Any] = {}
    if resources.cpu_limit:
        limits["cpus"] = resources.cpu_limit
    if resources.memory_limit_bytes:
        limits["memory"] = format_bytes(resources.memory_limit_bytes)
    if resources.cpu_reservation:
        reservations["cpus"] = resources.cpu_reservation
    if resources.memory_reservation_bytes:
        reservations["memory"] = format_bytes(resources.memory_reservation_bytes)
    sections = {"limits": limits, "reservations": reservations}
    return {name: amounts for name, amounts in sections.items() if amounts}


def _restart(restart: pb.RestartPolicy) -> dict[str, Any]:
    document: dict[str, Any] = {}
    condition = restart.condition or schema.RESTART_CONDITION.default
    if condition != schema.RESTART_CONDITION.default:
        # An out-of-range number has no name; writing it as is lets load_spec report it.
        document["condition"] = schema.RESTART_CONDITION.choice_name(condition)
    if _differs(restart.HasField("delay"), restart.delay, schema.RESTART_DELAY):
        document["delay"] = format_duration_nanos(restart.delay.ToNanoseconds())
    if restart.max_attempts != schema.RESTART_MAX_ATTEMPTS.default:
        document["max_attempts"] = restart.max_attempts
    if _differs(restart.HasField("window"), restart.window, schema.RESTART_WINDOW):
        document["window"] = format_duration_nanos(restart.window.ToNanoseconds())
    # Written whenever set, like the loader keeps it: unset means "the default cap, raised to delay".
    if restart.HasField("max_delay"):
        document["max_delay"] = format_duration_nanos(restart.max_delay.ToNanoseconds())
    return document


def _healthcheck(check: pb.HealthCheck) -> dict[str, Any]:
    # Every key is written as set: an unset timing means the image's own, which no value spells.
    document: dict[str, Any] = {}
    if check.test:
        document["test"] = list(check.test)
    if check.HasField("http"):
        http: dict[str, Any] = {"port": check.http.port}
        if check.http.path:
            http["path"] = check.http.path
        if check.http.status:
            http["status"] = check.http.status
        document["http"] = http
    if check.HasField("tcp"):
        document["tcp"] = {"port": check.tcp.port}
    for row in (schema.HEALTH_INTERVAL, schema.HEALTH_TIMEOUT):
        if _has(check, row.name):
            document[row.name] = format_duration_nanos(getattr(check, row.name).ToNanoseconds())
    if check.HasField("retries"):
        document["retries"] = check.retries
    for row in (schema.HEALTH_START_PERIOD, schema.HEALTH_START_INTERVAL):
        if _has(check, row.name):
            document[row.name] = format_duration_nanos(getattr(check, row.name).ToNanoseconds())
    return document


def _config(config: pb.UpdateConfig, block: str) -> dict[str, Any]:
    """The keys of an update or rollback block in effect that differ from the block's defaults."""
    defaults = schema.config_defaults(block)
    document: dict[str, Any] = {}
    if config.parallelism != defaults.parallelism:
        document["parallelism"] = config.parallelism
    if config.delay != defaults.delay:
        document["delay"] = format_duration_nanos(config.delay.ToNanoseconds())
    if config.order != defaults.order:
        document["order"] = schema.UPDATE_ORDER.choice_name(config.order)
    if config.monitor != defaults.monitor:
        document["monitor"] = format_duration_nanos(config.monitor.ToNanoseconds())
    if config.max_failure_ratio != defaults.max_failure_ratio:
        document["max_failure_ratio"] = config.max_failure_ratio
    if config.failure_action != defaults.failure_action:
        # UPDATE's choices name every action, so a refused one is written for load_spec to report.
        document["failure_action"] = schema.UPDATE_FAILURE_ACTION.choice_name(config.failure_action)
    return document


def _depends_on(depends_on: Mapping[str, pb.Dependency], stack: str, dependent: str) -> list[str] | dict[str, Any]:
    """Compose's short form when every condition is service_started, its long form otherwise.

    A stack's file names the stack's services by their short names.
    """
    field = schema.DEPENDS_ON_CONDITION
    conditions = {stacks.short(stack, name): depends_on[name].condition or field.default for name in sorted(depends_on)}
    # A name load_spec must refuse goes in the long form, where it is reported by name as the API does.
    shown = stacks.short(stack, dependent)
    names_ok = not any(any(dependency_issues(name, shown, "")) for name in conditions)
    if names_ok and all(condition == field.default for condition in conditions.values()):
        return list(conditions)
    return {name: {"condition": field.choice_name(condition)} for name, condition in conditions.items()}


def _has(message: Message, name: str) -> bool:
    return message.HasField(name)


def _differs(is_set: bool, duration: Duration, field: Field[int]) -> bool:
    """Tells whether a duration field is set to something other than its default."""
    return is_set and duration.ToNanoseconds() != field.default
