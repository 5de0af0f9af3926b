"""Writing a ServiceSpec back as the YAML-shaped mapping a user would have written, for `service inspect`."""

from __future__ import annotations

from typing import Any

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import schema
from dockyard.spec.schema import Field
from dockyard.spec.units import format_bytes, format_duration_nanos, format_port
from dockyard.v1 import types_pb2 as pb


def spec_to_document(spec: pb.ServiceSpec) -> dict[str, Any]:
    """Returns the body of `spec` under `services.<name>`, leaving out fields that hold their default.

    Unset fields count as defaults. For any valid spec in the form load_spec returns,
    load_spec(yaml.safe_dump({"services": {spec.name: spec_to_document(spec)}})) gives back `spec`.
    """
    document: dict[str, Any] = {"image": spec.image}
    if spec.command:
        document["command"] = list(spec.command)
    if spec.env:
        document["env"] = dict(sorted(spec.env.items()))
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
    if restart := _restart(spec.restart):
        document["restart"] = restart
    if _differs(spec.HasField("stop_grace_period"), spec.stop_grace_period, schema.STOP_GRACE_PERIOD):
        document["stop_grace_period"] = format_duration_nanos(spec.stop_grace_period.ToNanoseconds())
    # An unset or zero deadline means "keep", the default.
    if stop_after := spec.on_disconnect.stop_after.ToNanoseconds():
        document["on_disconnect"] = {"stop_after": format_duration_nanos(stop_after)}
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
    return document


def _differs(is_set: bool, duration: Duration, field: Field[int]) -> bool:
    """Tells whether a duration field is set to something other than its default."""
    return is_set and duration.ToNanoseconds() != field.default
