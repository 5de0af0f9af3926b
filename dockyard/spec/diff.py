"""What changed between two service specs, field by field, as a spec file writes the fields.

The API's plan and the CLI's history both show changes with spec_changes. Each spec is first laid out
as its fields in effect, path -> value in the table's order (dockyard.spec.schema): a field that
holds its default by being left out shows the default, so a spec stored before a field existed and
one that spells the default out compare equal. A field that means nothing while its block is absent
(a health check's timings without a healthcheck, rollback's keys while a rollback runs as update
says, a deadline under on_disconnect: keep) is "" there, as is an unset value of a set block whose
meaning is "the image's own" (healthcheck timings).

Paths are those of a spec file ("env.MODE", "ports[0].published", "depends_on.db.condition"); values
are written as the writer writes them: durations "30s", sizes "256MiB", choices by name, lists of
strings as a YAML flow list, booleans "true"/"false".
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from dockyard.spec import schema, stacks
from dockyard.spec.issues import index_path, key_path
from dockyard.spec.schema import Field
from dockyard.v1 import controller_pb2
from dockyard.v1 import types_pb2 as pb

__all__ = ["CONTROLLER_ONLY", "same_task_spec", "spec_changes", "spec_fields", "task_spec"]

# Where each row sits in the table; a path sorts by its row first, then by its list index or map key.
_ROW = {row.path: i for i, row in enumerate(schema.FIELDS)}
_SortKey = tuple[int, int, str, int]
_Entry = tuple[_SortKey, str, str]


def spec_changes(old: pb.ServiceSpec, new: pb.ServiceSpec) -> list[controller_pb2.FieldChange]:
    """Returns the fields whose values differ between `old` and `new`, in the table's order ("" when unset).

    The name is not compared; a spec against itself, or against one that spells out its defaults,
    gives no changes.
    """
    before = {path: (key, value) for key, path, value in _fields(old)}
    after = {path: (key, value) for key, path, value in _fields(new)}
    paths = sorted(before.keys() | after.keys(), key=lambda path: (before.get(path) or after[path])[0])
    changes = []
    for path in paths:
        old_value = before[path][1] if path in before else ""
        new_value = after[path][1] if path in after else ""
        if old_value != new_value:
            changes.append(controller_pb2.FieldChange(path=path, old_value=old_value, new_value=new_value))
    return changes


def spec_fields(spec: pb.ServiceSpec) -> dict[str, str]:
    """Returns the fields of `spec` in effect, path -> value as spec_changes shows them, in the table's order."""
    return {path: value for _, path, value in sorted(_fields(spec))}


def _fields(spec: pb.ServiceSpec) -> Iterator[_Entry]:
    yield _leaf(schema.IMAGE, spec.image)
    if spec.entrypoint:
        yield _leaf(schema.ENTRYPOINT, _list(spec.entrypoint))
    if spec.command:
        yield _leaf(schema.COMMAND, _list(spec.command))
    for name in sorted(spec.env):
        yield _keyed(schema.ENV, "env", name, spec.env[name])
    if spec.hostname:
        yield _leaf(schema.HOSTNAME, spec.hostname)
    for i, port in enumerate(spec.ports):
        where = index_path("ports", i)
        yield _indexed(schema.PORT_PUBLISHED, key_path(where, "published"), i, str(port.host_port))
        yield _indexed(schema.PORT_TARGET, key_path(where, "target"), i, str(port.container_port))
        yield _indexed(schema.PORT_PROTOCOL, key_path(where, "protocol"), i, port.protocol)
    yield _leaf(schema.MODE, _choice(schema.MODE, spec.mode))
    yield _leaf(schema.REPLICAS, str(spec.replicas))
    yield from _placement(spec.placement)
    yield from _resources(spec.resources)
    for key in sorted(spec.labels):
        yield _keyed(schema.LABELS, "labels", key, spec.labels[key])
    yield from _mounts(spec.mounts)
    # In effect: the default network is joined whether it is spelt out or left out.
    yield _leaf(schema.NETWORKS, _list(stacks.networks_of(spec)))
    yield from _file_refs(spec.secrets, "secrets", schema.SECRET_TARGET)
    yield from _file_refs(spec.configs, "configs", schema.CONFIG_TARGET)
    yield from _restart(spec.restart)
    if spec.HasField("healthcheck"):
        yield from _healthcheck(spec.healthcheck)
    yield from _config(schema.update_config(spec), "update")
    if spec.HasField("rollback"):
        yield from _config(schema.rollback_config(spec), "rollback")
    for name in sorted(spec.depends_on):
        where = key_path(key_path("depends_on", name), "condition")
        condition = _choice(schema.DEPENDS_ON_CONDITION, spec.depends_on[name].condition)
        yield ((_ROW[schema.DEPENDS_ON_CONDITION.path], 0, name, 0), where, condition)
    yield _leaf(schema.STOP_GRACE_PERIOD, _duration(schema.STOP_GRACE_PERIOD, spec, "stop_grace_period"))
    # An unset or zero deadline is on_disconnect: keep, which has no stop_after.
    if stop_after := spec.on_disconnect.stop_after.ToNanoseconds():
        yield _leaf(schema.STOP_AFTER, schema.STOP_AFTER.shown(stop_after))
    if spec.stack:
        yield _leaf(schema.STACK, spec.stack)


def _mounts(mounts: Sequence[pb.Mount]) -> Iterator[_Entry]:
    for i, mount in enumerate(mounts):
        where = index_path("mounts", i)
        kind = mount.type or schema.MOUNT_TYPE.default
        values: list[tuple[Field[Any], str, str]] = [
            (schema.MOUNT_TYPE, "type", _choice(schema.MOUNT_TYPE, kind)),
            (schema.MOUNT_SOURCE, "source", mount.source),
            (schema.MOUNT_TARGET, "target", mount.target),
            (schema.MOUNT_READ_ONLY, "read_only", _bool(mount.read_only)),
        ]
        values += [
            (schema.MOUNT_LABELS, key_path("labels", key), mount.volume_labels[key])
            for key in sorted(mount.volume_labels)
        ]
        if mount.tmpfs_size_bytes:
            values.append(
                (schema.MOUNT_TMPFS_SIZE, "tmpfs.size", schema.MOUNT_TMPFS_SIZE.shown(mount.tmpfs_size_bytes))
            )
        for row, name, value in values:
            # All of one mount's fields together, in the mounts' order.
            yield ((_ROW[schema.MOUNTS.path], i, f"{_ROW[row.path]:04d}{name}", 0), f"{where}.{name}", value)


def _file_refs(refs: Sequence[pb.FileRef], section: str, target_row: Field[Any]) -> Iterator[_Entry]:
    place = schema.secret_target if section == "secrets" else schema.config_target
    rows = {row.name: row for row in schema.FIELDS if row.path.startswith(f"{section}[].")}
    section_row = schema.SECRETS if section == "secrets" else schema.CONFIGS
    for i, ref in enumerate(refs):
        where = index_path(section, i)
        # Targets and modes in effect: a default spelt out is no change.
        values = {
            "source": ref.name,
            "target": place(ref),
            "uid": str(ref.uid),
            "gid": str(ref.gid),
            "mode": f"0{schema.file_mode(ref):o}",
        }
        for name, value in values.items():
            row = target_row if name == "target" else rows[name]
            yield ((_ROW[section_row.path], i, f"{_ROW[row.path]:04d}", 0), key_path(where, name), value)


def _placement(placement: pb.Placement) -> Iterator[_Entry]:
    if placement.constraints:
        yield _leaf(schema.CONSTRAINTS, _list(placement.constraints))
    yield _leaf(schema.MAX_REPLICAS_PER_NODE, str(placement.max_replicas_per_node))
    yield _leaf(schema.STRATEGY, _choice(schema.STRATEGY, placement.strategy))
    yield _leaf(schema.REBALANCE, _bool(placement.rebalance))


def _resources(resources: pb.Resources) -> Iterator[_Entry]:
    # 0 is "no limit" or "nothing reserved", which a file writes by leaving the key out.
    amounts: list[tuple[Field[Any], float]] = [
        (schema.CPU_LIMIT, resources.cpu_limit),
        (schema.MEMORY_LIMIT, resources.memory_limit_bytes),
        (schema.CPU_RESERVATION, resources.cpu_reservation),
        (schema.MEMORY_RESERVATION, resources.memory_reservation_bytes),
    ]
    for row, amount in amounts:
        if amount:
            yield _leaf(row, row.shown(amount))


def _restart(restart: pb.RestartPolicy) -> Iterator[_Entry]:
    yield _leaf(schema.RESTART_CONDITION, _choice(schema.RESTART_CONDITION, restart.condition))
    yield _leaf(schema.RESTART_DELAY, schema.RESTART_DELAY.shown(schema.restart_delay_nanos(restart)))
    yield _leaf(schema.RESTART_MAX_ATTEMPTS, str(restart.max_attempts))
    yield _leaf(schema.RESTART_WINDOW, _duration(schema.RESTART_WINDOW, restart, "window"))
    yield _leaf(schema.RESTART_MAX_DELAY, schema.RESTART_MAX_DELAY.shown(schema.restart_max_delay_nanos(restart)))


def _healthcheck(check: pb.HealthCheck) -> Iterator[_Entry]:
    if check.test:
        yield _leaf(schema.HEALTH_TEST, _list(check.test))
    if check.HasField("http"):
        yield _leaf(schema.HEALTH_HTTP_PORT, str(check.http.port))
        yield _leaf(schema.HEALTH_HTTP_PATH, check.http.path or schema.HEALTH_HTTP_PATH.default)
        yield _leaf(schema.HEALTH_HTTP_STATUS, str(check.http.status))
    if check.HasField("tcp"):
        yield _leaf(schema.HEALTH_TCP_PORT, str(check.tcp.port))
    # Unset timings are the image's own, if its check has them: nothing this spec says.
    for row in (
        schema.HEALTH_INTERVAL,
        schema.HEALTH_TIMEOUT,
        schema.HEALTH_START_PERIOD,
        schema.HEALTH_START_INTERVAL,
    ):
        if _has(check, row.name):
            yield _leaf(row, _duration(row, check, row.name))
    if check.HasField("retries"):
        yield _leaf(schema.HEALTH_RETRIES, str(check.retries))


def _config(config: pb.UpdateConfig, block: str) -> Iterator[_Entry]:
    rows = {row.name: row for row in schema.FIELDS if row.path.startswith(f"{block}.")}
    yield _leaf(rows["parallelism"], str(config.parallelism))
    yield _leaf(rows["delay"], rows["delay"].shown(config.delay.ToNanoseconds()))
    yield _leaf(rows["order"], _choice(rows["order"], config.order))
    yield _leaf(rows["monitor"], rows["monitor"].shown(config.monitor.ToNanoseconds()))
    yield _leaf(rows["max_failure_ratio"], _number(config.max_failure_ratio))
    # UPDATE's choices name every action, so a rollback's number is named even where it is refused.
    yield _leaf(rows["failure_action"], _choice(schema.UPDATE_FAILURE_ACTION, config.failure_action))


# --- Values ---------------------------------------------------------------------------------------------


def _leaf(row: Field[Any], value: str) -> _Entry:
    return ((_ROW[row.path], 0, "", 0), row.path, value)


def _indexed(row: Field[Any], path: str, index: int, value: str) -> _Entry:
    # All of one port's fields together, in the ports' order.
    return ((_ROW[schema.PORTS.path], index, "", _ROW[row.path]), path, value)


def _keyed(row: Field[Any], section: str, key: str, value: str) -> _Entry:
    return ((_ROW[row.path], 0, key, 0), key_path(section, key), value)


def _choice(row: Field[Any], number: int) -> str:
    # UNSPECIFIED (0) is the default, as everywhere a spec is read.
    return str(row.choice_name(number or row.default))


def _has(message: Message, name: str) -> bool:
    return message.HasField(name)


def _duration(row: Field[Any], message: Any, name: str) -> str:
    duration: Duration = getattr(message, name)
    return row.shown(duration.ToNanoseconds() if message.HasField(name) else row.default)


def _list(items: Sequence[str]) -> str:
    # A flow list, as YAML writes one: ["sh", "-c", "echo hi"].
    return json.dumps(list(items), ensure_ascii=False)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _number(value: float) -> str:
    return repr(value)


# The spec fields only the controller reads: how many tasks, how a change rolls out or back, when a stopped
# task is replaced (Docker's own restart policy is always off), when a task may start, and whether the
# controller spreads tasks by itself. A task's container is made from the other fields (agent/container_spec.py;
# stop_grace_period and on_disconnect are the agent's, placement's constraints and spread decide where it
# runs), so revisions that differ only in these run the same tasks: such a change is no rollout. The stack is
# part of the service's name (validation), so it changes alone only when a service joins the stack its name
# already spells; its containers keep running.
CONTROLLER_ONLY: Final = (
    "replicas",
    "update",
    "rollback",
    "restart",
    "depends_on",
    "placement.rebalance",
    "stack",
)


def task_spec(spec: pb.ServiceSpec) -> pb.ServiceSpec:
    """Returns a copy of `spec` without its CONTROLLER_ONLY fields: what a task started with it runs."""
    result = pb.ServiceSpec()
    result.CopyFrom(spec)
    # Cleared by name, as the paths are spelled: the base class takes any field name.
    whole: Message = result
    for path in CONTROLLER_ONLY:
        block, _, name = path.rpartition(".")
        if not block:
            whole.ClearField(name)
        elif whole.HasField(block):
            inner: Message = getattr(result, block)
            inner.ClearField(name)
            # A block left empty holds only defaults, as one never set does.
            if not inner.ListFields():
                whole.ClearField(block)
    return result


def same_task_spec(a: pb.ServiceSpec, b: pb.ServiceSpec) -> bool:
    """Tells whether two specs differ at most in CONTROLLER_ONLY fields: tasks started with one run the other."""
    return a == b or task_spec(a) == task_spec(b)
